"""PXS, pneumothorax segmentation in the SIIM-ACR 2019 format: DICOM radiographs and run-length-encoded masks, IoU.

On disk: `<root>/dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm` (found recursively, the
ImageId being the file stem) and `<root>/train-rle.csv` with columns `ImageId, EncodedPixels` (the official header
has a space after the comma). EncodedPixels is "-1" for no pneumothorax; an image with several regions has one row
per region. The encoding runs over the mask flattened column by column (Fortran order) as (start, length) pairs,
each start counted from the end of the previous run (the first from pixel 0).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from ..preprocess.readers import InputError, NoUsableDataError, read_radiograph
from ..resize import area_or_bilinear, nearest_on_centres
from ..runtime.parallel import ordered_map
from ..settings import Settings
from .taskdata import SPLITS, TaskWriter

log = logging.getLogger(__name__)

RLE_CSV = "train-rle.csv"
DICOM_DIR = "dicom-images-train"
NO_MASK = "-1"


# ---- run-length encoding ---------------------------------------------------------------------------------------
def rle_encode(mask: np.ndarray) -> str:
    """SIIM run-length string of a 2D mask (column-major, relative starts); "-1" when the mask is empty."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a 2D mask is expected, got shape {mask.shape}")
    flat = np.concatenate([[False], mask.astype(bool).ravel(order="F"), [False]])
    edges = np.diff(flat.astype(np.int8))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if not len(starts):
        return NO_MASK
    gaps = starts - np.concatenate([[0], ends[:-1]])
    return " ".join(map(str, np.column_stack([gaps, ends - starts]).ravel().tolist()))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the given (rows, columns) shape from a SIIM run-length string; ValueError if malformed."""
    text = str(rle).strip()
    if text == NO_MASK:
        return np.zeros(shape, bool)
    if not text:
        raise ValueError("empty run-length string (use -1 for no mask)")
    try:
        values = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        raise ValueError(f"run-length string holds non-integers: {text[:60]!r}") from None
    if len(values) % 2:
        raise ValueError(f"run-length string has an odd number ({len(values)}) of values")
    gaps, lengths = values[0::2], values[1::2]
    if (gaps < 0).any() or (lengths < 1).any():
        raise ValueError("run-length string has a negative start offset or a run shorter than 1 pixel")
    starts = np.cumsum(gaps) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ends = starts + lengths
    size = int(np.prod(shape))
    if ends[-1] > size:
        raise ValueError(f"runs reach pixel {int(ends[-1])}, beyond the {shape[0]}x{shape[1]} image ({size} pixels)")
    # Starts and ends are each strictly increasing, so the two scatters below never hit an index twice.
    delta = np.zeros(size + 1, np.int32)
    delta[starts] += 1
    delta[ends] -= 1
    return (np.cumsum(delta[:-1]) > 0).reshape(shape, order="F")


# ---- settings -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PXSSettings(Settings):
    """Task image size, the shares of patients held out for validation and test, and the split seed."""

    size: int = 224
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"size must be positive, not {self.size}")
        if min(self.val_fraction, self.test_fraction) < 0 or self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction and test_fraction must be >= 0 and leave some patients for training")


# ---- task preparation ---------------------------------------------------------------------------------------------
def read_rle_csv(path: Path | str) -> pd.DataFrame:
    """ImageId, EncodedPixels and the file line of every row of a SIIM train-rle.csv (header spaces tolerated)."""
    frame = pd.read_csv(path, dtype=str, skipinitialspace=True, keep_default_na=False)
    frame.columns = frame.columns.str.strip()
    missing = {"ImageId", "EncodedPixels"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}; found {list(frame.columns)}")
    return pd.DataFrame(
        {
            "ImageId": frame.ImageId.str.strip(),
            "EncodedPixels": frame.EncodedPixels.str.strip(),
            "line": np.arange(len(frame)) + 2,  # the header is line 1
        }
    )


def find_dicoms(root: Path | str) -> dict[str, Path]:
    """ImageId (file stem) -> path of every .dcm under <root>/dicom-images-train, or under root if that is absent."""
    root = Path(root)
    folder = root / DICOM_DIR if (root / DICOM_DIR).is_dir() else root
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.dcm")):
        if path.name.startswith("."):  # a writer's unfinished temporary file
            continue
        if path.stem in found:
            log.warning("%s: ImageId %s also at %s; using the first", path, path.stem, found[path.stem])
            continue
        found[path.stem] = path
    return found


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(rows, columns) and PatientID ("" if absent) from a DICOM header; raise InputError if unreadable."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(path, "SimpleITK cannot read its header") from None
    size = reader.GetSize()
    patient = reader.GetMetaData("0010|0020").strip() if reader.HasMetaDataKey("0010|0020") else ""
    return (int(size[1]), int(size[0])), patient


def _decode_rows(rows: pd.DataFrame, shape: tuple[int, int]) -> np.ndarray:
    """Union of an image's RLE rows; ValueError naming the CSV line of the first malformed one."""
    mask = np.zeros(shape, bool)
    for rle, line in zip(rows.EncodedPixels, rows.line):
        try:
            mask |= rle_decode(rle, shape)
        except ValueError as error:
            raise ValueError(f"{RLE_CSV} line {line}: {error}") from None
    return mask


def assign_pxs_splits(groups: pd.Series, settings: PXSSettings) -> pd.Series:
    """train/val/test per row from a seeded shuffle of the distinct groups (patients), so a group never straddles."""
    units = np.sort(groups.unique())
    order = np.random.default_rng(settings.seed).permutation(len(units))
    n_test = int(round(settings.test_fraction * len(units)))
    n_val = int(round(settings.val_fraction * len(units)))
    split = np.full(len(units), "train", dtype=object)
    split[order[:n_test]] = "test"
    split[order[n_test : n_test + n_val]] = "val"
    return groups.map(dict(zip(units, split)))


def _load(item: tuple[str, tuple[int, int], pd.DataFrame], size: int) -> tuple[np.ndarray, np.ndarray, int] | str:
    """Worker: (image, mask at size, mask pixels at full size), or the reason the image is unusable."""
    path, shape, rows = item
    try:
        image = read_radiograph(path)
    except InputError as error:
        return error.problem
    if image.shape != shape:
        return f"pixel data of shape {image.shape} differs from the header's {shape}"
    mask = _decode_rows(rows, shape)  # already checked once, so it cannot fail here
    return area_or_bilinear(image, size), nearest_on_centres(mask, (size, size)).astype(np.uint8), int(mask.sum())


def prepare_pxs(
    root: Path | str, out_h5: Path | str, settings: PXSSettings, synthetic: bool, workers: int = 1
) -> pd.DataFrame:
    """Write the PXS task file from a SIIM-ACR-format folder; return one row per listed image with its outcome."""
    root = Path(root)
    rles = read_rle_csv(root / RLE_CSV)
    dicoms = find_dicoms(root)
    ids = pd.unique(rles.ImageId)
    by_id = dict(tuple(rles.groupby("ImageId", sort=False)))
    unlabelled = len(set(dicoms) - set(ids))
    log.info("%s: %d images in %s, %d DICOM files (%d without rows)", root, len(ids), RLE_CSV, len(dicoms), unlabelled)

    # First pass, headers only: which images are usable, their shapes and patients, before splitting by patient.
    records = []
    for image_id in tqdm(ids, desc="PXS headers", unit="image"):
        rows = by_id[image_id]
        record = dict(id=image_id, patient="", split="", status="excluded", reason="", path="", rows=len(rows))
        record.update(height=0, width=0, pixels=-1)
        records.append(record)
        if image_id not in dicoms:
            lines = ", ".join(map(str, rows.line))
            record["reason"] = f"listed in {RLE_CSV} (line {lines}) but {image_id}.dcm is not under {root}"
            continue
        record["path"] = str(dicoms[image_id])
        try:
            shape, record["patient"] = _header(dicoms[image_id])
            _decode_rows(rows, shape)
        except InputError as error:
            record["reason"] = error.problem
            continue
        except ValueError as error:
            record["reason"] = str(error)
            continue
        record.update(status="ok", height=shape[0], width=shape[1])
    result = pd.DataFrame(records)
    for row in result[result.status != "ok"].itertuples():
        log.warning("excluded %s: %s", row.path or row.id, row.reason)
    ok = result.status == "ok"
    if not ok.any():
        raise NoUsableDataError(f"no usable image remains out of {len(result)} listed in {root / RLE_CSV}")
    groups = result.patient.where(result.patient != "", "image " + result.id)
    result.loc[ok, "split"] = assign_pxs_splits(groups[ok], settings)

    # Second pass: pixels and masks, written as they come.
    todo = result[ok]
    items = [(path, (h, w), by_id[i]) for i, path, h, w in zip(todo.id, todo.path, todo.height, todo.width)]
    shape = (settings.size, settings.size)
    source = f"SIIM-ACR pneumothorax {root}"
    with TaskWriter(out_h5, "pxs", shape, synthetic, source, asdict(settings)) as writer:
        loaded = ordered_map(partial(_load, size=settings.size), items, workers)
        for row, outcome in tqdm(zip(todo.index, loaded), total=len(todo), desc="PXS", unit="image"):
            if isinstance(outcome, str):
                result.loc[row, ["status", "reason", "split"]] = ["excluded", outcome, ""]
                log.warning("excluded %s: %s", result.path[row], outcome)
                continue
            image, mask, pixels = outcome
            writer.add(result.split[row], image, mask, result.id[row])
            result.loc[row, "pixels"] = pixels
        counts = dict(writer.counts)
        if not sum(counts.values()):
            raise NoUsableDataError(f"no readable DICOM among the {len(todo)} listed in {root / RLE_CSV}")
    empty = [split for split in SPLITS if not counts[split]]
    if empty:
        log.warning("PXS: splits %s are empty; more images or other fractions are needed", empty)
    written = result.status == "ok"
    log.info(
        "PXS: %s images at %dx%d, %d with pneumothorax, %d excluded",
        counts,
        settings.size,
        settings.size,
        int((result.pixels[written] > 0).sum()),
        int((~written).sum()),
    )
    return result
