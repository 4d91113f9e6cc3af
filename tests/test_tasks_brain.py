"""The brain MRI phantom and the BMS task: BraTS layout, normalisation, crops, masks, splits and bad subjects."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from semantic_genesis.preprocess.readers import NoUsableDataError
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
    prepare_bms,
    split_subjects,
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
    assert list(index.columns[:2]) == ["id", "subject"] and len(index) == 8 * 2
    assert index.equals(again)
    assert index.groupby("subject").split.nunique().max() == 1  # no subject in two splits
    assert set(index.split) == set(SPLITS)
    # At least half of each subject's crops hold tumour.
    assert (index.groupby("subject").tumour_fraction.apply(lambda f: (f > 0).mean()) >= 0.5).all()
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
    assert set(index.subject) == {f.name for f in folders[2:]} and len(index) == 6 * 2
    assert no_seg.name in caplog.text and truncated.name in caplog.text
    with TaskData(tmp_path / "bms.h5") as data:
        assert len(data) == 12


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
