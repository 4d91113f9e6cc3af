"""2D target tasks: SIIM run-length codes, ChestX-ray14 labels, the DXC and PXS task files from synthetic data."""

import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from semantic_genesis.preprocess.cxr import CXRSettings, preprocess_chestxray14
from semantic_genesis.preprocess.readers import NoUsableDataError
from semantic_genesis.resize import area_or_bilinear
from semantic_genesis.synthetic.chest import SyntheticCXRSettings, write_chestxray14
from semantic_genesis.synthetic.phantom import render_radiograph
from semantic_genesis.synthetic.siim import synthetic_siim_patient, write_synthetic_siim
from semantic_genesis.tasks.dxc import DXCSettings, finding_matrix, prepare_dxc
from semantic_genesis.tasks.pxs import (
    RLE_CSV,
    PXSSettings,
    assign_pxs_splits,
    prepare_pxs,
    read_rle_csv,
    rle_decode,
    rle_encode,
)
from semantic_genesis.tasks.taskdata import CXR14_LABELS, TaskData

# ---- run-length encoding -------------------------------------------------------------------------------------------
TINY = np.array([[0, 0, 0, 0], [1, 0, 0, 1], [1, 0, 0, 1], [0, 0, 1, 0]], bool)


def test_rle_hand_computed_example():
    # Column-major pixels 1, 2 | 11 | 13, 14: runs (1, 2), (11, 1), (13, 2); starts relative to the previous run's end.
    assert rle_encode(TINY) == "1 2 8 1 1 2"
    np.testing.assert_array_equal(rle_decode("1 2 8 1 1 2", (4, 4)), TINY)
    # A zero offset continues right after the previous run: pixels 0 and 1 are the first column's top two.
    expected = np.zeros((4, 4), bool)
    expected[:2, 0] = True
    np.testing.assert_array_equal(rle_decode("0 1 0 1", (4, 4)), expected)
    assert rle_encode(np.ones((4, 4), bool)) == "0 16"
    assert rle_encode(np.zeros((3, 5), bool)) == "-1"
    assert not rle_decode(" -1", (3, 5)).any() and rle_decode("-1", (3, 5)).shape == (3, 5)


@pytest.mark.parametrize("shape, density", [((7, 5), 0.5), ((64, 48), 0.1), ((32, 32), 0.9), ((1, 9), 0.3)])
def test_rle_round_trip(shape, density):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        mask = rng.random(shape) < density
        code = rle_encode(mask)
        np.testing.assert_array_equal(rle_decode(code, shape), mask)
        values = np.array(code.split(), int) if mask.any() else np.zeros(0, int)
        assert (values[1::2] >= 1).all() and values[1::2].sum() == mask.sum()


@pytest.mark.parametrize(
    "code, message",
    [
        ("", "empty"),
        ("1 2 3", "odd"),
        ("1 a", "non-integers"),
        ("1.5 2", "non-integers"),
        ("-2 3", "negative"),
        ("3 0", "shorter"),
        ("10 7", "beyond"),
        ("0 16 0 1", "beyond"),
    ],
)
def test_rle_malformed_strings_raise(code, message):
    with pytest.raises(ValueError, match=message):
        rle_decode(code, (4, 4))


# ---- DXC --------------------------------------------------------------------------------------------------------
def test_finding_matrix():
    labels = pd.Series(["No Finding", "Cardiomegaly|Effusion", "Hernia", "Pleural_Thickening | Atelectasis"])
    matrix = finding_matrix(labels)
    assert matrix.shape == (4, 14) and matrix.dtype == np.uint8
    names = [sorted(np.array(CXR14_LABELS)[row.astype(bool)]) for row in matrix]
    assert names == [[], ["Cardiomegaly", "Effusion"], ["Hernia"], ["Atelectasis", "Pleural_Thickening"]]
    with pytest.raises(ValueError, match=r"unknown finding labels \['Cardiomegally', 'Covid'\]"):
        finding_matrix(pd.Series(["Covid|Effusion", "Cardiomegally", "No Finding"]))
    with pytest.raises(ValueError, match="empty"):
        finding_matrix(pd.Series(["Effusion", ""]))


@pytest.fixture(scope="module")
def chestxray14(tmp_path_factory):
    """A tiny synthetic ChestX-ray14 set, preprocessed at 32 pixels with one unreadable image."""
    root = tmp_path_factory.mktemp("dxc")
    write_chestxray14(root / "cxr", SyntheticCXRSettings(seed=3, patients=8, size=32, test_fraction=0.25))
    entries = pd.read_csv(root / "cxr" / "Data_Entry_2017.csv", dtype={"Image Index": str})
    broken = entries["Image Index"].iloc[1]
    (root / "cxr" / "images" / broken).write_bytes(b"not a png")
    preprocess_chestxray14(
        root / "cxr", CXRSettings(size=32, val_fraction=0.25, seed=1), root / "images.h5", root / "images.tsv"
    )
    return root, entries, broken


@pytest.mark.parametrize("size", [32, 16])
def test_prepare_dxc(chestxray14, size):
    root, entries, broken = chestxray14
    out = root / f"dxc{size}.h5"
    result = prepare_dxc(
        root / "images.h5", root / "images.tsv", root / "cxr" / "Data_Entry_2017.csv", out, DXCSettings(size), True
    )
    assert len(result) == len(entries)
    assert (
        result.set_index("id").status[broken] == "excluded" and "cannot read" in result.set_index("id").reason[broken]
    )
    official = {name: set((root / "cxr" / f"{name}_list.txt").read_text().split()) for name in ("train_val", "test")}
    labels = dict(zip(entries["Image Index"], finding_matrix(entries["Finding Labels"])))
    with TaskData(out) as task:
        assert task.task == "dxc" and task.synthetic and task.shape == (size, size)
        ids = {split: task.ids(split) for split in ("train", "val", "test")}
        assert broken not in sum(ids.values(), [])
        assert set(ids["test"]) == official["test"] - {broken}
        assert set(ids["train"]) | set(ids["val"]) == official["train_val"] - {broken}
        patients = {split: {int(i[:8]) for i in ids[split]} for split in ids}
        assert ids["val"] and not patients["train"] & patients["val"], "validation is split by patient"
        for split in ids:
            targets = task.targets(split)
            assert targets.shape == (len(ids[split]), 14) and targets.dtype == np.uint8
            np.testing.assert_array_equal(targets, np.array([labels[i] for i in ids[split]]))
        image = task.images("train")[0].astype(np.float32)
        assert image.shape == (size, size) and 0 <= image.min() and image.max() <= 1
    # The task images are the preprocessed ones (32 px), resized by area averaging: 2x2 means at 16 px.
    stored = np.asarray(sitk.GetArrayFromImage(sitk.ReadImage(str(root / "cxr" / "images" / ids["train"][0]))))
    expected = stored / 255.0 if size == 32 else (stored / 255.0).reshape(16, 2, 16, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(image, expected, atol=2e-3)
    assert area_or_bilinear(np.full((30, 30), 0.5), 224).shape == (224, 224)


def test_prepare_dxc_rejects_unknown_images(chestxray14, tmp_path):
    root, entries, _ = chestxray14
    entries.iloc[2:].to_csv(tmp_path / "entries.csv", index=False)
    with pytest.raises(ValueError, match="not in"):
        prepare_dxc(
            root / "images.h5", root / "images.tsv", tmp_path / "entries.csv", tmp_path / "o.h5", DXCSettings(8), True
        )
    assert not (tmp_path / "o.h5").exists()


# ---- PXS --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def siim(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim") / "siim"
    table = write_synthetic_siim(root, count=8, seed=5, size=48, pneumothorax_fraction=0.5)
    return root, table


def _masks(root, shape):
    rles = read_rle_csv(root / RLE_CSV)
    masks = {}
    for image_id, code in zip(rles.ImageId, rles.EncodedPixels):
        masks[image_id] = masks.get(image_id, np.zeros(shape, bool)) | rle_decode(code, shape)
    return rles, masks


def test_synthetic_siim_layout_and_masks(siim):
    root, table = siim
    assert len(table) == 8 and table.pneumothorax.sum() == 4
    assert (root / RLE_CSV).read_text().splitlines()[0] == "ImageId, EncodedPixels"
    rles, masks = _masks(root, (48, 48))
    assert set(masks) == set(table.ImageId) and len(rles) == table.regions.clip(lower=1).sum()
    for index, row in enumerate(table.itertuples()):
        path = root / row.path
        assert path.parts[-4:-1] == ("dicom-images-train", row.StudyInstanceUID, row.SeriesInstanceUID)
        assert path.stem == row.ImageId and row.StudyInstanceUID.startswith("2.25.")
        image = sitk.ReadImage(str(path))
        assert image.GetSize()[:2] == (48, 48) and image.GetPixelID() == sitk.sitkUInt8
        assert (
            image.GetMetaData("0008|0060").strip() == "CR" and image.GetMetaData("0010|0020").strip() == row.PatientID
        )
        assert image.GetMetaData("0028|0004").strip() == "MONOCHROME2"
        assert image.GetMetaData("0008|0018").strip() == row.ImageId
        mask = masks[row.ImageId]
        assert mask.any() == row.pneumothorax, "a mask exactly where the phantom has a pneumothorax"
        # The decoded mask is the phantom's own pneumothorax projection, on the side the phantom put it.
        patient, _ = synthetic_siim_patient(5, index, row.pneumothorax)
        np.testing.assert_array_equal(mask, render_radiograph(patient, 48)[1].astype(bool))
        if row.pneumothorax:
            columns = np.nonzero(mask)[1].mean()
            assert (columns < 24) if row.side == "right" else (columns > 24)


def test_prepare_pxs(siim, tmp_path):
    root, table = siim
    result = prepare_pxs(root, tmp_path / "pxs.h5", PXSSettings(size=32, val_fraction=0.25, test_fraction=0.25), True)
    assert (result.status == "ok").all() and sorted(result.id) == sorted(table.ImageId)
    _, masks = _masks(root, (48, 48))
    with TaskData(tmp_path / "pxs.h5") as task:
        assert task.task == "pxs" and task.shape == (32, 32) and len(task) == 8
        ids = {split: task.ids(split) for split in ("train", "val", "test")}
        assert [len(ids[s]) for s in ids] == [4, 2, 2]
        assert ids == {s: result.id[result.split == s].tolist() for s in ids}
        for split in ids:
            targets = task.targets(split)
            assert targets.shape == (len(ids[split]), 32, 32) and set(np.unique(targets)) <= {0, 1}
            assert [t.any() for t in targets] == [masks[i].any() for i in ids[split]]
            images = task.images(split)[()].astype(np.float32)
            assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.05


def test_prepare_pxs_excludes_bad_inputs(siim, tmp_path):
    source, table = siim
    root = tmp_path / "siim"
    shutil.copytree(source, root)
    missing, malformed, unreadable, shared_a, shared_b = table.ImageId[:5]
    (root / table.path[0]).unlink()
    (root / table.path[2]).write_bytes(b"garbage")
    rows = (root / RLE_CSV).read_text().splitlines()
    rows.append(f"{malformed}, 12 3 4")
    (root / RLE_CSV).write_text("\n".join(rows) + "\n")
    # Two images of one patient must land in the same split.
    for path in table.path[3:5]:
        image = sitk.ReadImage(str(root / path))
        image.SetMetaData("0010|0020", "same-patient")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(root / path))
        writer.Execute(image)
    result = prepare_pxs(root, tmp_path / "pxs.h5", PXSSettings(size=16, val_fraction=0.3, test_fraction=0.3), True)
    by_id = result.set_index("id")
    assert by_id.status[missing] == "excluded" and f"{missing}.dcm is not under" in by_id.reason[missing]
    assert by_id.status[malformed] == "excluded" and f"line {len(rows)}" in by_id.reason[malformed]
    assert "odd number" in by_id.reason[malformed]
    assert by_id.status[unreadable] == "excluded" and "cannot read" in by_id.reason[unreadable]
    assert (result.status == "ok").sum() == 5
    assert by_id.patient[shared_a] == "same-patient" and by_id.split[shared_a] == by_id.split[shared_b]
    with TaskData(tmp_path / "pxs.h5") as task:
        written = sum((task.ids(s) for s in ("train", "val", "test")), [])
        assert sorted(written) == sorted(result.id[result.status == "ok"])


def test_prepare_pxs_header_variants_and_nothing_usable(siim, tmp_path):
    source, table = siim
    root = tmp_path / "siim"
    shutil.copytree(source, root)
    # Kaggle re-uploads drop the space after the comma; both headers are accepted.
    (root / RLE_CSV).write_text((root / RLE_CSV).read_text().replace(", ", ","))
    rles = read_rle_csv(root / RLE_CSV)
    assert list(rles.columns[:2]) == ["ImageId", "EncodedPixels"] and rles.line.iloc[0] == 2
    (root / RLE_CSV).write_text("ImageId, EncodedPixels\n1.2.3, -1\n")
    with pytest.raises(NoUsableDataError, match="no usable image"):
        prepare_pxs(root, tmp_path / "pxs.h5", PXSSettings(size=16), True)
    assert not (tmp_path / "pxs.h5").exists()


def test_pxs_splits_are_seeded_and_by_group():
    groups = pd.Series([f"p{i // 2}" for i in range(40)])
    split = assign_pxs_splits(groups, PXSSettings(val_fraction=0.15, test_fraction=0.15, seed=3))
    assert (pd.DataFrame({"g": groups, "s": split}).groupby("g").s.nunique() == 1).all()
    assert split.value_counts().to_dict() == {"train": 28, "val": 6, "test": 6}
    pd.testing.assert_series_equal(split, assign_pxs_splits(groups, PXSSettings(seed=3)))
    with pytest.raises(ValueError, match="leave some"):
        PXSSettings(val_fraction=0.5, test_fraction=0.5)
    assert PXSSettings.from_dict({"size": 64, "val_fraction": 0.1, "test_fraction": 0.2, "seed": 4}).seed == 4
    assert DXCSettings.from_dict({"size": 96}) == DXCSettings(96)


def test_a_task_without_validation_samples_fails_in_its_preparation(siim, tmp_path):
    """Fine-tuning picks its epoch on val: a task file with an empty split never reaches a fine-tuning job."""
    from semantic_genesis.tasks.prepare import prepare_task

    root, _ = siim
    settings = {"size": 32, "val_fraction": 0.0, "test_fraction": 0.25, "seed": 0}
    out = [tmp_path / "pxs.h5", tmp_path / "pxs.tsv", tmp_path / "pxs.png"]
    with pytest.raises(NoUsableDataError, match=r"task pxs: no val samples in .*pxs\.h5 .*tasks\.pxs"):
        prepare_task("pxs", {"root": root}, settings, True, *out)
    assert not out[2].exists()


def test_the_synthetic_siim_set_is_the_same_bytes_when_written_again(tmp_path):
    """No wall-clock tag: GDCM would stamp the study date and time, so two runs of one seed would differ."""
    import hashlib

    digests = []
    for name in ("a", "b"):
        write_synthetic_siim(tmp_path / name, count=2, seed=5, size=32)
        files = sorted((tmp_path / name).rglob("*.dcm"))
        digests.append([(f.name, hashlib.sha256(f.read_bytes()).hexdigest()) for f in files])
    assert len(digests[0]) == 2 and digests[0] == digests[1]
