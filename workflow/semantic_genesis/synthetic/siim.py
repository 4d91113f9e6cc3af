"""Synthetic SIIM-ACR: phantom radiographs as DICOM with pneumothorax masks as run-length codes (task PXS)."""

from __future__ import annotations

import hashlib
import logging
import uuid
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from ..runtime.files import atomic_path
from ..runtime.parallel import ordered_map
from ..tasks.pxs import DICOM_DIR, NO_MASK, RLE_CSV, rle_encode
from .phantom import PatientParams, PhantomSettings, draw_patient, radiograph_field_mm, render_radiograph

log = logging.getLogger(__name__)
_PATIENT_STREAM, _CHOICE_STREAM = 6, 7  # synthetic/chest.py uses streams 0-5 of the same seed


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
        # SIIM's anonymised date and time; set, because GDCM writes the current ones otherwise and a rerun of the
        # same seed would not write the same bytes.
        "0008|0020": "19010101",
        "0008|0030": "000000.00",
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
