"""Patch extraction: positions and labels, counts, multi-resolution, determinism, 2D, atomic output and montage."""

import hashlib

import h5py
import numpy as np
import pytest
from conftest import chest_like, write_volume

from semantic_genesis.discovery.inputs import ct_scans, scan_shapes
from semantic_genesis.discovery.patches import extract_patches, multi_resolution_regions, patch_montage
from semantic_genesis.discovery.plan import DiscoverySettings, plan_classes
from semantic_genesis.preprocess.ct import CTSettings, PreprocessedCT, preprocess_subset
from semantic_genesis.pretrain.transforms import TransformSettings

SETTINGS = DiscoverySettings(classes=4, k=5, val_neighbours=2, crop_size_xyz=(16, 16, 8), min_distance=3.0)


def volumes(n=10, seed=0, two_d=False):
    """Random [0, 1] scans (or images) of slightly different shapes; the first 7 train, the rest val."""
    rng = np.random.default_rng(seed)
    sizes = [(int(rng.integers(30, 36)), 48, int(rng.integers(44, 52))) for _ in range(n)]
    scans = {f"s{i}": rng.uniform(0, 1, size[1:] if two_d else size).astype(np.float32) for i, size in enumerate(sizes)}
    return scans, ["train"] * 7 + ["val"] * (n - 7), rng.normal(size=(n, 6))


def accept_all(_sid: str):
    """An accept_factory that takes every coordinate."""
    return lambda start: True


def make_plan(scans, splits, latents, settings=SETTINGS):
    """A plan over in-memory scans that accepts every coordinate."""
    shapes = {sid: v.shape for sid, v in scans.items()}
    return plan_classes(latents, list(scans), splits, settings, np.random.default_rng(0), accept_all, shapes)


def contents(path):
    """Every dataset and attribute of an HDF5 file."""
    out = {}
    with h5py.File(path, "r") as h5:
        out.update({f"@{k}": v for k, v in h5.attrs.items()})
        h5.visititems(lambda n, o: out.update({n: o[()]}) if isinstance(o, h5py.Dataset) else None)
    return out


def test_patches_are_the_planned_crops(tmp_path):
    scans, splits, latents = volumes()
    plan = make_plan(scans, splits, latents)
    out = tmp_path / "patches.h5"
    extract_patches(plan, scans.__getitem__, out, SETTINGS, False, 0, {"run": "test"})
    data = contents(out)
    assert data["train/patches"].shape == (4 * 5, 8, 16, 16) and data["val/patches"].shape == (4 * 2, 8, 16, 16)
    assert data["train/patches"].dtype == np.float16
    for split in ("train", "val"):
        rows = plan[plan.split == split]
        np.testing.assert_array_equal(data[f"{split}/labels"], rows["class"])
        np.testing.assert_array_equal(data[f"{split}/meta/id"].astype(str), rows.neighbour)
        for n, row in enumerate(rows.itertuples()):
            z, y, x = row.start_z, row.start_y, row.start_x
            expected = scans[row.neighbour][z : z + 8, y : y + 16, x : x + 16]
            np.testing.assert_allclose(data[f"{split}/patches"][n], expected, atol=5e-4)
            assert (data[f"{split}/meta/start_z"][n], data[f"{split}/meta/start_x"][n]) == (z, x)
    with h5py.File(out, "r") as h5:
        assert h5["train/patches"].chunks == (1, 8, 16, 16) and '"run": "test"' in h5.attrs["config"]


def test_multi_resolution_counts_and_regions(tmp_path):
    scans, splits, latents = volumes()
    plan = make_plan(scans, splits, latents)
    out = tmp_path / "patches.h5"
    extract_patches(plan, scans.__getitem__, out, SETTINGS, True, 0, {})
    data = contents(out)
    assert len(data["train/patches"]) == 4 * 5 * 3 and len(data["val/patches"]) == 4 * 2
    np.testing.assert_array_equal(data["train/meta/resolution"], np.tile([0, 1, 2], 20))
    np.testing.assert_array_equal(data["train/labels"], np.repeat(plan[plan.split == "train"]["class"], 3))
    extra = data["train/meta/resolution"] > 0
    sizes = data["train/meta/size_x"][extra]
    assert sizes.min() >= 12 and sizes.max() <= 20  # 50..79 scaled by 16 / 64
    np.testing.assert_allclose(data["train/meta/scale"][extra], sizes / 16)
    assert (data["val/meta/resolution"] == 0).all()


def test_multi_resolution_regions_stay_inside():
    rng = np.random.default_rng(0)
    for _ in range(50):
        for start, size in multi_resolution_regions((0, 40, 0), (8, 64, 64), (8, 64, 64), rng):
            assert size[0] == 8 and 50 <= size[1] <= 64 and all(s >= 0 for s in start)
            assert all(b + s <= n for b, s, n in zip(start, size, (8, 64, 64)))


def test_multi_resolution_regions_are_anchored_at_the_corner_as_the_authors():
    """pattern_generator_3D.py: corner (x + dx, y + dy), dx, dy in [-10, 9], side in [50, 79], redrawn until inside."""
    rng = np.random.default_rng(1)
    shifts, sides = [], []
    for _ in range(200):
        for start, size in multi_resolution_regions((4, 100, 120), (40, 300, 300), (32, 64, 64), rng):
            shifts.append((start[1] - 100, start[2] - 120))
            sides.append(size[1])
            assert start[0] == 4 and size[1] == size[2]
    shifts = np.array(shifts)
    assert shifts.min() == -10 and shifts.max() == 9 and min(sides) == 50 and max(sides) == 79
    assert abs(shifts.mean() + 0.5) < 0.5  # no pull towards a centre: the shift is the corner's


def test_same_seed_same_file(tmp_path):
    scans, splits, latents = volumes()
    plan = make_plan(scans, splits, latents)
    digests, files = [], []
    for name, seed in (("a.h5", 7), ("b.h5", 7), ("c.h5", 8)):
        extract_patches(plan, scans.__getitem__, tmp_path / name, SETTINGS, True, seed, {"x": 1})
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
        files.append(contents(tmp_path / name))
    assert digests[0] == digests[1]
    assert not np.array_equal(files[0]["train/patches"], files[2]["train/patches"])


def test_failure_leaves_no_file(tmp_path):
    scans, splits, latents = volumes()
    plan = make_plan(scans, splits, latents)

    opened = []

    def broken(sid):
        """Fails on the third scan, after patches of two scans are written."""
        opened.append(sid)
        if len(opened) == 3:
            raise OSError("disk went away")
        return scans[sid]

    with pytest.raises(OSError, match="disk went away"):
        extract_patches(plan, broken, tmp_path / "patches.h5", SETTINGS, False, 0, {})
    assert list(tmp_path.iterdir()) == []


def test_2d_images(tmp_path):
    images, splits, latents = volumes(two_d=True)
    settings = DiscoverySettings(
        classes=3, k=4, val_neighbours=2, crop_size_xyz=(16, 16), margin_lo=(0.1, 0.1), margin_hi=(0.1, 0.1)
    )
    plan = make_plan(images, splits, latents, settings)
    out = tmp_path / "patches_2d.h5"
    extract_patches(plan, images.__getitem__, out, settings, True, 0, {})
    data = contents(out)
    assert data["train/patches"].shape == (3 * 4 * 3, 16, 16) and data["val/patches"].shape == (3 * 2, 16, 16)
    row = plan[plan.split == "val"].iloc[0]
    y, x = row.start_y, row.start_x
    np.testing.assert_allclose(data["val/patches"][0], images[row.neighbour][y : y + 16, x : x + 16], atol=5e-4)
    patch_montage(out, tmp_path / "montage.png", classes=2, neighbours=3)
    assert (tmp_path / "montage.png").stat().st_size > 0


def test_preprocessed_ct_files(tmp_path):
    """The CT opener reads the files preprocess_subset writes; crops equal PreprocessedCT.crop."""
    settings = CTSettings(min_slices=16, thumbnail_size=(8, 8, 8), chunk=(16, 16, 8))
    paths = {}
    for subset, split, seeds in (("subset0", "train", range(4)), ("subset5", "val", range(4, 6))):
        scans = [write_volume(tmp_path / subset / f"c{s}.nrrd", chest_like((36, 48, 48), seed=s)) for s in seeds]
        paths[split] = tmp_path / f"{subset}.h5"
        preprocess_subset([str(p) for p in scans], subset, split, settings, paths[split], tmp_path / f"{subset}.tsv")
    open_scan = ct_scans(list(paths.values()))
    ids = [f"c{s}" for s in range(6)]
    shapes = scan_shapes(open_scan, ids)
    discovery = DiscoverySettings(classes=2, k=3, val_neighbours=1, crop_size_xyz=(16, 16, 8), min_distance=2.0)
    latents = np.random.default_rng(0).normal(size=(6, 4))
    splits = ["train"] * 4 + ["val"] * 2
    plan = plan_classes(latents, ids, splits, discovery, np.random.default_rng(0), accept_all, shapes)
    out = tmp_path / "patches.h5"
    extract_patches(plan, open_scan, out, discovery, False, 0, {})
    data = contents(out)
    row = plan[plan.split == "train"].iloc[-1]
    with PreprocessedCT(paths["train"]) as ct:
        expected = ct.crop(row.neighbour, (row.start_z, row.start_y, row.start_x), (8, 16, 16))
    np.testing.assert_allclose(data["train/patches"][-1], expected, atol=5e-4)
    patch_montage(out, tmp_path / "montage.png")
    assert (tmp_path / "montage.png").exists()


@pytest.mark.parametrize(
    "name, rule",
    [("results/ct/discovery/patches.h5", "patches"), ("results/ct/preprocessed/subset0.h5", "preprocess_ct")],
)
def test_a_truncated_h5_names_the_file_and_how_to_rebuild_it(tmp_path, name, rule):
    from semantic_genesis.pretrain.trainer import PatchDataset
    from semantic_genesis.runtime.files import DamagedFileError

    path = tmp_path / name
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("train/patches", data=np.zeros((64, 8, 16, 16), np.float16))
    path.write_bytes(path.read_bytes()[:1500])  # cut short, as by a full disk
    with pytest.raises(DamagedFileError, match=f"{path} cannot be read as HDF5.*--forcerun {rule}"):
        if rule == "patches":
            PatchDataset(path, "train", "models_genesis", TransformSettings(), seed=0, draw_only=False)
        else:
            PreprocessedCT(path)
