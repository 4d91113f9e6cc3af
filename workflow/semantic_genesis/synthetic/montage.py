"""Montages that let a person see the data: CT planes and projections, radiograph grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from scipy import ndimage  # noqa: E402

from ..preprocess.readers import read_radiograph, read_volume, scan_id  # noqa: E402
from ..runtime.files import atomic_path  # noqa: E402

LUNG_HU = (-950, -600)
CT_DISPLAY = dict(cmap="gray", vmin=-1000, vmax=400)


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
    fig, axes = plt.subplots(len(scans), 4, figsize=(13, 3.4 * len(scans)), squeeze=False)
    for row, path in zip(axes, scans):
        image = read_volume(path)
        hu = sitk.GetArrayFromImage(image)
        sx, sy, sz = image.GetSpacing()
        z, y, x = lung_centre(hu)
        mu = np.clip(hu.astype(np.float32) + 1000.0, 0.0, None)
        views = [
            ("axial", hu[z], sy / sx, CT_DISPLAY),
            ("coronal", hu[:, y, :], sz / sx, CT_DISPLAY),
            ("sagittal", hu[:, :, x], sz / sy, CT_DISPLAY),
            ("projection", mu.mean(axis=1), sz / sx, dict(cmap="gray")),
        ]
        for ax, (name, plane, aspect, display) in zip(row, views):
            ax.imshow(plane, aspect=aspect, origin="upper" if name == "axial" else "lower", **display)
            ax.set_title(name, fontsize=9)
            ax.axis("off")
        sid = scan_id(path)
        row[0].text(
            -0.05,
            0.5,
            f"{sid[:18]}...\n{'x'.join(map(str, image.GetSize()))}\n{findings.get(sid, '')}",
            transform=row[0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
    fig.suptitle("Synthetic chest CT (LUNA16 format); window -1000..400 HU", fontsize=11)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def cxr_montage(entries_csv: str, images_dir: str, count: int, out_png: Path | str) -> None:
    """A grid of the first `count` radiographs titled with their Finding Labels."""
    entries = pd.read_csv(entries_csv).head(count)
    cols = min(6, len(entries))
    rows = -(-len(entries) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.7 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, entry) in zip(axes.flat, entries.iterrows()):
        ax.imshow(read_radiograph(Path(images_dir) / entry["Image Index"]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{entry['Image Index']}\n{entry['Finding Labels']}", fontsize=7)
    fig.suptitle("Synthetic radiographs (ChestX-ray14 format)", fontsize=11)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
