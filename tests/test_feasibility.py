"""Feasibility from the manifest: infeasible discovery and pretraining settings are named with key, numbers and fix."""

import pandas as pd
import pytest

from semantic_genesis.config import InfeasibleError
from semantic_genesis.discovery.feasibility import check_config, check_discovery
from semantic_genesis.discovery.plan import DiscoverySettings
from semantic_genesis.runtime.files import write_tsv

CT = {"classes": 2, "k": 3, "val_neighbours": 1, "crop_size": [32, 32, 16], "multi_resolution": True}


def ct_manifest(shapes_by_split):
    """A scans.tsv-like manifest: rows of (split, 'XxYxZ'), plus one excluded scan that must not count."""
    rows = [
        dict(id=f"s{i}", subset="subset0", split=split, path="", status="ok", reason="", shape=shape, spacing="")
        for i, (split, shape) in enumerate(shapes_by_split)
    ]
    rows.append(
        dict(id="bad", subset="subset0", split="train", path="", status="excluded", reason="x", shape="", spacing="")
    )
    return pd.DataFrame(rows)


def check(manifest, batch=4, **changes):
    cfg = {**CT, **changes}
    return check_discovery(manifest, "ct", DiscoverySettings.from_dict(cfg), batch, cfg["multi_resolution"])


def test_feasible_settings_give_the_numbers():
    manifest = ct_manifest([("train", "128x128x60")] * 3 + [("val", "128x128x40")])
    numbers = check(manifest)
    assert numbers["usable"] == {"train": 3, "val": 1} and numbers["fitting_the_crop"] == {"train": 3, "val": 1}
    assert numbers["crop_zyx"] == [16, 32, 32] and numbers["smallest_usable_zyx"] == [40, 128, 128]
    assert numbers["train_patches"] == 2 * 3 * 3 and numbers["val_patches"] == 2
    assert numbers["fewest_crop_starts_on_a_train_scan"] > 2


def test_too_few_scans_that_hold_the_crop_names_k_the_numbers_and_the_fix():
    # The observed case: thick-slice scans (34-61 slices) where the crop needs more, so only one train scan is left.
    manifest = ct_manifest(
        [("train", "128x128x34"), ("train", "128x128x61"), ("train", "128x128x20"), ("val", "128x128x70")]
    )
    with pytest.raises(InfeasibleError) as error:
        check(manifest, crop_size=[32, 32, 48], k=2)
    message = str(error.value)
    assert "discovery.ct.k = 2" in message and "only 1 of the 3 usable ones do (2 are smaller)" in message
    assert "preprocess.ct.spacing_mm" in message and "lower discovery.ct.k" in message


def test_every_problem_is_listed_at_once():
    manifest = ct_manifest([("train", "64x64x20")] * 2)  # no validation scan, tiny scans
    with pytest.raises(InfeasibleError) as error:
        check(manifest, crop_size=[32, 32, 16], classes=40, k=2, val_neighbours=1, multi_resolution=False, batch=400)
    message = str(error.value)
    assert "cannot work on this data" in message
    assert "discovery.ct.classes = 40: the margins leave only" in message
    assert "pretrain.ct.batch_size = 400 exceeds the 80 training patches" in message


def test_no_usable_training_or_validation_data_is_named():
    with pytest.raises(InfeasibleError, match="no usable training scans"):
        check(ct_manifest([("val", "128x128x60")]))
    with pytest.raises(InfeasibleError, match="val_neighbours = 1: .* only 0 are usable"):
        check(ct_manifest([("train", "128x128x60")] * 3))


def test_radiographs_are_judged_by_their_stored_size(tmp_path):
    rows = [
        dict(
            id=f"{i}.png",
            patient=i,
            split="train" if i < 5 else "val",
            labels="",
            path="",
            status="ok",
            reason="",
            index=i,
            width=64,
            height=64,
        )
        for i in range(7)
    ]
    manifest = tmp_path / "images.tsv"
    write_tsv(pd.DataFrame(rows), manifest)
    cfg = {
        "classes": 2,
        "k": 4,
        "val_neighbours": 2,
        "crop_size": [32, 32],
        "margin_lo": [0.05, 0.05],
        "margin_hi": [0.05, 0.05],
    }

    def config(**changes):
        return {"discovery": {"cxr": {**cfg, **changes}}, "pretrain": {"cxr": {"batch_size": 2}}}

    numbers = check_config(manifest, "cxr", config())
    assert numbers["train_patches"] == 8 and numbers["fitting_the_crop"] == {"train": 5, "val": 2}
    with pytest.raises(InfeasibleError, match=f"(?s){manifest}.*discovery.cxr.k = 6.*only 5 are usable"):
        check_config(manifest, "cxr", config(k=6))
    with pytest.raises(InfeasibleError, match="(?s)only 0 of the 5 usable ones do.*raise preprocess.cxr.size"):
        check_config(manifest, "cxr", config(crop_size=[96, 96]))
