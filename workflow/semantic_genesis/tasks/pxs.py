"""PXS, pneumothorax segmentation in the SIIM-ACR 2019 format: DICOM radiographs and run-length-encoded masks, IoU.

On disk: `<root>/dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm` (found recursively, the
ImageId being the file stem) and `<root>/train-rle.csv` with columns `ImageId, EncodedPixels` (the official header
has a space after the comma). EncodedPixels is "-1" for no pneumothorax; an image with several regions has one row
per region. The encoding runs over the mask flattened column by column (Fortran order) as (start, length) pairs,
each start counted from the end of the previous run (the first from pixel 0).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from ..preprocess.readers import InputError, NoUsableDataError, read_radiograph
from ..runtime.files import atomic_path
from ..runtime.parallel import ordered_map
from ..settings import Settings
from ..synthetic.phantom import PatientParams, PhantomSettings, draw_patient, radiograph_field_mm, render_radiograph
from .dxc import resize_image
from .lcs import resize_nearest
from .taskdata import SPLITS, TaskWriter

log = logging.getLogger(__name__)

RLE_CSV = "train-rle.csv"
DICOM_DIR = "dicom-images-train"
NO_MASK = "-1"
_PATIENT_STREAM, _CHOICE_STREAM = 6, 7  # synthetic.py uses streams 0-5 of the same seed


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


# ---- synthetic SIIM-ACR set ---------------------------------------------------------------------------------------
def _digest(seed: int, index: int, kind: str) -> str:
    return hashlib.sha256(f"semantic-genesis/siim/{seed}/{index}/{kind}".encode()).hexdigest()


def dicom_uid(seed: int, index: int, kind: str) -> str:
    """A stable DICOM UID in the 2.25.<integer> form for synthetic image `index` (kind: study, series, sop)."""
    return f"2.25.{int(_digest(seed, index, kind)[:30], 16)}"


def synthetic_siim_patient(seed: int, index: int, pneumothorax: bool) -> tuple[PatientParams, np.random.Generator]:
    """The phantom patient of synthetic SIIM image `index`, with or without a pneumothorax, and its RNG."""
    rng = np.random.default_rng([seed, _PATIENT_STREAM, index])
    return draw_patient(rng, PhantomSettings(p_pneumothorax=1.0 if pneumothorax else 0.0)), rng


def synthetic_pneumothorax(seed: int, count: int, fraction: float) -> np.ndarray:
    """Which of `count` synthetic images get a pneumothorax: round(fraction * count) of them, seeded."""
    chosen = np.zeros(count, bool)
    chosen[np.random.default_rng([seed, _CHOICE_STREAM]).permutation(count)[: int(round(fraction * count))]] = True
    return chosen


def _write_dicom(image: np.ndarray, tags: dict[str, str], spacing: float, path: Path) -> None:
    """Write an 8-bit MONOCHROME2 DICOM, keeping our UIDs (GDCM would otherwise make new ones)."""
    dicom = sitk.GetImageFromArray(np.rint(image * 255).astype(np.uint8))
    dicom.SetSpacing((spacing, spacing))
    for key, value in tags.items():
        dicom.SetMetaData(key, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    with atomic_path(path) as tmp:
        writer.SetFileName(str(tmp))
        writer.Execute(dicom)


def _write_siim_image(item: tuple[int, bool], seed: int, size: int, root: Path) -> dict:
    """Render and write one synthetic radiograph; return its table row, with one RLE per mask region."""
    index, pneumothorax = item
    p, rng = synthetic_siim_patient(seed, index, pneumothorax)
    image, mask = render_radiograph(p, size)
    study, series, sop = (dicom_uid(seed, index, kind) for kind in ("study", "series", "sop"))
    patient = str(uuid.UUID(hex=_digest(seed, index, "patient")[:32]))  # SIIM's patient ids are UUIDs
    spacing = round(radiograph_field_mm(p) / size, 4)
    tags = {
        "0008|0016": "1.2.840.10008.5.1.4.1.1.1",  # CR Image Storage
        "0008|0018": sop,
        "0008|0060": "CR",
        "0008|0064": "WSD",
        "0010|0010": patient,
        "0010|0020": patient,
        "0010|0040": str(rng.choice(["M", "F"])),
        "0010|1010": f"{int(rng.integers(18, 90)):03d}Y",
        "0018|0015": "CHEST",
        "0018|1164": f"{spacing}\\{spacing}",
        "0018|5101": "PA",
        "0020|000d": study,
        "0020|000e": series,
        "0028|0004": "MONOCHROME2",
    }
    path = Path(DICOM_DIR) / study / series / f"{sop}.dcm"
    _write_dicom(image, tags, spacing, root / path)
    # SIIM lists each region of an image in its own row.
    regions, n = ndimage.label(mask)
    rles = [rle_encode(regions == k) for k in range(1, n + 1)] or [NO_MASK]
    side = {-1: "right", 1: "left"}.get(p.pneumothorax_side, "")
    return dict(
        ImageId=sop,
        PatientID=patient,
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
        path=str(path),
        pneumothorax=bool(p.pneumothorax_side),
        side=side,
        regions=n,
        mask_pixels=int(mask.sum()),
        findings="|".join(p.findings) or "No Finding",
        rles=rles,
    )


def write_synthetic_siim(
    out_root: Path | str,
    count: int,
    seed: int,
    size: int = 256,
    pneumothorax_fraction: float = 0.5,
    workers: int = 1,
) -> pd.DataFrame:
    """Write a SIIM-ACR-format set of phantom radiographs (DICOM) and train-rle.csv; return one row per image."""
    root = Path(out_root)
    chosen = synthetic_pneumothorax(seed, count, pneumothorax_fraction)
    work = partial(_write_siim_image, seed=seed, size=size, root=root)
    rows = list(
        tqdm(
            ordered_map(work, list(enumerate(chosen.tolist())), workers),
            total=count,
            desc="synthetic SIIM",
            unit="image",
        )
    )
    frame = pd.DataFrame(rows)
    lines = ["ImageId, EncodedPixels"] + [f"{row['ImageId']}, {rle}" for row in rows for rle in row["rles"]]
    # Tables last and atomically: their presence means every DICOM they name is complete.
    table = frame.drop(columns="rles")
    with atomic_path(root / "phantoms.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    with atomic_path(root / RLE_CSV) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    log.info(
        "wrote %d synthetic SIIM radiographs (%d with pneumothorax, %d RLE rows) under %s",
        count,
        int(table.pneumothorax.sum()),
        len(lines) - 1,
        root,
    )
    return table


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
    return resize_image(image, size), resize_nearest(mask, (size, size)).astype(np.uint8), int(mask.sum())


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
