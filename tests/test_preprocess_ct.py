"""3D preprocessing: window and scale, orientation, resampling, thumbnails, storage, manifests and bad scans."""

import dataclasses
import re

import h5py
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import chest_like, write_png, write_volume

from semantic_genesis.discovery.inputs import ct_inputs
from semantic_genesis.preprocess.ct import (
    CTSettings,
    PreprocessedCT,
    gather_manifests,
    implausible_chest_ct,
    preprocess_scan,
    preprocess_subset,
    thumbnail,
    to_unit,
)
from semantic_genesis.preprocess.readers import InputError, NoUsableDataError
from semantic_genesis.runtime.files import write_tsv

SMALL = CTSettings(min_slices=16, thumbnail_size=(16, 16, 8), chunk=(16, 16, 8), compression="lzf")


def test_window_and_unit_scale(tmp_path):
    array = chest_like()
    scan = preprocess_scan(write_volume(tmp_path / "a.mhd", array), SMALL)
    assert scan.hu.dtype == np.int16 and scan.hu.shape == array.shape
    np.testing.assert_array_equal(scan.hu, np.clip(array, -1000, 1000))
    unit = to_unit(scan.hu, SMALL.hu_window)
    assert unit.dtype == np.float32 and unit.min() == 0.0 and unit.max() <= 1.0
    assert to_unit(np.array([-1000, 0, 1000]), (-1000, 1000)).tolist() == [0.0, 0.5, 1.0]


def test_reorients_to_lps(tmp_path):
    """A scan stored with flipped x and y axes (RAS directions) comes out in LPS with its array flipped to match."""
    array = chest_like()
    array[:, 2, 3] = 999  # a marker near the array's corner
    ras = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    scan = preprocess_scan(write_volume(tmp_path / "ras.nrrd", array, direction=ras), SMALL)
    assert scan.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    np.testing.assert_array_equal(scan.hu, np.clip(array, -1000, 1000)[:, ::-1, ::-1])
    ny, nx = array.shape[1:]
    assert scan.hu[0, ny - 1 - 2, nx - 1 - 3] == 999


def test_optional_resampling_keeps_extent(tmp_path):
    array = chest_like((40, 48, 48))
    settings = CTSettings(min_slices=16, spacing_mm=(1.6, 1.6, 2.5), thumbnail_size=(8, 8, 8), chunk=(8, 8, 8))
    scan = preprocess_scan(write_volume(tmp_path / "a.nrrd", array, spacing=(0.8, 0.8, 2.5)), settings)
    assert scan.spacing_xyz == pytest.approx((1.6, 1.6, 2.5))
    assert scan.hu.shape == (40, 24, 24)
    assert scan.hu.dtype == np.int16 and scan.hu.min() >= -1000


def test_thumbnail_is_area_average():
    hu = np.zeros((8, 8, 8), np.int16)
    hu[:4] = 1000  # first half of the slices bright
    thumb = thumbnail(hu, (-1000, 1000), (2, 2, 2))
    assert thumb.shape == (2, 2, 2) and thumb.dtype == np.float16
    np.testing.assert_allclose(thumb[0], 1.0)
    np.testing.assert_allclose(thumb[1], 0.5)


def test_too_few_slices_keeps_the_scan_for_the_target_tasks_only(tmp_path):
    path = write_volume(tmp_path / "thin.mhd", chest_like((20, 48, 48)))
    scan = preprocess_scan(path, CTSettings())
    assert scan.not_for_pretraining == "has 20 slices, fewer than min_slices = 96" and scan.hu.shape == (20, 48, 48)
    assert preprocess_scan(path, CTSettings(min_slices=20)).not_for_pretraining is None


def _subset(tmp_path, settings=SMALL, **kwargs):
    good = [write_volume(tmp_path / "in" / f"good{i}.mhd", chest_like(seed=i)) for i in range(2)]
    thin = write_volume(tmp_path / "in" / "thin.mhd", chest_like((10, 48, 48)))
    truncated = write_volume(tmp_path / "in" / "trunc.mhd", chest_like())
    (tmp_path / "in" / "trunc.raw").write_bytes(b"\0" * 100)
    flat = write_png(tmp_path / "in" / "flat.png", np.zeros((48, 48), np.uint8))
    nan = chest_like().astype(np.float32)
    nan[0, 0, 0] = np.nan
    nans = write_volume(tmp_path / "in" / "nans.nrrd", nan)
    scans = [str(p) for p in (*good, thin, truncated, flat, nans)]
    out_h5, out_tsv = tmp_path / "out" / "subset0.h5", tmp_path / "out" / "subset0.tsv"
    manifest = preprocess_subset(scans, "subset0", "train", settings, out_h5, out_tsv, **kwargs)
    return manifest, out_h5, out_tsv


@pytest.mark.parametrize(("workers", "compression"), [(1, "lzf"), (2, "lzf"), (1, "none")])
def test_subset_stores_good_scans_and_records_bad_ones(tmp_path, workers, compression):
    """Uncompressed scans are written chunk by chunk (runtime.files.write_chunks): the same bytes come back."""
    settings = dataclasses.replace(SMALL, compression=compression)
    manifest, out_h5, out_tsv = _subset(tmp_path, settings, workers=workers)
    assert list(manifest.id) == ["good0", "good1", "thin", "trunc", "flat", "nans"]
    status = dict(zip(manifest.id, manifest.status))
    assert status == {
        "good0": "ok",
        "good1": "ok",
        "thin": "tasks_only",
        "trunc": "excluded",
        "flat": "excluded",
        "nans": "excluded",
    }
    reasons = dict(zip(manifest.id, manifest.reason))
    assert reasons["thin"] == "has 10 slices, fewer than min_slices = 16: kept for the target tasks, not pretraining"
    assert "truncated" in reasons["trunc"]
    assert "2D image" in reasons["flat"] and "NaN" in reasons["nans"]
    assert manifest.shape[0] == 6 and manifest.loc[0, "shape"] == "48x48x40"
    assert manifest.loc[0, "spacing"] == "0.800x0.800x2.500"
    pd.testing.assert_frame_equal(
        pd.read_csv(out_tsv, sep="\t", keep_default_na=False, dtype={"shape": str}),
        manifest.astype({"shape": str}),
        check_dtype=False,
    )
    with PreprocessedCT(out_h5) as store:
        assert store.ids == ["good0", "good1", "thin"]  # a thin scan is still a valid NCC scan
        expected = to_unit(np.clip(chest_like(seed=1), -1000, 1000), (-1000, 1000))
        np.testing.assert_array_equal(store.volume("good1"), expected)
        np.testing.assert_array_equal(store.crop("good1", (3, 4, 5), (8, 16, 16)), expected[3:11, 4:20, 5:21])
        # 10 slices in chunks of 8: the edge chunk holds 2.
        np.testing.assert_array_equal(store.hu("thin"), np.clip(chest_like((10, 48, 48)), -1000, 1000))
        assert store.thumbnail("good0").shape == (8, 16, 16)
        assert store.spacing("good0") == pytest.approx((0.8, 0.8, 2.5))
    with h5py.File(out_h5) as h5:
        assert h5["scans/good0"].chunks == (8, 16, 16)
        assert h5["scans/good0"].compression == (None if compression == "none" else compression)


def test_strict_mode_fails_and_leaves_no_artifact(tmp_path):
    with pytest.raises(InputError, match=r"trunc\.mhd: .*truncated.*strict"):
        _subset(tmp_path, strict=True)
    assert not list((tmp_path / "out").iterdir())


def _manifest(path, rows):
    frame = pd.DataFrame(rows, columns=["id", "subset", "split", "path", "status", "reason", "shape", "spacing"])
    frame.to_csv(path, sep="\t", index=False)
    return str(path)


def test_gather_excludes_repeated_ids(tmp_path):
    a = _manifest(
        tmp_path / "a.tsv",
        [
            ["x", "subset0", "train", "p", "ok", "", "1x1x1", "1x1x1"],
            ["y", "subset0", "train", "p", "excluded", "bad", "", ""],
        ],
    )
    b = _manifest(
        tmp_path / "b.tsv",
        [
            ["x", "subset5", "val", "q", "ok", "", "1x1x1", "1x1x1"],
            ["y", "subset5", "val", "q", "ok", "", "1x1x1", "1x1x1"],
        ],
    )
    manifest = gather_manifests([a, b], tmp_path / "scans.tsv")
    assert manifest.status.tolist() == ["ok", "excluded", "excluded", "ok"]
    assert manifest.reason[2] == "duplicate id, already in subset subset0"
    assert (tmp_path / "scans.tsv").exists()


def test_gather_counts_tasks_only_scans_for_repeats_but_not_as_usable(tmp_path):
    thin = ["x", "subset0", "train", "p", "tasks_only", "has 20 slices", "1x1x1", "1x1x1"]
    a = _manifest(tmp_path / "a.tsv", [thin, ["y", "subset0", "train", "p", "ok", "", "1x1x1", "1x1x1"]])
    b = _manifest(tmp_path / "b.tsv", [["x", "subset5", "val", "q", "ok", "", "1x1x1", "1x1x1"]])
    manifest = gather_manifests([a, b], tmp_path / "scans.tsv")
    assert manifest.status.tolist() == ["tasks_only", "ok", "excluded"]
    only_thin = _manifest(tmp_path / "c.tsv", [thin])
    with pytest.raises(NoUsableDataError, match="no usable CT scan remains out of 1"):
        gather_manifests([only_thin], tmp_path / "thin.tsv")


def test_gather_fails_when_nothing_is_usable(tmp_path):
    a = _manifest(tmp_path / "a.tsv", [["x", "subset0", "train", "p", "excluded", "has 20 slices", "", ""]])
    with pytest.raises(NoUsableDataError, match="no usable CT scan remains out of 1; .*1 x has 20 slices"):
        gather_manifests([a], tmp_path / "scans.tsv")
    assert not (tmp_path / "scans.tsv").exists()


def test_real_chest_ct_is_preprocessed(real_ct, tmp_path):
    settings = CTSettings(min_slices=20, thumbnail_size=(32, 32, 16), chunk=(32, 32, 16))
    manifest = preprocess_subset([str(real_ct)], "real", "test", settings, tmp_path / "r.h5", tmp_path / "r.tsv")
    assert manifest.status.tolist() == ["ok"] and manifest.shape[0] == 1
    with PreprocessedCT(tmp_path / "r.h5") as store:
        hu = store.hu("CTChest4")
        assert hu.shape == (34, 128, 128)
        assert hu.min() == -1000 and hu.max() == 1000  # padding -3024 and dense bone clipped to the window
        lung = ((hu > -950) & (hu < -600)).mean()
        assert 0.05 < lung < 0.5
        original = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct)))
        # stored RAS -> LPS: x and y flipped, values otherwise identical inside the window
        np.testing.assert_array_equal(hu, np.clip(original, -1000, 1000)[:, ::-1, ::-1])


def test_slab_thumbnail_equals_whole_volume_pooling():
    """The memory-saving slab-wise pooling gives the same thumbnail as pooling the whole volume at once."""
    import torch
    import torch.nn.functional as F

    hu = np.random.default_rng(0).integers(-1000, 1000, (75, 97, 130)).astype(np.int16)
    whole = F.adaptive_avg_pool3d(torch.from_numpy(to_unit(hu, (-1000, 1000)))[None, None], (13, 17, 19))[0, 0]
    np.testing.assert_allclose(thumbnail(hu, (-1000, 1000), (19, 17, 13), slab=7), whole.numpy(), atol=5e-4)


def test_load_thumbnails_keeps_manifest_order(tmp_path):
    manifest, out_h5, _ = _subset(tmp_path)
    other = [write_volume(tmp_path / "b" / f"b{i}.nrrd", chest_like(seed=10 + i)) for i in range(2)]
    manifest_b = preprocess_subset(
        [str(p) for p in other], "subset1", "val", SMALL, tmp_path / "subset1.h5", tmp_path / "b.tsv"
    )
    joined = pd.concat([manifest_b, manifest], ignore_index=True)
    write_tsv(joined, tmp_path / "scans.tsv")
    usable, images = ct_inputs(tmp_path / "scans.tsv", [str(out_h5), str(tmp_path / "subset1.h5")])
    assert usable.id.tolist() == ["b0", "b1", "good0", "good1"]
    thumbs = images.read([0, 1, 2, 3])
    assert len(images) == 4 and thumbs.shape == (4, 8, 16, 16) and thumbs.dtype == np.float32
    with PreprocessedCT(out_h5) as store:
        np.testing.assert_array_equal(thumbs[3], store.thumbnail("good1"))
        np.testing.assert_array_equal(images.read([3, 0])[0], store.thumbnail("good1"))  # in the order asked
    val = images.subset(usable.split == "val")
    assert len(val) == 2 and np.array_equal(val.read([1]), thumbs[1:2])


@pytest.mark.parametrize(
    "case, reason",
    [
        ("ushort", "above +1000 HU"),
        ("air", "no soft tissue"),
        ("uniform", "almost no air or lung (<= -700 HU): not a plausible chest CT"),
    ],
)
def test_readable_but_implausible_volumes_are_excluded(tmp_path, case, reason):
    hu = chest_like((40, 48, 48))
    if case == "ushort":  # signed data under a header that says unsigned: air and padding wrap to about +64000
        path = write_volume(tmp_path / "scan.mhd", hu)
        path.write_text(path.read_text().replace("MET_SHORT", "MET_USHORT"))
    else:
        path = write_volume(tmp_path / "scan.nrrd", np.full_like(hu, -1000 if case == "air" else 40))
    with pytest.raises(InputError, match=re.escape(reason)):
        preprocess_scan(path, CTSettings(min_slices=10, thumbnail_size=(16, 16, 8)))
    # Non-chest or unusual data can be let through.
    preprocess_scan(path, CTSettings(min_slices=10, thumbnail_size=(16, 16, 8), check_plausible=False))


def test_real_chest_ct_is_plausible(real_ct):
    import SimpleITK as sitk

    assert implausible_chest_ct(sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct)))) is None
