"""Read CT volumes and radiographs with SimpleITK, turning every kind of bad file into a clear InputError."""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

VOLUME_SUFFIXES = (".mhd", ".mha", ".nrrd", ".nhdr", ".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".dcm", ".jpg", ".jpeg")

_MET_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 8,
    "MET_ULONG": 8,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


class InputError(Exception):
    """A scan or image that cannot be used; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str):
        problem = one_line(problem)
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def one_line(text: str, limit: int = 300) -> str:
    """A message on one line (a manifest's reason column, a log line): whitespace runs collapsed, and a long text
    shortened at a word boundary with an ellipsis."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit - 1)
    return text[: cut if cut > 0 else limit - 2].rstrip(" ,;:") + " …"


class NoUsableDataError(RuntimeError):
    """Every input was excluded: nothing downstream could run."""


def scan_id(path: Path | str) -> str:
    """The scan's id: its file name without the (possibly double) extension, e.g. the LUNA16 seriesuid."""
    name = Path(path).name
    for suffix in (*VOLUME_SUFFIXES, *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _metaimage_header(path: Path) -> dict[str, str]:
    """Key/value pairs of a MetaImage (.mhd) header."""
    header = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            header[key.strip()] = value.strip()
    return header


def _metaimage_data_files(path: Path) -> list[Path]:
    """The files an .mhd header's ElementDataFile names: one file, a LIST of the lines after it, or a printf
    pattern with its first/last/step numbers; none for LOCAL (data inside the header)."""
    lines = path.read_text(errors="replace").splitlines()
    for number, line in enumerate(lines):
        key, sep, value = line.partition("=")
        if sep and key.strip() == "ElementDataFile":
            value = value.strip()
            if value == "LOCAL" or not value:
                return []
            if value.split()[0] == "LIST":
                return [path.parent / name.strip() for name in lines[number + 1 :] if name.strip()]
            if "%" in value:
                pattern, *numbers = value.split()
                try:
                    first, last, step = ([int(n) for n in numbers] + [1])[:3]
                    return [path.parent / (pattern % i) for i in range(first, last + 1, step)]
                except (ValueError, TypeError):  # a malformed pattern: SimpleITK's read names the problem
                    return []
            return [path.parent / value]
    return []


def _nrrd_data_files(path: Path) -> list[Path]:
    """The files a detached NRRD header (.nhdr) names in its data file field (one file or a LIST)."""
    lines = path.read_bytes().split(b"\n\n", 1)[0].decode(errors="replace").splitlines()
    for number, line in enumerate(lines):
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("data file", "datafile"):
            value = value.strip()
            if value.split()[0] == "LIST":
                return [path.parent / name.strip() for name in lines[number + 1 :] if name.strip()]
            return [path.parent / value.split()[0]] if "%" not in value else []
    return []


def data_files(path: Path | str) -> list[Path]:
    """Files other than the header that a volume's data lives in (.mhd's .raw, wherever its header points, or a
    .nhdr's data file), so that the workflow can declare them as inputs and rerun when one changes."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".mhd"):
        return _metaimage_data_files(path)
    if name.endswith(".nhdr"):
        return _nrrd_data_files(path)
    return []


def check_metaimage_data(path: Path) -> None:
    """Raise InputError if an .mhd header's raw data file is missing or shorter/longer than the header says."""
    header = _metaimage_header(path)
    files = _metaimage_data_files(path)
    if missing := [f for f in files if not f.exists()]:
        name = missing[0].name if missing[0].parent == path.parent else missing[0]
        count = f" ({len(missing)} of the {len(files)} it lists)" if len(files) > 1 else ""
        raise InputError(path, f"its data file {name} is missing{count}")
    compressed = header.get("CompressedData", "False").lower() == "true"
    if len(files) != 1 or compressed or header.get("HeaderSize", "0") != "0":
        return
    raw = files[0]
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        item = _MET_BYTES[header["ElementType"]] * int(header.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        raise InputError(path, "header lacks a valid DimSize or ElementType") from None
    expected = int(np.prod(dims)) * item
    actual = raw.stat().st_size
    if actual != expected:
        what = "truncated" if actual < expected else "larger than its header says"
        raise InputError(
            path,
            f"data file {raw.name} is {what}: {actual} bytes, expected {expected} "
            f"for DimSize {dims} {header['ElementType']}",
        )


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Header + voxel bytes a single-file NIfTI-1/-2 must hold, or None if the header is not one (let ITK judge)."""
    for order in "<>":
        if len(header) >= 348 and np.frombuffer(header[:4], f"{order}i4")[0] == 348 and header[344:347] == b"n+1":
            dims = np.frombuffer(header[40:56], f"{order}i2").astype(np.int64)
            bitpix = int(np.frombuffer(header[72:74], f"{order}i2")[0])
            offset = int(np.frombuffer(header[108:112], f"{order}f4")[0])
        elif len(header) >= 540 and np.frombuffer(header[:4], f"{order}i4")[0] == 540 and header[4:7] == b"n+2":
            dims = np.frombuffer(header[16:80], f"{order}i8")
            bitpix = int(np.frombuffer(header[14:16], f"{order}i2")[0])
            offset = int(np.frombuffer(header[168:176], f"{order}i8")[0])
        else:
            continue
        ndim = int(dims[0])
        if not 1 <= ndim <= 7 or (dims[1 : ndim + 1] < 1).any():
            return None
        return offset + int(np.prod(dims[1 : ndim + 1])) * bitpix // 8
    return None


def check_nifti_data(path: Path) -> None:
    """Raise InputError if a .nii / .nii.gz file holds less voxel data than its header says.

    SimpleITK reads a truncated NIfTI without complaint and fills the missing voxels with zeros. The gzip trailer
    stores the uncompressed size, so a complete .nii.gz is recognised from its header and last 4 bytes; only when they
    disagree (truncation, or a multi-member stream) is the whole stream decompressed to be sure.
    """
    compressed = path.name.lower().endswith(".gz")
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as stream:
            header = stream.read(540)
    except gzip.BadGzipFile:
        return  # not gzip at all: SimpleITK names the problem
    except (OSError, EOFError, zlib.error) as error:
        raise InputError(
            path, f"is a damaged gzip stream ({error})" if compressed else f"is unreadable ({error})"
        ) from None
    expected = _nifti_expected_bytes(header)
    if expected is None:
        return
    if not compressed:
        actual = path.stat().st_size
    else:
        with open(path, "rb") as stream:
            stream.seek(-4, 2)
            if struct.unpack("<I", stream.read(4))[0] == expected % 2**32:
                return
        actual = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 24):
                    actual += len(chunk)
        except (OSError, EOFError, zlib.error):
            raise InputError(path, f"is truncated: its gzip stream ends early ({actual} bytes decompressed)") from None
    if actual < expected:
        raise InputError(path, f"is truncated: {actual} bytes of header and data, its header needs {expected}")


def _read(path: Path) -> sitk.Image:
    if not path.exists():
        raise InputError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        text = str(error)
        if "ITK ERROR:" in text:  # what ITK says, without the source location and object address before it
            detail = re.sub(r"^\s*\w+\(0x[0-9a-fA-F]+\):\s*", "", text.split("ITK ERROR:", 1)[1])
        else:
            detail = next((ln for ln in text.splitlines() if "rror" in ln or "annot" in ln), text)
        raise InputError(path, f"SimpleITK cannot read it ({one_line(detail, 200)})") from None


def _check_finite(path: Path, array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InputError(path, f"{bad} voxels are NaN or infinite")


def read_volume(path: Path | str) -> sitk.Image:
    """Read a scalar 3D volume; raise InputError for missing/truncated data, 2D or vector images and NaN/inf voxels."""
    path = Path(path)
    if path.name.lower().endswith(".mhd") and path.exists():
        check_metaimage_data(path)
    if path.name.lower().endswith((".nii", ".nii.gz")) and path.exists() and path.stat().st_size:
        check_nifti_data(path)
    image = _read(path)
    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar CT volume is expected"
        )
    if image.GetDimension() == 2 or (image.GetDimension() == 3 and min(size) == 1):
        raise InputError(path, f"is a 2D image of size {'x'.join(map(str, size))}; a 3D volume is expected")
    if image.GetDimension() != 3:
        raise InputError(path, f"has {image.GetDimension()} dimensions; a 3D volume is expected")
    _check_finite(path, sitk.GetArrayViewFromImage(image))
    return image


def _declared_bits(stored: str, dtype: np.dtype) -> int:
    """Bits a file declares for its pixel values: DICOM's Bits Stored where given, else its pixel type's."""
    bits = 8 * dtype.itemsize
    return int(stored) if stored.isdigit() and 0 < int(stored) <= bits else bits


def read_radiograph(path: Path | str) -> np.ndarray:
    """Read a 2D radiograph as float32 in [0, 1], displayed convention (air dark, bone bright).

    One rule for every bit depth, as ChestX-ray14's PNGs were made: an unsigned integer image is divided by the
    largest value the bits its file declares can hold (255 for an 8-bit PNG, 65535 for 16; 2^BitsStored - 1 for
    DICOM, e.g. 32767 for 15 bits stored), so one radiograph saved at any depth reads the same and its content never
    sets its contrast. Signed or float images, which declare no such range, are stretched between their 0.5th and
    99.5th percentiles. SimpleITK already inverts MONOCHROME1 DICOM, so no extra inversion is applied.
    """
    path = Path(path)
    image = _read(path)
    # DICOM's Bits Stored, read before slicing drops the metadata
    stored_bits = image.GetMetaData("0028|0101").strip() if image.HasMetaDataKey("0028|0101") else ""
    if image.GetDimension() == 3:
        if image.GetSize()[2] != 1:
            raise InputError(
                path, f"is a 3D volume of size {'x'.join(map(str, image.GetSize()))}; a 2D radiograph is expected"
            )
        image = image[:, :, 0]
    array = sitk.GetArrayFromImage(image)
    full_scale = None if array.dtype.kind != "u" else float(2 ** _declared_bits(stored_bits, array.dtype) - 1)
    if array.ndim == 3:  # colour or grey+alpha PNGs exist in ChestX-ray14: keep luminance, drop alpha
        channels = array.shape[-1]
        array = array[..., 0] if channels <= 2 else array[..., :3] @ np.array([0.299, 0.587, 0.114])
    _check_finite(path, array)
    if array.max() == array.min():  # a uniform image is no radiograph, at any depth
        raise InputError(path, f"has no contrast (every pixel is {array.flat[0]:g})")
    if full_scale is not None:  # a value above the declared bits (a malformed file) saturates
        return np.clip(array.astype(np.float32) / full_scale, 0.0, 1.0)
    array = array.astype(np.float32)
    lo, hi = np.percentile(array, [0.5, 99.5])
    if hi <= lo:
        raise InputError(path, f"has no contrast (all values near {lo:g})")
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0)
