"""The synthetic data set is written in the real formats, is read back by the real readers, and is reproducible."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from semantic_genesis.preprocess.cxr import CXR14_COLUMNS, read_chestxray14_index
from semantic_genesis.preprocess.readers import read_radiograph, read_volume
from semantic_genesis.synthetic.chest import (
    SyntheticCTSettings,
    SyntheticCXRSettings,
    synthetic_ct_scans,
    synthetic_cxr_images,
    write_chestxray14,
    write_luna16,
)
from semantic_genesis.synthetic.montage import lung_centre
from semantic_genesis.synthetic.phantom import LABELS, PhantomSettings

PHANTOM = PhantomSettings(matrix=48, slice_mm=(5.0,), thick_slice_fraction=0.0, nodules=(1, 2))
CT = SyntheticCTSettings(seed=3, patients=3, subsets=2, false_positives_per_scan=6, phantom=PHANTOM)
CXR = SyntheticCXRSettings(seed=3, patients=5, follow_ups=(1, 2), size=48, test_fraction=0.4, phantom=PHANTOM)


def digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def luna(tmp_path_factory):
    root = tmp_path_factory.mktemp("luna16")
    write_luna16(root, CT)
    return root


@pytest.fixture(scope="module")
def cxr14(tmp_path_factory):
    root = tmp_path_factory.mktemp("cxr14")
    write_chestxray14(root, CXR)
    return root


def test_luna16_layout(luna):
    scans = synthetic_ct_scans(3, 3, 2)
    assert [s for s, _ in scans] == ["subset0", "subset1", "subset0"]
    for subset, uid in scans:
        assert uid.startswith("2.25.")
        header = (luna / subset / f"{uid}.mhd").read_text()
        assert "ElementType = MET_SHORT" in header and f"ElementDataFile = {uid}.raw" in header
        image = read_volume(luna / subset / f"{uid}.mhd")
        assert image.GetPixelID() == sitk.sitkInt16
        assert image.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        spacing = image.GetSpacing()
        assert spacing[2] == 5.0 and 320 / 48 <= spacing[0] <= 400 / 48
        hu = sitk.GetArrayViewFromImage(image)
        assert hu.min() in (-2000, -3024) and hu.max() > 200
        labels = read_volume(luna / "phantom-labels" / f"{uid}.mhd")
        assert labels.GetSize() == image.GetSize() and labels.GetSpacing() == spacing


def test_annotations_point_at_nodules(luna):
    annotations = pd.read_csv(luna / "annotations.csv")
    assert list(annotations.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    assert len(annotations) >= 3
    paths = {uid: luna / s / f"{uid}.mhd" for s, uid in synthetic_ct_scans(3, 3, 2)}
    for row in annotations.itertuples():
        labels = sitk.ReadImage(str(luna / "phantom-labels" / f"{row.seriesuid}.mhd"))
        index = labels.TransformPhysicalPointToIndex((row.coordX, row.coordY, row.coordZ))
        assert labels[index] == LABELS["nodule"], "an annotation's world coordinate must land on its nodule"
        assert 3.0 <= row.diameter_mm <= 30.0
        assert row.seriesuid in paths


def test_candidates_hold_nodules_and_false_positives(luna):
    candidates = pd.read_csv(luna / "candidates_V2.csv")
    annotations = pd.read_csv(luna / "annotations.csv")
    assert list(candidates.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "class"]
    assert (candidates["class"] == 1).sum() == len(annotations)
    negatives = candidates[candidates["class"] == 0]
    assert len(negatives) == 3 * 6
    for row in negatives.itertuples():
        labels = sitk.ReadImage(str(luna / "phantom-labels" / f"{row.seriesuid}.mhd"))
        index = labels.TransformPhysicalPointToIndex((row.coordX, row.coordY, row.coordZ))
        assert labels[index] in (LABELS["vessel"], LABELS["lung_right"], LABELS["lung_left"])


def test_phantom_table(luna):
    phantoms = pd.read_csv(luna / "phantoms.tsv", sep="\t")
    assert len(phantoms) == 3 and phantoms.lung_fraction.between(0.03, 0.5).all()
    assert set(phantoms.subset) == {"subset0", "subset1"}


def test_chestxray14_layout(cxr14):
    header = (cxr14 / "Data_Entry_2017.csv").read_text().splitlines()[0]
    assert header == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    )
    entries = pd.read_csv(cxr14 / "Data_Entry_2017.csv")
    assert list(entries.columns[:11]) == CXR14_COLUMNS[:11]
    assert len(entries) == len(synthetic_cxr_images(CXR))
    assert entries["Image Index"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    index = read_chestxray14_index(cxr14)
    assert (index.official != "").all()
    per_patient = index.groupby("patient").official.nunique()
    assert (per_patient == 1).all(), "the official lists split by patient"
    assert len(set(index.patient[index.official == "test"])) == 2
    image = read_radiograph(cxr14 / "images" / entries["Image Index"][0])
    assert image.shape == (48, 48) and 0 <= image.min() and image.max() <= 1


def test_same_seed_same_bytes(luna, cxr14, tmp_path):
    write_luna16(tmp_path / "luna", CT, workers=2)
    write_chestxray14(tmp_path / "cxr", CXR, workers=2)
    assert digest(tmp_path / "luna") == digest(luna)
    assert digest(tmp_path / "cxr") == digest(cxr14)


def test_montage_planes_cut_through_the_lungs(luna):
    subset, uid = synthetic_ct_scans(3, 3, 2)[0]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(luna / "phantom-labels" / f"{uid}.mhd")))
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(luna / subset / f"{uid}.mhd")))
    z, y, x = lung_centre(hu)
    lung = np.isin(labels, [LABELS["lung_right"], LABELS["lung_left"]])
    assert lung[z].mean() > 0.1 and lung[:, y].mean() > 0.1 and lung[:, :, x].mean() > 0.05
