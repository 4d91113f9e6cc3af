"""The brain MRI phantom and the BMS task: BraTS layout, normalisation, crops, masks, splits and bad subjects."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from semantic_genesis.preprocess.readers import InputError, NoUsableDataError
from semantic_genesis.synthetic.brain_phantom import (
    BRAIN_TISSUES,
    TISSUES,
    BrainSettings,
    draw_subject,
    render_subject,
    render_tissues,
)
from semantic_genesis.synthetic.brats import write_synthetic_brats
from semantic_genesis.tasks.bms import (
    BMSSettings,
    fold_splits,
    load_subject,
    prepare_bms,
    split_subjects,
    tile_starts,
    window,
)
from semantic_genesis.tasks.taskdata import SPLITS, TaskData

SMALL = BrainSettings(shape_xyz=(64, 64, 40))
SMALL_BMS = BMSSettings(crop_size_xyz=(32, 32, 20), cube_size_xyz=(24, 24, 12), crops_per_subject=2, seed=3)


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    write_synthetic_brats(root, subjects=8, seed=11, settings=SMALL)
    return root


def _write(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), useCompression=True)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_phantom_tumour_in_brain_and_oedema_bright(seed):
    settings = BrainSettings(shape_xyz=(96, 96, 64))
    params = draw_subject(np.random.default_rng(seed), settings)
    flair, seg = render_subject(params, settings)
    tissue = render_tissues(params, settings)
    assert flair.shape == seg.shape == (64, 96, 96) and flair.dtype == np.float32 and seg.dtype == np.uint8
    assert flair.min() >= 0 and np.isfinite(flair).all()
    assert set(np.unique(seg)) <= {0, 1, 2, 4} and (seg > 0).sum() > 100
    assert np.isin(tissue[seg > 0], BRAIN_TISSUES).all()
    assert (flair[tissue == 0] == 0).all()  # background is exactly 0, as in BraTS
    white = flair[(tissue == TISSUES["white_matter"]) & (seg == 0)].mean()
    assert flair[seg == 2].mean() > 1.3 * white
    assert flair[tissue == TISSUES["ventricle"]].mean() < 0.4 * white  # CSF is suppressed on FLAIR
    # The tumour lies in one hemisphere: all its voxels are on one side of the head's midline.
    x = np.nonzero(seg)[2] - (47.5 + params.head_center[0] / settings.spacing_xyz[0])
    assert (params.hemisphere * x > 0).all()
    if params.grade == "HGG":
        assert (seg == 4).any()


def test_phantom_deterministic():
    a = render_subject(draw_subject(np.random.default_rng(5), SMALL), SMALL)
    b = render_subject(draw_subject(np.random.default_rng(5), SMALL), SMALL)
    c = render_subject(draw_subject(np.random.default_rng(6), SMALL), SMALL)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def test_phantom_grade_and_speed():
    import time

    settings = BrainSettings(shape_xyz=(96, 96, 64))
    params = draw_subject(np.random.default_rng(0), settings, grade="LGG")
    start = time.perf_counter()
    _, seg = render_subject(params, settings)
    assert time.perf_counter() - start < 2.0  # typically ~0.2 s
    assert params.grade == "LGG" and not (seg == 4).any() and (seg == 1).any()
    with pytest.raises(ValueError, match="grade"):
        draw_subject(np.random.default_rng(0), settings, grade="GBM")


def test_synthetic_writer_layout(brats_root):
    subjects = sorted(p for grade in ("HGG", "LGG") for p in (brats_root / grade).iterdir())
    assert len(subjects) == 8 and {p.parent.name for p in subjects} == {"HGG", "LGG"}
    for folder in subjects:
        assert folder.name.startswith("Brats18_")
        flair = sitk.ReadImage(str(folder / f"{folder.name}_flair.nii.gz"))
        seg = sitk.ReadImage(str(folder / f"{folder.name}_seg.nii.gz"))
        assert flair.GetSize() == seg.GetSize() == SMALL.shape_xyz
        assert np.allclose(flair.GetSpacing(), SMALL.spacing_xyz) and flair.GetOrigin() == seg.GetOrigin()
        labels = set(np.unique(sitk.GetArrayViewFromImage(seg)))
        assert labels <= {0, 1, 2, 4} and len(labels) > 1
        assert sitk.GetArrayViewFromImage(flair).min() >= 0
    assert not list(brats_root.rglob(".*partial*"))


def test_prepare_bms_shapes_splits_and_determinism(brats_root, tmp_path):
    index = prepare_bms(brats_root, tmp_path / "a.h5", SMALL_BMS, synthetic=True)
    again = prepare_bms(brats_root, tmp_path / "b.h5", SMALL_BMS, synthetic=True)
    sampled = index[index.split != "test"]
    assert list(index.columns[:2]) == ["id", "subject"] and (sampled.groupby("subject").size() == 2).all()
    assert sampled.subject.nunique() == 7 and index.id[index.split == "test"].str.contains(":tile_").all()
    assert index.equals(again)
    assert index.groupby("subject").split.nunique().max() == 1  # no subject in two splits
    assert set(index.split) == set(SPLITS)
    # At least half of each sampled subject's crops hold tumour.
    assert (sampled.groupby("subject").tumour_fraction.apply(lambda f: (f > 0).mean()) >= 0.5).all()
    with TaskData(tmp_path / "a.h5") as a, TaskData(tmp_path / "b.h5") as b:
        assert a.shape == (12, 24, 24) and a.synthetic and a.task == "bms"
        for split in SPLITS:
            images = a.images(split)[()]
            assert images.min() >= 0 and images.max() <= 1 and images.max() > 0.5
            assert np.array_equal(images, b.images(split)[()])
            assert set(np.unique(a.targets(split))) <= {0, 1}
            assert a.ids(split) == list(index.id[index.split == split])
    other = prepare_bms(brats_root, tmp_path / "c.h5", BMSSettings(**{**SMALL_BMS.__dict__, "seed": 4}), True)
    assert not other.equals(index)


def test_mask_is_whole_tumour_after_nearest_resize(tmp_path):
    # A 40x40x20 volume, one crop of the whole volume, halved: a cubic tumour on even voxels maps exactly.
    flair = np.zeros((20, 40, 40), np.float32)
    flair[2:18, 4:36, 4:36] = 100
    flair[4:16, 8:32, 8:32] = 300
    seg = np.zeros(flair.shape, np.uint8)
    seg[8:12, 12:20, 20:28] = 2
    seg[9:11, 14:18, 22:26] = 4
    seg[10, 16, 24] = 1
    folder = tmp_path / "HGG" / "Brats18_T_1"
    _write(folder / "Brats18_T_1_flair.nii.gz", flair)
    _write(folder / "Brats18_T_1_seg.nii.gz", seg)
    settings = BMSSettings(crop_size_xyz=(40, 40, 20), cube_size_xyz=(20, 20, 10), crops_per_subject=2)
    index = prepare_bms(tmp_path, tmp_path / "bms.h5", settings, synthetic=False)
    expected = np.zeros((10, 20, 20), np.uint8)
    expected[4:6, 6:10, 10:14] = 1
    with TaskData(tmp_path / "bms.h5") as data:
        (image, mask, sid), *_ = data.samples("train")
    assert sid == "Brats18_T_1:0" and list(index.split) == ["train", "train"]
    assert np.array_equal(mask, expected)
    assert index.tumour_fraction[0] == pytest.approx(expected.mean())
    # Normalisation: the bright block reaches 1, the background stays 0.
    assert image[5, 10, 10] == pytest.approx(1, abs=1e-3) and image[0, 0, 0] == 0


def test_crop_larger_than_volume_is_padded(tmp_path):
    flair = np.full((10, 16, 16), 50, np.float32)
    seg = np.zeros(flair.shape, np.uint8)
    seg[3:7, 6:10, 6:10] = 2  # padded by 5, 8, 8 to the crop, then halved: 2 x 2 x 2 cube voxels
    folder = tmp_path / "LGG" / "Brats18_S_1"
    _write(folder / "Brats18_S_1_flair.nii.gz", flair + np.arange(16, dtype=np.float32))
    _write(folder / "Brats18_S_1_seg.nii.gz", seg)
    settings = BMSSettings(crop_size_xyz=(32, 32, 20), cube_size_xyz=(16, 16, 10), crops_per_subject=1)
    index = prepare_bms(tmp_path, tmp_path / "bms.h5", settings, synthetic=False)
    assert index.tumour_fraction[0] == pytest.approx(2 * 2 * 2 / (16 * 16 * 10))


def test_bad_subjects_excluded_with_reasons(brats_root, tmp_path, caplog):
    import shutil

    root = tmp_path / "brats"
    shutil.copytree(brats_root, root)
    folders = sorted(p for grade in ("HGG", "LGG") for p in (root / grade).iterdir())
    no_seg, truncated = folders[0], folders[1]
    (no_seg / f"{no_seg.name}_seg.nii.gz").unlink()
    flair = truncated / f"{truncated.name}_flair.nii.gz"
    data = flair.read_bytes()
    flair.write_bytes(data[: len(data) // 2])
    assert gzip.open(flair).read(348)  # the header still reads: only the full read finds the truncation
    (folders[2] / f"{folders[2].name}_t1.nii.gz").write_bytes(b"ignored")  # other modalities are ignored
    with caplog.at_level(logging.WARNING, logger="semantic_genesis"):
        index = prepare_bms(root, tmp_path / "bms.h5", SMALL_BMS, synthetic=True)
    excluded = index.attrs["excluded"]
    assert set(excluded) == {no_seg.name, truncated.name}
    assert "segmentation" in excluded[no_seg.name] and "truncated" in excluded[truncated.name]
    assert set(index.subject) == {f.name for f in folders[2:]}
    assert no_seg.name in caplog.text and truncated.name in caplog.text
    with TaskData(tmp_path / "bms.h5") as data:
        assert len(data) == len(index)


def test_geometry_mismatch_flat_image_and_nothing_usable(tmp_path):
    a = tmp_path / "HGG" / "Brats18_A_1"
    _write(a / "Brats18_A_1_flair.nii.gz", np.ones((10, 20, 20), np.float32))
    _write(a / "Brats18_A_1_seg.nii.gz", np.zeros((10, 20, 21), np.uint8))
    b = tmp_path / "HGG" / "Brats18_B_1"
    _write(b / "Brats18_B_1_seg.nii.gz", np.zeros((10, 20, 20), np.uint8))
    # A flat FLAIR. (NaN cannot be tested through NIfTI: SimpleITK's NIfTI reader turns NaN into 0.)
    _write(b / "Brats18_B_1_flair.nii.gz", np.full((10, 20, 20), 7, np.float32))
    with pytest.raises(NoUsableDataError, match="no usable BraTS subject") as info:
        prepare_bms(tmp_path, tmp_path / "bms.h5", SMALL_BMS, synthetic=False)
    assert "differs from the segmentation" in str(info.value) and "no contrast" in str(info.value)
    assert not (tmp_path / "bms.h5").exists()
    with pytest.raises(NoUsableDataError, match="no BraTS subject folders"):
        prepare_bms(tmp_path / "empty", tmp_path / "x.h5", SMALL_BMS, synthetic=False)


def test_split_subjects_and_settings():
    names = [f"s{i}" for i in range(20)]
    splits = split_subjects(names, 0.15, 0.15, seed=0)
    assert sorted(splits) == sorted(names) and split_subjects(names[::-1], 0.15, 0.15, seed=0) == splits
    assert [list(splits.values()).count(s) for s in SPLITS] == [14, 3, 3]
    assert sorted(split_subjects(["a", "b", "c"], 0.1, 0.1, seed=0).values()) == ["test", "train", "val"]
    assert list(split_subjects(["a"], 0.2, 0.2, seed=0).values()) == ["train"]
    assert split_subjects(names, 0.15, 0.15, seed=1) != splits
    cfg = {"crop_size": [48, 48, 32], "cube_size": [32, 32, 16], "crops_per_subject": 3, "seed": 2, "other": 1}
    settings = BMSSettings.from_dict(cfg)
    assert settings.crop_size_xyz == (48, 48, 32) and settings.cube_size_xyz == (32, 32, 16)
    assert settings.crops_per_subject == 3 and settings.seed == 2 and settings.val_fraction == 0.15
    assert BMSSettings.from_dict({"crop_size_xyz": [10, 10, 5]}).crop_size_xyz == (10, 10, 5)


def test_fold_splits_are_the_authors():
    # Recorded from the authors' bms_config (random.Random(4).shuffle of fold_1 + fold_2, first eighth validates):
    # on sixteen ids it validates on s10 and s05; on their real fold files 190 pooled ids give 23 validation
    # subjects, the first Brats18_CBICA_AXW_1, Brats18_TCIA02_605_1, Brats18_TCIA10_387_1, and 95 test subjects.
    ids = [f"s{i:02d}" for i in range(16)]
    splits = fold_splits([ids[:9], ids[9:], ["t0", "t1"]])
    assert [k for k, v in splits.items() if v == "val"] == ["s10", "s05"]
    assert sorted(k for k, v in splits.items() if v == "train") == sorted(set(ids) - {"s10", "s05"})
    assert [k for k, v in splits.items() if v == "test"] == ["t0", "t1"]
    with pytest.raises(ValueError, match="s03 is in fold 1 and fold 2"):
        fold_splits([ids[:5], ids[3:], ["t0"]])


def _write_fold(path: Path, ids: list[str]) -> str:
    path.write_text("".join(f"{i}\n" for i in ids))
    return str(path)


def test_prepare_bms_with_fold_files_and_whole_volume_test_tiles(brats_root, tmp_path, caplog):
    names = sorted(p.name for grade in ("HGG", "LGG") for p in (brats_root / grade).iterdir())
    pool = names[:6] + ["Brats18_gone_1", "Brats18_gone_2"]
    folds = [
        _write_fold(tmp_path / "fold_1.csv", pool[:4]),
        _write_fold(tmp_path / "fold_2.csv", pool[4:]),
        _write_fold(tmp_path / "fold_3.csv", names[6:7]),
    ]
    # Crops the size of the cubes, so that the test tiles are the volume itself.
    settings = BMSSettings(crop_size_xyz=(24, 24, 16), cube_size_xyz=(24, 24, 16), crops_per_subject=2, folds=folds)
    with caplog.at_level(logging.WARNING, logger="semantic_genesis"):
        index = prepare_bms(brats_root, tmp_path / "bms.h5", settings, synthetic=True)
    expected = fold_splits([pool[:4], pool[4:], names[6:7]])
    assert index.groupby("subject").split.first().to_dict() == {n: expected[n] for n in names[:7]}
    assert "val" in set(index.split) and index.attrs["excluded"] == {names[7]: f"in none of the fold files {folds}"}
    assert "2 of the 9 subjects listed in the fold files are not usable" in caplog.text
    # Training crops are sampled (2 per subject); the test subject is tiled: each head voxel once.
    assert (index[index.split != "test"].groupby("subject").size() == 2).all()
    test = index[index.split == "test"]
    image, mask = load_subject(brats_root / ("HGG" if (brats_root / "HGG" / names[6]).is_dir() else "LGG") / names[6])
    starts = tile_starts(image > 0, (16, 24, 24))
    assert len(test) == len(starts) > 2 and test.id.str.match(rf"{names[6]}:tile_\d+_\d+_\d+$").all()
    with TaskData(tmp_path / "bms.h5") as data:
        assert int(data.targets("test")[()].sum()) == int(mask.sum()) > 0
        assert np.isclose(data.images("test")[()].astype(np.float64).sum(), image.sum(), rtol=1e-3)
    sampled = prepare_bms(
        brats_root, tmp_path / "s.h5", BMSSettings(**{**settings.__dict__, "test_crops": "sampled"}), 1
    )
    assert (sampled.groupby("subject").size() == 2).all()


def test_tiles_cover_the_head_once_and_windows_pad():
    brain = np.zeros((30, 50, 45), bool)
    brain[3:27, 5:44, 2:41] = True
    starts = tile_starts(brain, (10, 16, 16))
    assert len(starts) == 3 * 3 * 3 and starts[0] == (0, 1, -2)  # 24 -> 3 x 10; 39 -> 3 x 16, 9 left, 4 before
    covered = sum(window(brain.astype(np.uint8), s, (10, 16, 16)).sum() for s in starts)
    assert covered == brain.sum()
    array = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(
        window(array, (-1, 1, 2), (2, 3, 3)), [[[0] * 3] * 3, [[6, 7, 0], [10, 11, 0], [0] * 3]]
    )


def test_bad_fold_files_are_named(brats_root, tmp_path):
    good = _write_fold(tmp_path / "fold_1.csv", ["a", "b"])
    for name, content, message in (
        ("missing.csv", None, "fold file not found"),
        ("empty.csv", "\n\n", "lists no subject id"),
        ("twice.csv", "a\nc\nc\n", r"lists \['c'\] more than once"),
    ):
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        settings = BMSSettings(**{**SMALL_BMS.__dict__, "folds": (good, str(path))})
        with pytest.raises(InputError, match=message) as info:
            prepare_bms(brats_root, tmp_path / "bms.h5", settings, synthetic=True)
        assert name in str(info.value) and not (tmp_path / "bms.h5").exists()
    overlap = BMSSettings(**{**SMALL_BMS.__dict__, "folds": (good, _write_fold(tmp_path / "f3.csv", ["b"]))})
    with pytest.raises(InputError, match="b is in fold 1 and fold 2"):
        prepare_bms(brats_root, tmp_path / "bms.h5", overlap, synthetic=True)
    with pytest.raises(ValueError, match="one file"):
        BMSSettings(folds=(good,))
    with pytest.raises(ValueError, match="test_crops"):
        BMSSettings(test_crops="whole")
