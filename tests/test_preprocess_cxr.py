"""2D preprocessing: ChestX-ray14 index, patient-level splits, HDF5 storage, bad images, a real DICOM."""

import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import DATA, write_png

from semantic_genesis.preprocess.cxr import (
    CXR14_COLUMNS,
    CXRSettings,
    PreprocessedCXR,
    assign_splits,
    join_shards,
    preprocess_chestxray14,
    preprocess_shard,
    read_chestxray14_index,
)
from semantic_genesis.preprocess.readers import InputError, NoUsableDataError


def make_cxr14(root, patients=10, per_patient=2, size=64, test_patients=(1, 2)):
    """A ChestX-ray14-layout folder with images whose value (+ 64 in their lower half) encodes their row number."""
    rows, train_val, test = [], [], []
    for p in range(1, patients + 1):
        for f in range(per_patient):
            name = f"{p:08d}_{f:03d}.png"
            value = (10 * len(rows)) % 190
            step = 64 * np.repeat((np.arange(size) >= size // 2)[:, None], size, axis=1)  # contrast, as radiographs
            write_png(root / "images" / name, (value + step).astype(np.uint8))
            rows.append(
                [name, "No Finding" if p % 3 else "Nodule|Effusion", f, p, 40, "F", "PA", size, size, 0.143, 0.143, ""]
            )
            (test if p in test_patients else train_val).append(name)
    pd.DataFrame(rows, columns=CXR14_COLUMNS).to_csv(root / "Data_Entry_2017.csv", index=False)
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return rows


def test_index_and_patient_level_splits(tmp_path):
    make_cxr14(tmp_path, patients=30)
    index = read_chestxray14_index(tmp_path)
    assert len(index) == 60 and set(index.official) == {"train_val", "test"}
    split = assign_splits(index, val_fraction=0.2, seed=0)
    assert (split[index.official == "test"] == "test").all()
    per_patient = pd.DataFrame({"patient": index.patient, "split": split}).groupby("patient").split.nunique()
    assert (per_patient == 1).all(), "a patient must never be in two splits"
    assert (split == "val").sum() == 2 * round(0.2 * 28)
    pd.testing.assert_series_equal(split, assign_splits(index, 0.2, seed=0))


def test_preprocess_stores_images_and_records_bad_ones(tmp_path):
    rows = make_cxr14(tmp_path / "cxr", patients=4)
    bad = tmp_path / "cxr" / "images" / rows[1][0]
    bad.write_bytes(bad.read_bytes()[:30])
    (tmp_path / "cxr" / "images" / rows[2][0]).unlink()
    settings = CXRSettings(size=32, val_fraction=0.0)
    manifest = preprocess_chestxray14(tmp_path / "cxr", settings, tmp_path / "out.h5", tmp_path / "out.tsv")
    assert manifest.status.tolist() == ["ok", "excluded", "excluded"] + ["ok"] * 5
    assert "cannot read" in manifest.reason[1] and "does not exist" in manifest.reason[2]
    ok = manifest[manifest.status == "ok"]
    assert ok["index"].tolist() == list(range(6))
    with PreprocessedCXR(tmp_path / "out.h5") as store:
        assert len(store) == 6 and store.ids == ok.id.tolist()
        for (_, row), position in zip(ok.iterrows(), range(6)):
            image = store.image(position)
            assert image.shape == (32, 32) and image.dtype == np.float32
            original = rows[[r[0] for r in rows].index(row.id)]
            value = (10 * [r[0] for r in rows].index(original[0])) % 190
            np.testing.assert_allclose(image[:12], value / 255.0, atol=1 / 255)  # away from the step's ringing
            np.testing.assert_allclose(image[20:], (value + 64) / 255.0, atol=1 / 255)
    with h5py.File(tmp_path / "out.h5") as h5, h5py.File(tmp_path / "shard-0.h5") as shard:
        assert h5["images"].is_virtual and h5["images"].dtype == np.uint8
        assert shard["images"].chunks == (1, 32, 32)


def test_shards_join_into_the_same_data_set(tmp_path):
    rows = make_cxr14(tmp_path / "cxr", patients=5)
    bad = tmp_path / "cxr" / "images" / rows[3][0]
    bad.write_bytes(bad.read_bytes()[:30])
    settings = CXRSettings(size=16, val_fraction=0.25)
    whole = preprocess_chestxray14(
        tmp_path / "cxr", settings, tmp_path / "one" / "images.h5", tmp_path / "one" / "m.tsv"
    )
    parts = tmp_path / "three" / "shards"
    for k in range(3):
        preprocess_shard(tmp_path / "cxr", settings, parts / f"{k}.h5", parts / f"{k}.tsv", k, 3)
    h5s, tsvs = [parts / f"{k}.h5" for k in range(3)], [parts / f"{k}.tsv" for k in range(3)]
    joined = join_shards(h5s, tsvs, tmp_path / "cxr", tmp_path / "three" / "images.h5", tmp_path / "three" / "m.tsv")
    pd.testing.assert_frame_equal(
        joined.sort_values("id").reset_index(drop=True), whole.sort_values("id").reset_index(drop=True)
    )
    with PreprocessedCXR(tmp_path / "one" / "images.h5") as a, PreprocessedCXR(tmp_path / "three" / "images.h5") as b:
        assert a.ids == b.ids and len(b) == len(rows) - 1
        for i in range(len(a)):
            np.testing.assert_array_equal(a.image(i), b.image(i))
    # The results folder moves as a whole: the virtual data set finds its shards relative to itself.
    (tmp_path / "three").rename(tmp_path / "moved")
    with PreprocessedCXR(tmp_path / "moved" / "images.h5") as moved:
        np.testing.assert_array_equal(moved.image(len(moved) - 1), whole_image(tmp_path / "one" / "images.h5", -1))
    (tmp_path / "moved" / "shards" / "1.h5").unlink()
    with pytest.raises(FileNotFoundError, match="shards/1.h5 is missing"):
        PreprocessedCXR(tmp_path / "moved" / "images.h5")


def whole_image(path, index):
    with PreprocessedCXR(path) as store:
        return store.image(len(store) + index if index < 0 else index)


def test_strict_mode_stops_and_leaves_nothing(tmp_path):
    rows = make_cxr14(tmp_path / "cxr", patients=2)
    (tmp_path / "cxr" / "images" / rows[0][0]).write_bytes(b"broken")
    with pytest.raises(InputError, match="strict"):
        preprocess_chestxray14(
            tmp_path / "cxr", CXRSettings(size=16), tmp_path / "o.h5", tmp_path / "o.tsv", strict=True
        )
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.tsv").exists()


def test_no_usable_image_fails(tmp_path):
    rows = make_cxr14(tmp_path / "cxr", patients=1, per_patient=1, test_patients=())
    (tmp_path / "cxr" / "images" / rows[0][0]).unlink()
    with pytest.raises(NoUsableDataError, match="no usable radiograph"):
        preprocess_chestxray14(tmp_path / "cxr", CXRSettings(size=16), tmp_path / "o.h5", tmp_path / "o.tsv")
    assert not (tmp_path / "o.h5").exists()


def test_real_monochrome1_dicom_comes_out_with_dark_lungs(tmp_path):
    """A real CR in DICOM, listed in a ChestX-ray14-style index, is stored with ChestX-ray14's polarity."""
    root = tmp_path / "cxr"
    (root / "images").mkdir(parents=True)
    shutil.copy(DATA / "RG1_UNCR.dcm", root / "images" / "RG1_UNCR.dcm")
    pd.DataFrame(
        [["RG1_UNCR.dcm", "No Finding", 0, 1, 50, "M", "PA", 1841, 1955, 0.2, 0.2, ""]], columns=CXR14_COLUMNS
    ).to_csv(root / "Data_Entry_2017.csv", index=False)
    (root / "train_val_list.txt").write_text("RG1_UNCR.dcm\n")
    (root / "test_list.txt").write_text("")
    manifest = preprocess_chestxray14(
        root, CXRSettings(size=128, val_fraction=0.0), tmp_path / "o.h5", tmp_path / "o.tsv"
    )
    assert manifest.loc[0, ["status", "width", "height"]].tolist() == ["ok", 1841, 1955]
    with PreprocessedCXR(tmp_path / "o.h5") as store:
        image = store.image(0)
    rows = slice(38, 77)
    lungs = (image[rows, 26:45].mean() + image[rows, 83:102].mean()) / 2
    mediastinum = image[rows, 60:68].mean()
    assert lungs < mediastinum - 0.1


def test_listed_names_may_hold_spaces(tmp_path):
    make_cxr14(tmp_path, patients=4, test_patients=(1,))
    write_png(tmp_path / "images" / "scan 01.png", np.eye(64, dtype=np.uint8) * 90)
    entries = pd.read_csv(tmp_path / "Data_Entry_2017.csv")
    entries.loc[len(entries)] = ["scan 01.png", "No Finding", 0, 9, 40, "F", "PA", 64, 64, 0.143, 0.143, None]
    entries.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    with open(tmp_path / "train_val_list.txt", "a") as handle:
        handle.write("scan 01.png\n")
    index = read_chestxray14_index(tmp_path).set_index("id")
    assert index.loc["scan 01.png", "official"] == "train_val"


def test_radiographs_using_a_sliver_of_their_bit_depth_are_excluded_with_the_numbers(tmp_path):
    """12-bit data saved as 16-bit PNG reads nearly black by the declared-bits rule: it is named, not trained on."""
    rows = make_cxr14(tmp_path / "cxr", patients=3, per_patient=1, test_patients=())
    twelve_bit = np.clip(np.random.default_rng(0).normal(2000, 600, (64, 64)), 0, 4095).astype(np.uint16)
    write_png(tmp_path / "cxr" / "images" / rows[0][0], twelve_bit)
    write_png(tmp_path / "cxr" / "images" / rows[1][0], np.where(np.eye(64) > 0, 200, 0).astype(np.uint8))
    manifest = preprocess_chestxray14(
        tmp_path / "cxr", CXRSettings(size=16, val_fraction=0.0), tmp_path / "o.h5", tmp_path / "o.tsv"
    )
    assert manifest.status.tolist() == ["excluded", "excluded", "ok"]
    assert "span only 4.6% of the range its bit depth declares" in manifest.reason[0]
    assert "12-bit data in a 16-bit PNG" in manifest.reason[0] and "check_plausible: false" in manifest.reason[0]
    assert "98% of its pixels are at the darkest or brightest value" in manifest.reason[1]
    accepted = preprocess_chestxray14(
        tmp_path / "cxr",
        CXRSettings(size=16, val_fraction=0.0, check_plausible=False),
        tmp_path / "a.h5",
        tmp_path / "a.tsv",
    )
    assert accepted.status.tolist() == ["ok"] * 3
    with PreprocessedCXR(tmp_path / "a.h5") as store:
        assert store.image(0).max() < 4096 / 65535 + 1 / 255, "accepted as declared, not stretched"


def test_the_real_radiograph_is_plausible(real_cr):
    from semantic_genesis.preprocess.cxr import implausible_radiograph
    from semantic_genesis.preprocess.readers import read_radiograph

    assert implausible_radiograph(read_radiograph(real_cr)) is None


def test_an_empty_training_list_fails_in_preprocessing(tmp_path):
    make_cxr14(tmp_path / "cxr", patients=3, per_patient=1, test_patients=(1,))
    (tmp_path / "cxr" / "train_val_list.txt").write_text("")
    with pytest.raises(NoUsableDataError, match=r"train_val_list\.txt: none of the 0 radiographs it lists is usable"):
        preprocess_chestxray14(tmp_path / "cxr", CXRSettings(size=16), tmp_path / "o.h5", tmp_path / "o.tsv")
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.tsv").exists()
