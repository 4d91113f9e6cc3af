"""Random cubes (the Models Genesis paper's data): positions inside the margins, air test, counts, determinism, and
pretraining on them with SGD."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_patches import contents, volumes

from semantic_genesis.discovery.plan import DiscoverySettings, passes_air_test, start_range
from semantic_genesis.finetune.trainer import pretraining_record
from semantic_genesis.pretrain.random_cubes import RandomCubeSettings, draw_starts, extract_random_cubes
from semantic_genesis.pretrain.trainer import PretrainSettings, pretrain

DISCOVERY = DiscoverySettings(crop_size_xyz=(16, 16, 8))
CUBES = RandomCubeSettings(per_scan=5, tries_per_cube=20, seed=3)


def scan_table(scans: dict, splits: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"id": list(scans), "split": splits})


def test_cubes_are_crops_at_their_recorded_starts_inside_the_margins(tmp_path):
    scans, splits, _ = volumes()
    out = tmp_path / "cubes.h5"
    counts = extract_random_cubes(scan_table(scans, splits), scans.__getitem__, out, DISCOVERY, CUBES, air_test=False)
    assert counts == {"train": 7 * 5, "val": 3 * 5}  # no air test: every scan gives per_scan crops
    data = contents(out)
    assert data["train/patches"].shape == (35, 8, 16, 16) and data["train/patches"].dtype == np.float16
    assert (data["train/labels"] == -1).all()
    for n in range(35):
        sid = data["train/meta/id"][n].decode()
        z, y, x = (int(data[f"train/meta/start_{a}"][n]) for a in "zyx")
        lo, hi = start_range(scans[sid].shape, DISCOVERY)
        assert (lo <= (z, y, x)).all() and ((z, y, x) <= hi).all()
        np.testing.assert_allclose(data["train/patches"][n], scans[sid][z : z + 8, y : y + 16, x : x + 16], atol=5e-4)
    assert len({tuple(int(data[f"train/meta/start_{a}"][n]) for a in "zyx") for n in range(5)}) == 5  # random


def test_same_seed_same_file_other_seed_other_positions(tmp_path):
    scans, splits, _ = volumes()
    table = scan_table(scans, splits)
    paths = [tmp_path / f"{i}.h5" for i in range(3)]
    for path, cubes in zip(paths, (CUBES, CUBES, RandomCubeSettings(per_scan=5, tries_per_cube=20, seed=4))):
        extract_random_cubes(table, scans.__getitem__, path, DISCOVERY, cubes, air_test=False)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert not np.array_equal(contents(paths[0])["train/meta/start_y"], contents(paths[2])["train/meta/start_y"])


def test_air_test_rejects_and_a_scan_without_room_gives_nothing(tmp_path):
    rng = np.random.default_rng(0)
    dense = np.full((30, 48, 48), 0.9, np.float32)  # all tissue: every crop fails the air test
    half = rng.uniform(0, 0.3, (30, 48, 48)).astype(np.float32)
    half[:, :, 24:] = 0.9
    scans = {"air": rng.uniform(0, 0.3, (30, 48, 48)).astype(np.float32), "dense": dense, "half": half}
    scans["tiny"] = rng.uniform(0, 0.3, (6, 48, 48)).astype(np.float32)  # fewer slices than the crop
    out = tmp_path / "cubes.h5"
    table = scan_table(scans, ["train", "train", "train", "val"])
    counts = extract_random_cubes(table, scans.__getitem__, out, DISCOVERY, CUBES, air_test=True)
    data = contents(out)
    ids = [i.decode() for i in data["train/meta/id"]]
    assert ids.count("air") == 5 and "dense" not in ids and counts["val"] == 0
    for n in np.flatnonzero(np.array(ids) == "half"):
        assert passes_air_test(data["train/patches"][n].astype(np.float32), 0.425, 0.15)


def test_no_training_cube_is_an_error_that_leaves_no_file(tmp_path):
    scans = {"dense": np.full((30, 48, 48), 0.9, np.float32)}
    out = tmp_path / "cubes.h5"
    with pytest.raises(ValueError, match="no random crop"):
        extract_random_cubes(scan_table(scans, ["train"]), scans.__getitem__, out, DISCOVERY, CUBES, air_test=True)
    assert not out.exists()


def test_draw_starts_stops_after_its_tries():
    calls = []
    starts = draw_starts((30, 48, 48), DISCOVERY, CUBES, np.random.default_rng(0), lambda s: calls.append(s) and False)
    assert starts == [] and len(calls) == CUBES.per_scan * CUBES.tries_per_cube


def test_models_genesis_pretrains_on_random_cubes_with_sgd(tmp_path, monkeypatch):
    scans, splits, _ = volumes()
    cubes = tmp_path / "cubes.h5"
    extract_random_cubes(scan_table(scans, splits), scans.__getitem__, cubes, DISCOVERY, CUBES, air_test=False)
    made = []

    class SpySGD(torch.optim.SGD):
        def __init__(self, params, **kwargs):
            made.append(kwargs)
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", SpySGD)
    settings = PretrainSettings(
        method="models_genesis", data="random_cubes", optimizer="sgd", lr=0.1, momentum=0.9, batch_size=6,
        schedule="step", base_width=2, max_epochs=2, num_threads=1, workers=0, device="cpu",
    )  # fmt: skip
    history = pretrain(cubes, settings, tmp_path / "out")
    assert made == [{"lr": 0.1, "momentum": 0.9}]
    assert len(history) == 2 and np.isfinite(history.train_loss).all()
    extra = json.loads((tmp_path / "out" / "architecture.json").read_text())["extra"]
    assert extra["settings"]["optimizer"] == "sgd" and extra["settings"]["data"] == "random_cubes"
    assert pretraining_record(tmp_path / "out") == {
        "data": "random_cubes", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "batch_size": 6, "schedule": "step",
        "policy": "models_genesis",
    }  # fmt: skip


def test_a_classification_method_cannot_train_on_random_cubes():
    with pytest.raises(ValueError, match="needs data 'patches'"):
        PretrainSettings(method="semantic_genesis", data="random_cubes")
