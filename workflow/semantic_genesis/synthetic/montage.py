"""Montages that let a person see the data: CT planes and projections, radiograph grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from ..plots import Cell, image_grid
from ..preprocess.readers import read_radiograph, read_volume, scan_id

LUNG_HU = (-950, -600)
CT_WINDOW = (-1000, 400)  # HU shown from black to white


def lung_centre(hu: np.ndarray) -> tuple[int, int, int]:
    """Index (z, y, x) of the planes that cut through most lung-density voxels; used to pick informative views."""
    # Lungs are the lung-density holes inside the body outline of each slice; this leaves out the outside air (whose
    # noise reaches the lung range) and the foam of the patient table.
    body = hu > -500
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    inside = ndimage.binary_fill_holes(body, structure=in_plane) & ~body
    smooth = ndimage.uniform_filter(hu.astype(np.float32), size=3)
    lung = inside & (smooth >= LUNG_HU[0]) & (smooth <= LUNG_HU[1])
    return tuple(int(np.argmax(lung.sum(axis=tuple(a for a in range(3) if a != axis)))) for axis in range(3))


def ct_montage(scans: list[str], phantoms_tsv: str | None, out_png: Path | str) -> None:
    """One row per scan: axial, coronal, sagittal planes through the lungs and an anterior projection."""
    findings = {}
    if phantoms_tsv:
        table = pd.read_csv(phantoms_tsv, sep="\t", dtype={"seriesuid": str})
        findings = dict(zip(table.seriesuid, table.findings))
    rows, labels = [], []
    for path in scans:
        image = read_volume(path)
        hu = sitk.GetArrayFromImage(image)
        sx, sy, sz = image.GetSpacing()
        z, y, x = lung_centre(hu)
        mu = np.clip(hu.astype(np.float32) + 1000.0, 0.0, None)
        window = dict(vmin=CT_WINDOW[0], vmax=CT_WINDOW[1])
        rows.append(
            [
                Cell(hu[z], "axial", aspect=sy / sx, **window),
                Cell(hu[:, y, :], "coronal", origin="lower", aspect=sz / sx, **window),
                Cell(hu[:, :, x], "sagittal", origin="lower", aspect=sz / sy, **window),
                Cell(mu.mean(axis=1), "projection", origin="lower", aspect=sz / sx, vmin=None, vmax=None),
            ]
        )
        sid = scan_id(path)
        labels.append(f"{sid[:18]}...\n{'x'.join(map(str, image.GetSize()))}\n{findings.get(sid, '')}")
    image_grid(
        rows,
        out_png,
        title="Synthetic chest CT (LUNA16 format); window -1000..400 HU",
        row_labels=labels,
        cell_size=(3.25, 3.4),
        font_size=8,
    )


def cxr_montage(entries_csv: str, images_dir: str, count: int, out_png: Path | str) -> None:
    """A grid of the first `count` radiographs titled with their Finding Labels."""
    entries = pd.read_csv(entries_csv).head(count)
    cells = [
        Cell(
            read_radiograph(Path(images_dir) / entry["Image Index"]),
            f"{entry['Image Index']}\n{entry['Finding Labels']}",
        )
        for _, entry in entries.iterrows()
    ]
    columns = min(6, len(cells)) or 1
    rows = [cells[i : i + columns] for i in range(0, len(cells), columns)]
    image_grid(rows, out_png, title="Synthetic radiographs (ChestX-ray14 format)", cell_size=(2.4, 2.7), font_size=7)
