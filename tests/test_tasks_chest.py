"""Chest and abdomen target tasks: NCC candidate cubes, NCS nodule layout, LCS LiTS volumes, synthetic writers."""

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import chest_like, write_volume

from semantic_genesis.preprocess.ct import CTSettings, gather_manifests, preprocess_subset, window_hu
from semantic_genesis.preprocess.readers import InputError
from semantic_genesis.resize import nearest_on_centres
from semantic_genesis.synthetic.chest import SyntheticCTSettings, write_luna16
from semantic_genesis.synthetic.lits import write_synthetic_lits
from semantic_genesis.synthetic.ncs import write_synthetic_ncs
from semantic_genesis.synthetic.phantom import PhantomSettings
from semantic_genesis.tasks.lcs import (
    LCSSettings,
    prepare_lcs,
    proportional_splits,
    resize_unit,
)
from semantic_genesis.tasks.ncc import NCCSettings, crop_padded, prepare_ncc, read_candidates, world_to_index
from semantic_genesis.tasks.ncs import NCSSettings, prepare_ncs
from semantic_genesis.tasks.taskdata import TaskData

PREPROCESS = CTSettings(min_slices=16, thumbnail_size=(8, 8, 8), chunk=(16, 16, 8))
RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
CT_SPLITS = {"train": ["subset0"], "val": ["subset1"], "test": ["subset2"]}


def _rotation(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_world_to_index_matches_simpleitk():
    direction = _rotation(30) @ np.diag([1, -1, 1]) @ _rotation(-10)[[0, 2, 1]]  # rotated, flipped, permuted
    image = sitk.Image(20, 30, 40, sitk.sitkInt16)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-12.5, 40.0, -310.0))
    image.SetDirection(direction.ravel().tolist())
    points = np.random.default_rng(0).uniform(-200, 200, (25, 3))
    expected = np.array([image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points])[:, ::-1]
    got = world_to_index(points, image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    np.testing.assert_allclose(got, expected, atol=1e-9)
    np.testing.assert_allclose(world_to_index(points[0], image.GetOrigin(), image.GetSpacing(), direction), expected[0])


# ---- NCC -----------------------------------------------------------------------------------------------------------

MARKER_ZYX = (11, 17, 29)


def _luna_like(tmp_path):
    """Three usable scans in subsets 0-2 (one stored RAS) with a bright marker each, plus a truncated one."""
    scans = {}
    for k, subset in enumerate(("subset0", "subset1", "subset2")):
        hu = chest_like(seed=k)
        hu[MARKER_ZYX] = 1000
        direction = RAS if k == 1 else None
        path = write_volume(tmp_path / "luna" / subset / f"scan{k}.mhd", hu, direction=direction)
        image = sitk.ReadImage(str(path))
        scans[f"scan{k}"] = (subset, image.TransformIndexToPhysicalPoint(MARKER_ZYX[::-1]), image)
    bad = write_volume(tmp_path / "luna" / "subset0" / "broken.mhd", chest_like())
    (bad.parent / "broken.raw").write_bytes(b"\0" * 10)
    tsvs, files = [], []
    for subset, split in (("subset0", "train"), ("subset1", "val"), ("subset2", "test")):
        paths = sorted(str(p) for p in (tmp_path / "luna" / subset).glob("*.mhd"))
        files.append(tmp_path / "ct" / f"{subset}.h5")
        tsvs.append(tmp_path / "ct" / f"{subset}.tsv")
        preprocess_subset(paths, subset, split, PREPROCESS, files[-1], tsvs[-1])
    gather_manifests([str(t) for t in tsvs], tmp_path / "ct" / "scans.tsv")
    return scans, files


def _candidates(tmp_path, scans, negatives=20):
    rng = np.random.default_rng(1)
    rows = []
    for uid, (_, marker, image) in scans.items():
        rows.append(dict(seriesuid=uid, coordX=marker[0], coordY=marker[1], coordZ=marker[2], **{"class": 1}))
        for index in rng.integers(0, [48, 48, 40], (negatives, 3)):
            x, y, z = image.TransformIndexToPhysicalPoint([int(i) for i in index])
            rows.append(dict(seriesuid=uid, coordX=x, coordY=y, coordZ=z, **{"class": 0}))
    rows += [
        dict(seriesuid="broken", coordX=0.0, coordY=0.0, coordZ=-280.0, **{"class": 1}),
        dict(seriesuid="unknown", coordX=0.0, coordY=0.0, coordZ=-280.0, **{"class": 0}),
    ]
    path = tmp_path / "candidates_V2.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_ncc_cubes_centre_splits_and_negative_ratio(tmp_path, caplog):
    scans, files = _luna_like(tmp_path)
    csv = _candidates(tmp_path, scans)
    settings = NCCSettings(cube_size_xyz=(16, 12, 8), negatives_per_positive=3, seed=5)
    out = tmp_path / "ncc.h5"
    index = prepare_ncc(csv, tmp_path / "ct" / "scans.tsv", files, out, settings, synthetic=False)
    assert "skipped 1 candidates of 65: excluded scan" in caplog.text
    assert "skipped 1 candidates of 65: scan not in the manifest" in caplog.text
    assert set(index.seriesuid) == set(scans)
    assert index.groupby("split").seriesuid.unique().map(list).to_dict() == {
        "train": ["scan0"],
        "val": ["scan1"],
        "test": ["scan2"],
    }
    assert index.groupby(["split", "label"]).size().to_dict() == {
        (split, label): n for split in ("train", "val", "test") for label, n in ((0, 3), (1, 1))
    }
    with TaskData(out) as data:
        assert data.shape == (8, 12, 16) and data.task == "ncc" and not data.synthetic
        for split in ("train", "val", "test"):
            targets, ids = data.targets(split), data.ids(split)
            assert targets.shape == (4, 1) and targets.sum() == 1
            cube = data.images(split)[int(np.argmax(targets[:, 0]))].astype(np.float32)
            # The marker is the only saturated voxel and sits on voxel size // 2 of the cube, also for the RAS scan.
            assert cube[4, 6, 8] == 1.0 and (cube == 1.0).sum() == 1
            assert ids == index[index.split == split].id.tolist()
    again = prepare_ncc(csv, tmp_path / "ct" / "scans.tsv", files, tmp_path / "again.h5", settings, synthetic=False)
    assert again.id.tolist() == index.id.tolist()  # the seed fixes the negatives

    keep_all = NCCSettings(cube_size_xyz=(16, 12, 8), negatives_per_positive=0, max_negatives=7)
    index = prepare_ncc(csv, tmp_path / "ct" / "scans.tsv", files, tmp_path / "all.h5", keep_all, synthetic=True)
    assert (index[index.label == 0].groupby("split").size() == 7).all()


def test_a_scan_too_thin_for_pretraining_is_still_an_ncc_scan(tmp_path):
    hu = chest_like((10, 48, 48))  # below PREPROCESS.min_slices = 16
    hu[5, 17, 29] = 1000
    paths = [
        write_volume(tmp_path / "luna" / "thin.mhd", hu),
        write_volume(tmp_path / "luna" / "full.mhd", chest_like()),
    ]
    h5, tsv = tmp_path / "subset0.h5", tmp_path / "subset0.tsv"
    manifest = preprocess_subset([str(p) for p in paths], "subset0", "train", PREPROCESS, h5, tsv)
    assert manifest.set_index("id").status.to_dict() == {"thin": "tasks_only", "full": "ok"}
    gather_manifests([str(tsv)], tmp_path / "scans.tsv")
    image = sitk.ReadImage(str(paths[0]))
    x, y, z = image.TransformIndexToPhysicalPoint((29, 17, 5))
    csv = tmp_path / "candidates.csv"
    rows = [dict(seriesuid="thin", coordX=x, coordY=y, coordZ=z, **{"class": 1})]
    rows += [dict(seriesuid=uid, coordX=x, coordY=y, coordZ=z + 10, **{"class": 0}) for uid in ("thin", "full")]
    pd.DataFrame(rows).to_csv(csv, index=False)
    settings = NCCSettings(cube_size_xyz=(16, 12, 8), negatives_per_positive=0)
    index = prepare_ncc(csv, tmp_path / "scans.tsv", [h5], tmp_path / "ncc.h5", settings, synthetic=False)
    assert sorted(index.seriesuid) == ["full", "thin", "thin"] and index[index.label == 1].seriesuid.tolist() == [
        "thin"
    ]


def test_crop_padded_fills_outside():
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    cube = crop_padded(data, np.array([-1, 3, 4]), (3, 4, 4), fill=-7)
    assert cube.shape == (3, 4, 4)
    np.testing.assert_array_equal(cube[1:, :2, :2], data[:2, 3:, 4:])
    assert (cube[0] == -7).all() and (cube[:, 2:] == -7).all() and (cube[:, :, 2:] == -7).all()


def test_malformed_candidates_name_the_file(tmp_path):
    missing = tmp_path / "missing.csv"
    missing.write_text("seriesuid,coordX,coordY,class\na,1,2,0\n")
    with pytest.raises(InputError, match=r"missing\.csv: lacks column\(s\) coordZ"):
        read_candidates(missing)
    text = tmp_path / "text.csv"
    text.write_text("seriesuid,coordX,coordY,coordZ,class\na,1,2,3,0\nb,1,two,3,1\n")
    with pytest.raises(InputError, match=r"text\.csv: 1 non-numeric .* column coordY, first at data row 2"):
        read_candidates(text)
    label = tmp_path / "label.csv"
    label.write_text("seriesuid,coordX,coordY,coordZ,class\na,1,2,3,2\n")
    with pytest.raises(InputError, match=r"label\.csv: column class must be 0 or 1"):
        read_candidates(label)


# ---- NCS -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_luna(tmp_path_factory):
    root = tmp_path_factory.mktemp("luna")
    phantom = PhantomSettings(matrix=48, slice_mm=(5.0,), thick_slice_fraction=0.0, nodules=(2, 3))
    phantom = PhantomSettings(**{**phantom.__dict__, "nodule_diameter_mm": (10.0, 25.0)})
    write_luna16(root, SyntheticCTSettings(seed=4, patients=3, subsets=3, false_positives_per_scan=2, phantom=phantom))
    return root


def test_synthetic_ncs_round_trip(tiny_luna, tmp_path):
    splits = {"train": ["subset0", "subset1"], "test": ["subset2"]}
    written = write_synthetic_ncs(tiny_luna, tmp_path / "ncs", splits, (16, 16, 8), seed=0)
    annotations = pd.read_csv(tiny_luna / "annotations.csv")
    assert len(written) == len(annotations) >= 3
    subsets = pd.read_csv(tiny_luna / "phantoms.tsv", sep="\t").set_index("seriesuid").subset
    assert written.split.tolist() == ["test" if subsets[u] == "subset2" else "train" for u in written.seriesuid]
    assert list(pd.read_csv(tmp_path / "ncs" / "index.csv").columns[:4]) == ["id", "image", "mask", "split"]
    result = prepare_ncs(tmp_path / "ncs", tmp_path / "ncs.h5", NCSSettings(cube_size_xyz=(16, 16, 8)), True)
    assert (result.status == "ok").all()
    with TaskData(tmp_path / "ncs.h5") as data:
        assert data.shape == (8, 16, 16) and data.synthetic
        assert data.size("train") + data.size("test") == len(written) and data.size("val") == 0
        for split in ("train", "test"):
            masks = data.targets(split)
            assert (masks[:, 4, 8, 8] == 1).all()  # the nodule covers the (jittered) cube centre
            images = data.images(split)[()].astype(np.float32)
            assert images.min() >= 0 and images.max() <= 1
            # Solid and ground-glass nodules are all denser than aerated lung (-850 HU = 0.075).
            assert all(im[m == 1].mean() > 0.15 for im, m in zip(images, masks))


def test_ncs_layout_bad_rows_are_excluded(tmp_path):
    root = tmp_path / "lidc"
    hu = np.full((8, 16, 16), -850, np.int16)
    hu[2:6, 5:11, 5:11] = 30
    mask = (hu > 0).astype(np.uint8) * 2  # a label value > 0 counts as nodule
    write_volume(root / "img" / "a.nii.gz", hu)
    write_volume(root / "msk" / "a.nii.gz", mask)
    write_volume(root / "img" / "big.nii.gz", np.pad(hu, ((2, 2), (4, 4), (4, 4)), constant_values=-850))
    write_volume(root / "msk" / "big.nii.gz", np.pad(mask, ((2, 2), (4, 4), (4, 4))))
    write_volume(root / "msk" / "small.nii.gz", mask[:, :8])
    write_volume(root / "msk" / "empty.nii.gz", np.zeros_like(mask))
    cut = write_volume(root / "img" / "cut.nii.gz", hu, compress=True)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # SimpleITK alone would read it, zero-filled
    index = pd.DataFrame(
        [
            ("a", "img/a.nii.gz", "msk/a.nii.gz", "train"),
            ("big", "img/big.nii.gz", "msk/big.nii.gz", "test"),
            ("gone", "img/nothing.nii.gz", "msk/a.nii.gz", "train"),
            ("shape", "img/a.nii.gz", "msk/small.nii.gz", "val"),
            ("empty", "img/a.nii.gz", "msk/empty.nii.gz", "val"),
            ("split", "img/a.nii.gz", "msk/a.nii.gz", "holdout"),
            ("cut", "img/cut.nii.gz", "msk/a.nii.gz", "test"),
            ("a", "img/a.nii.gz", "msk/a.nii.gz", "val"),
        ],
        columns=["id", "image", "mask", "split"],
    )
    index.to_csv(root / "index.csv", index=False)
    result = prepare_ncs(root, tmp_path / "ncs.h5", NCSSettings(cube_size_xyz=(16, 16, 8)), False)
    reasons = dict(zip(result.id + "/" + result.split, result.reason))
    assert result.status.tolist() == ["ok", "ok"] + ["excluded"] * 6
    assert "cut.nii.gz: is a damaged gzip stream" in reasons["cut/test"]
    assert "nothing.nii.gz: file does not exist" in reasons["gone/train"]
    assert "small.nii.gz: has size (16, 8, 8)" in reasons["shape/val"]
    assert "empty.nii.gz: has no foreground" in reasons["empty/val"]
    assert "is not one of" in reasons["split/holdout"] and "duplicate id" in reasons["a/val"]
    with TaskData(tmp_path / "ncs.h5") as data:
        # The larger cube is cropped about its centre back to the same content as the fitting one.
        np.testing.assert_array_equal(data.images("train")[0], data.images("test")[0])
        np.testing.assert_array_equal(data.targets("train")[0], (hu > 0).astype(np.uint8))
    resampled = prepare_ncs(root, tmp_path / "r.h5", NCSSettings(cube_size_xyz=(8, 8, 4), fit="resample"), False)
    assert (resampled.status == "ok").sum() == 2
    with pytest.raises(InputError, match=r"index\.csv: lacks column\(s\) split"):
        index.drop(columns="split").to_csv(root / "index.csv", index=False)
        prepare_ncs(root, tmp_path / "x.h5", NCSSettings(), False)


# ---- LCS -----------------------------------------------------------------------------------------------------------

LITS_SHAPE = (12, 20, 20)


def _lits_pair(root, n, hu, seg, flip=False, spacing=(1.5, 1.5, 2.0), origin=(-20.0, -30.0, -400.0)):
    """Write volume-N / segmentation-N; flip stores the same physical image with all three axes reversed."""
    direction = None
    if flip:
        hu, seg = hu[::-1, ::-1, ::-1], seg[::-1, ::-1, ::-1]
        origin = tuple(o + (s - 1) * d for o, s, d in zip(origin, hu.shape[::-1], spacing))
        direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
    for name, array in ((f"volume-{n}.nii", hu), (f"segmentation-{n}.nii", seg)):
        write_volume(root / name, np.ascontiguousarray(array), spacing, origin, direction)


def _liver(seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(LITS_SHAPE)
    liver = ((z - 6) / 5) ** 2 + ((y - 8) / 7) ** 2 + ((x - 7) / 6) ** 2 < 1
    seg = liver.astype(np.uint8)
    seg[5:8, 7:10, 6:9] = 2  # tumour inside the liver
    hu = np.where(liver, 60, -100).astype(np.int16) + rng.normal(0, 20, LITS_SHAPE).astype(np.int16)
    hu[:, :, -3:] = -1000  # asymmetric content, so that a wrong flip would show
    return hu, seg


def test_lcs_orientation_tiling_masks_and_bad_files(tmp_path, caplog):
    root = tmp_path / "lits"
    hu, seg = _liver()
    _lits_pair(root, 0, hu, seg)
    _lits_pair(root, 1, hu, seg, flip=True)
    _lits_pair(root, 2, *_liver(1))
    _lits_pair(root, 3, hu, seg)
    (root / "volume-3.nii").write_bytes((root / "volume-3.nii").read_bytes()[:2000])  # truncated
    _lits_pair(root, 4, hu, seg)
    write_volume(root / "segmentation-4.nii", seg[:, :10])
    _lits_pair(root, 5, hu, np.zeros_like(seg))
    _lits_pair(root, 9, hu, seg)  # in no split
    settings = LCSSettings(
        splits={"train": [0, 0], "val": [1, 1], "test": [2, 5]}, volume_size_xyz=(16, 16, 8), cube_size_xyz=(8, 8, 4)
    )
    result = prepare_lcs(root, tmp_path / "lcs.h5", settings, synthetic=False)
    ok = result[result.status == "ok"]
    assert len(ok) == 3 * 8 and ok.groupby("volume").size().to_dict() == {0: 8, 1: 8, 2: 8}
    assert ok.groupby("split").volume.unique().map(list).to_dict() == {"train": [0], "val": [1], "test": [2]}
    assert ok.id.iloc[0] == "volume-0:tile_0_0_0" and ok.id.iloc[7] == "volume-0:tile_1_1_1"
    reasons = result[result.status == "excluded"].set_index("volume").reason.to_dict()
    assert set(reasons) == {3, 4, 5, 9}
    assert "volume-3.nii: is truncated" in reasons[3] and "segmentation-4.nii: has size (20, 10, 12)" in reasons[4]
    assert "no liver voxel" in reasons[5] and "no split range" in reasons[9]
    assert "excluded volume-3" in caplog.text
    with TaskData(tmp_path / "lcs.h5") as data:
        assert data.shape == (4, 8, 8) and data.size("train") == data.size("val") == data.size("test") == 8
        # The same physical volume stored with reversed axes gives the same cubes.
        np.testing.assert_array_equal(data.images("train")[()], data.images("val")[()])
        np.testing.assert_array_equal(data.targets("train"), data.targets("val"))
        masks = data.targets("train").reshape(2, 2, 2, 4, 8, 8).transpose(0, 3, 1, 4, 2, 5).reshape(8, 16, 16)
        np.testing.assert_array_equal(masks, nearest_on_centres(seg >= 1, (8, 16, 16)))  # tumour counts as liver
        assert not np.array_equal(masks, nearest_on_centres(seg == 1, (8, 16, 16)))
        images = data.images("train")[()].astype(np.float32)
        assert images.min() >= 0 and images.max() <= 1


def test_lcs_native_z_resamples_in_plane_only_and_pads_below(tmp_path):
    root = tmp_path / "lits"
    hu, seg = _liver()
    _lits_pair(root, 0, hu, seg)  # 12 slices: one 8-slice cube and one padded with 4 slices of air
    _lits_pair(root, 1, hu[:8], seg[:8])
    _lits_pair(root, 2, hu, seg, flip=True)
    settings = LCSSettings(
        splits={"train": [0, 0], "val": [1, 1], "test": [2, 2]},
        volume_size_xyz=(10, 10, 99),  # z unused
        cube_size_xyz=(10, 10, 8),
        native_z=True,
    )
    result = prepare_lcs(root, tmp_path / "lcs.h5", settings, synthetic=False)
    assert result.groupby("volume").size().to_dict() == {0: 2, 1: 1, 2: 2}
    assert list(result.id[result.volume == 0]) == ["volume-0:tile_0_0_0", "volume-0:tile_1_0_0"]
    with TaskData(tmp_path / "lcs.h5") as data:
        images, masks = data.images("train")[()].astype(np.float32), data.targets("train")
        stacked = masks.reshape(16, 10, 10)
        np.testing.assert_array_equal(stacked[:12], nearest_on_centres(seg >= 1, (12, 10, 10)))
        assert not stacked[12:].any() and not images[1, 4:].any()  # below the scan: air and background
        unit = resize_unit(window_hu(hu, (-1000, 1000)), (12, 10, 10), (-1000, 1000))
        np.testing.assert_allclose(images.reshape(16, 10, 10)[:12], unit, atol=1 / 255)  # slices untouched
        np.testing.assert_array_equal(data.images("test")[()], data.images("train")[()])
    with pytest.raises(ValueError, match="multiple"):
        LCSSettings(volume_size_xyz=(12, 10, 99), cube_size_xyz=(10, 10, 8), native_z=True)


def test_lcs_settings():
    assert LCSSettings().split_of(99) == "train" and LCSSettings().split_of(100) == "val"
    assert LCSSettings().split_of(129) == "test" and LCSSettings().split_of(130) is None
    with pytest.raises(ValueError, match="multiple"):
        LCSSettings(volume_size_xyz=(100, 128, 64))
    cfg = LCSSettings.from_dict({"splits": {"train": [0, 5]}, "volume_size": [64, 64, 32]})
    assert cfg.splits == {"train": [0, 5]} and cfg.volume_size_xyz == (64, 64, 32) and cfg.cube_size_xyz == (64, 64, 32)
    assert proportional_splits(12) == {"train": [0, 9], "val": [10, 10], "test": [11, 11]}
    assert proportional_splits(130) == {"train": [0, 99], "val": [100, 114], "test": [115, 129]}


def test_synthetic_lits_round_trip(tmp_path):
    write_synthetic_lits(tmp_path / "lits", count=3, seed=1, matrix=40)
    volume = sitk.ReadImage(str(tmp_path / "lits" / "volume-0.nii"))
    seg = sitk.ReadImage(str(tmp_path / "lits" / "segmentation-0.nii"))
    assert volume.GetSize() == seg.GetSize() and volume.GetDirection()[:5:4] == (-1.0, -1.0)  # RAS-like storage
    labels = sitk.GetArrayFromImage(seg)
    assert set(np.unique(labels)) <= {0, 1, 2} and (labels >= 1).mean() > 0.01
    hu = sitk.GetArrayFromImage(volume)
    assert 30 < np.median(hu[labels == 1]) < 100  # liver density
    settings = LCSSettings(splits=proportional_splits(3), volume_size_xyz=(32, 32, 16), cube_size_xyz=(16, 16, 8))
    result = prepare_lcs(tmp_path / "lits", tmp_path / "lcs.h5", settings, synthetic=True)
    assert (result.status == "ok").all() and len(result) == 3 * 8
    with TaskData(tmp_path / "lcs.h5") as data:
        assert data.synthetic and data.targets("train").mean() > 0.01


# ---- leakage between pretraining and test sets -----------------------------------------------------------------------


def test_ncs_test_cubes_from_pretraining_scans_are_counted_and_can_be_kept_out(tiny_luna, tmp_path, caplog):
    from semantic_genesis.tasks.ncs import held_out_scans
    from semantic_genesis.tasks.prepare import prepare_task

    splits = {"train": ["subset0"], "val": ["subset1"], "test": ["subset2"]}
    ncs = write_synthetic_ncs(tiny_luna, tmp_path / "ncs", splits, (16, 16, 8), seed=0)
    # LIDC-IDRI's own split is not LUNA16's: one cube of a pretraining (train) scan lands in the NCS test split.
    leaked = ncs.seriesuid[ncs.split == "train"].iloc[0]
    assert (ncs.seriesuid == leaked).sum() >= 2  # one of its cubes stays in train
    index = pd.read_csv(tmp_path / "ncs" / "index.csv", dtype=str)
    index.loc[index.index[index.seriesuid == leaked][0], "split"] = "test"
    index.to_csv(tmp_path / "ncs" / "index.csv", index=False)
    settings = CTSettings(min_slices=1, thumbnail_size=(8, 8, 8), chunk=(16, 16, 8))
    tsvs = []
    for split, (subset,) in splits.items():
        tsvs.append(str(tmp_path / "ct" / f"{subset}.tsv"))
        scans = sorted(str(p) for p in (tiny_luna / subset).glob("*.mhd"))
        preprocess_subset(scans, subset, split, settings, tmp_path / "ct" / f"{subset}.h5", tsvs[-1])
    test_scans = set(index.seriesuid[index.split == "test"])

    def overlap(manifest):
        out = [tmp_path / "task" / name for name in ("data.h5", "index.tsv", "montage.png")]
        inputs = {"root": tmp_path / "ncs", "pretraining": manifest}
        prepare_task("ncs", inputs, {"cube_size": [16, 16, 8]}, True, *out)
        with TaskData(out[0]) as data:
            assert set(data.sources("test")) == test_scans
            return data.pretraining_overlap

    open_manifest = gather_manifests(tsvs, tmp_path / "scans.tsv")
    record = overlap(tmp_path / "scans.tsv")
    expected = {"checked": True, "test_cases": len(test_scans), "in_pretraining": 1, "examples": [leaked]}
    assert {k: record[k] for k in expected} == expected
    assert f"1 of {len(test_scans)} test cases come from scans or images pretraining used" in caplog.text
    assert "exclude_target_test_from_pretraining" in caplog.text

    keep_out = held_out_scans(tmp_path / "ncs")
    assert set(keep_out) == test_scans
    closed = gather_manifests(tsvs, tmp_path / "closed.tsv", keep_out).set_index("id")
    assert closed.status[leaked] == "tasks_only" and "NCS test cube" in closed.reason[leaked]
    untouched = open_manifest.set_index("id").drop(index=list(test_scans))
    assert closed.drop(index=list(test_scans)).status.equals(untouched.status)
    assert overlap(tmp_path / "closed.tsv")["in_pretraining"] == 0


def test_tasks_from_other_collections_say_why_their_overlap_is_unchecked():
    from semantic_genesis.tasks.overlap import count_overlap, describe_overlap

    record = count_overlap("lcs", ["", ""], None)
    assert record == {"checked": False, "reason": "LiTS 2017 abdominal CT is not part of LUNA16"}
    assert describe_overlap("lcs", record) == "LCS: not checked (LiTS 2017 abdominal CT is not part of LUNA16)"
    assert "no seriesuid column" in count_overlap("ncs", [""], "scans.tsv")["reason"]
