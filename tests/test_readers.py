"""Every kind of bad input becomes an InputError naming the file and the problem; good files read correctly."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import chest_like, write_png, write_volume

from semantic_genesis.preprocess.readers import InputError, data_files, one_line, read_radiograph, read_volume, scan_id


def test_reads_metaimage_volume(tmp_path):
    array = chest_like()
    path = write_volume(tmp_path / "a.mhd", array)
    image = read_volume(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    assert image.GetSpacing() == pytest.approx((0.8, 0.8, 2.5))


@pytest.mark.parametrize("name", ["scan.nrrd", "scan.nii.gz", "scan.mha"])
def test_reads_other_formats(tmp_path, name):
    array = chest_like()
    image = read_volume(write_volume(tmp_path / name, array))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    assert scan_id(tmp_path / name) == "scan"


def test_truncated_raw_is_named(tmp_path):
    path = write_volume(tmp_path / "a.mhd", chest_like())
    raw = tmp_path / "a.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(InputError, match=r"a\.mhd: data file a\.raw is truncated: 1000 bytes, expected 184320") as e:
        read_volume(path)
    assert e.value.path.endswith("a.mhd")


def test_missing_raw_is_named(tmp_path):
    path = write_volume(tmp_path / "a.mhd", chest_like())
    (tmp_path / "a.raw").unlink()
    with pytest.raises(InputError, match=r"a\.mhd: its data file a\.raw is missing"):
        read_volume(path)


def point_header(header: Path, data_file: str) -> Path:
    """Rewrite an .mhd header's ElementDataFile line (a data file kept elsewhere, a LIST, a pattern)."""
    lines = [line for line in header.read_text().splitlines() if not line.startswith("ElementDataFile")]
    header.write_text("\n".join([*lines, f"ElementDataFile = {data_file}"]) + "\n")
    return header


def test_data_files_are_found_wherever_the_header_points(tmp_path):
    array = chest_like()
    write_volume(tmp_path / "raw" / "a.mhd", array)
    header = point_header((tmp_path / "raw" / "a.mhd").rename(tmp_path / "a.mhd"), "raw/a.raw")
    assert data_files(header) == [tmp_path / "raw" / "a.raw"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(header)), array)
    assert data_files(write_volume(tmp_path / "b.mhd", array)) == [tmp_path / "b.raw"]
    assert data_files(write_volume(tmp_path / "c.nrrd", array)) == []
    assert data_files(point_header(tmp_path / "b.mhd", "LOCAL")) == []
    assert data_files(point_header(tmp_path / "b.mhd", "slice%02d.raw 1 5 2")) == [
        tmp_path / f"slice0{i}.raw" for i in (1, 3, 5)
    ]
    nhdr = tmp_path / "d.nhdr"
    nhdr.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 48 48 40\nencoding: raw\ndata file: d.raw\n")
    assert data_files(nhdr) == [tmp_path / "d.raw"]


def test_a_list_of_slice_files_is_read_and_a_missing_slice_named(tmp_path):
    array = chest_like((4, 48, 48))
    for z in range(4):
        write_volume(tmp_path / f"s{z}.mhd", array[z : z + 1])
    header = write_volume(tmp_path / "v.mhd", array)
    text = header.read_text().replace("ElementDataFile = v.raw", "ElementDataFile = LIST")
    header.write_text(text + "".join(f"s{z}.raw\n" for z in range(4)))
    assert data_files(header) == [tmp_path / f"s{z}.raw" for z in range(4)]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_volume(header)), array)
    (tmp_path / "s2.raw").unlink()
    with pytest.raises(InputError, match=r"v\.mhd: its data file s2\.raw is missing \(1 of the 4 it lists\)"):
        read_volume(header)


def test_missing_and_empty_and_garbage_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "nothing.nrrd")
    (tmp_path / "empty.nrrd").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_volume(tmp_path / "empty.nrrd")
    (tmp_path / "garbage.nii.gz").write_bytes(b"not a nifti file at all" * 10)
    with pytest.raises(InputError, match=r"garbage\.nii\.gz: SimpleITK cannot read it"):
        read_volume(tmp_path / "garbage.nii.gz")


def test_2d_image_where_volume_expected(tmp_path):
    path = write_png(tmp_path / "slice.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(InputError, match=r"slice\.png: is a 2D image of size 32x32; a 3D volume is expected"):
        read_volume(path)
    single = write_volume(tmp_path / "single.nrrd", chest_like((1, 16, 16)))
    with pytest.raises(InputError, match="2D image of size 16x16x1"):
        read_volume(single)


def test_vector_volume_is_rejected(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((8, 8, 8, 3), np.float32), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="3 components per voxel"):
        read_volume(tmp_path / "rgb.nrrd")


def test_nan_and_inf_voxels_are_counted(tmp_path):
    array = chest_like().astype(np.float32)
    array[3, 4, 5] = np.nan
    array[6, 7, 8] = np.inf
    with pytest.raises(InputError, match="2 voxels are NaN or infinite"):
        read_volume(write_volume(tmp_path / "nan.nrrd", array))


def test_real_chest_ct(real_ct):
    image = read_volume(real_ct)
    assert image.GetSize() == (128, 128, 34)
    hu = sitk.GetArrayViewFromImage(image)
    assert hu.min() == -3024 and hu.max() > 500


def test_png_radiograph_is_scaled_by_255(tmp_path):
    array = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = read_radiograph(write_png(tmp_path / "x.png", array))
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, array / 255.0, atol=1e-7)


def test_a_16_bit_png_reads_as_its_8_bit_copy(tmp_path):
    # One intensity rule for every bit depth: by the depth the file declares, never stretched by its content.
    array = np.clip(np.random.default_rng(0).normal(120, 40, (32, 32)), 0, 255).astype(np.uint8)
    eight = read_radiograph(write_png(tmp_path / "8.png", array))
    sixteen = read_radiograph(write_png(tmp_path / "16.png", array.astype(np.uint16) * 257))
    np.testing.assert_allclose(sixteen, eight, atol=1e-7)
    dim = read_radiograph(write_png(tmp_path / "dim.png", (array.astype(np.uint16) * 16)))  # a 12-bit range
    np.testing.assert_allclose(dim, array.astype(np.uint16) * 16 / 65535, atol=1e-7)


def test_rgba_png_keeps_luminance(tmp_path):
    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
    image = read_radiograph(write_png(tmp_path / "rgba.png", rgba))
    np.testing.assert_allclose(image, grey / 255.0, atol=1e-3)


def test_corrupt_png_is_named(tmp_path):
    path = write_png(tmp_path / "bad.png", np.zeros((64, 64), np.uint8))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InputError, match=r"bad\.png: SimpleITK cannot read it"):
        read_radiograph(path)


def test_volume_where_radiograph_expected(tmp_path):
    with pytest.raises(InputError, match="a 2D radiograph is expected"):
        read_radiograph(write_volume(tmp_path / "v.nrrd", chest_like()))


def test_flat_image_has_no_contrast(tmp_path):
    path = write_volume(tmp_path / "flat.nrrd", np.full((1, 32, 32), 700, np.uint16))
    with pytest.raises(InputError, match="no contrast"):
        read_radiograph(path)


def test_dicom_is_scaled_by_its_bits_stored(real_cr):
    # 15 bits stored in 16 allocated: the same rule as a PNG's depth, 2^15 - 1 is white, the content sets nothing.
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(real_cr)))[0]
    np.testing.assert_allclose(read_radiograph(real_cr), raw / 32767.0, atol=1e-7)


def test_monochrome1_radiograph_has_dark_lungs(real_cr):
    """MONOCHROME1 stores air bright; after reading, lungs must be darker than the mediastinum, as in ChestX-ray14."""
    image = read_radiograph(real_cr)
    assert image.shape == (1955, 1841)
    assert 0.0 <= image.min() and image.max() <= 1.0
    h, w = image.shape
    rows = slice(int(0.3 * h), int(0.6 * h))
    right_lung = image[rows, int(0.2 * w) : int(0.35 * w)].mean()
    left_lung = image[rows, int(0.65 * w) : int(0.8 * w)].mean()
    mediastinum = image[rows, int(0.47 * w) : int(0.53 * w)].mean()
    assert right_lung < mediastinum - 0.1 and left_lung < mediastinum - 0.1


def test_a_reason_is_one_line_cut_at_a_word(tmp_path):
    # ITK's messages span lines and name its source files; a manifest row must stay one row.
    path = write_volume(tmp_path / "zero.mhd", chest_like((30, 32, 32)), spacing=(1.0, 1.0, 1.0))
    path.write_text(path.read_text().replace("ElementSpacing = 1 1 1", "ElementSpacing = 0 0 0"))
    with pytest.raises(InputError) as error:
        read_volume(path)
    problem = error.value.problem
    assert "\n" not in problem and problem.startswith("SimpleITK cannot read it (Zero-valued spacing is not supported")
    assert one_line("a  b\n c") == "a b c"
    long = one_line("word " * 100, limit=42)
    assert long == " ".join(["word"] * 8) + " …" and len(long) <= 42
