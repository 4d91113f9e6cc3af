"""Stream the self-discovery crops into one HDF5 file, one scan in memory at a time, and draw a montage of them."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import __version__
from ..plots import Cell, image_grid
from ..preprocess.ct import box
from ..resize import bilinear_in_plane
from ..runtime.files import atomic_path, read_h5
from .inputs import Scan, ct_scans, cxr_scans
from .plan import DiscoverySettings, as_zyx, fit_inside, read_plan

log = logging.getLogger(__name__)

# Multi-resolution in the released code, for 64-wide crops: side s uniform in [50, 79], corner shift in [-10, 9].
MULTI_SIDE = (50, 79)
MULTI_SHIFT = (-10, 9)
MULTI_REFERENCE = 64
MULTI_TRIES = 100
META_COLUMNS = ["class", "rank", "start_z", "start_y", "start_x", "size_y", "size_x", "resolution", "scale"]
LAYOUT = (
    "<split>/patches: float16 [0, 1], index [n, z, y, x] (2D: [n, y, x]); <split>/labels: class; "
    "<split>/meta/<column>: scan id and where each patch was cut (start, in-plane size before resizing, "
    "resolution 0 = plain crop, scale = size_x / crop x)"
)


def multi_resolution_regions(
    start_zyx: Sequence[int], shape_zyx: Sequence[int], crop_zyx: Sequence[int], rng: np.random.Generator
) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """Two more (start, size) regions of a crop, as the authors' pattern_generator_3D.py draws them.

    Each region's corner is the crop's corner shifted in-plane, its side drawn per region; both scaled to the crop
    size. A draw that leaves the scan is redrawn (theirs loops until one fits), and after MULTI_TRIES draws the last
    one is moved inside.
    """
    regions = []
    scale = np.array(crop_zyx[1:]) / MULTI_REFERENCE
    limit = np.array(shape_zyx[1:])
    for _ in range(2):
        for _ in range(MULTI_TRIES):
            side = rng.integers(MULTI_SIDE[0], MULTI_SIDE[1] + 1)
            shift = rng.integers(MULTI_SHIFT[0], MULTI_SHIFT[1] + 1, size=2)
            size_yx = np.minimum(np.maximum(1, np.rint(side * scale)).astype(int), limit)
            origin = np.array(start_zyx[1:]) + np.rint(shift * scale).astype(int)
            if (origin >= 0).all() and (origin + size_yx <= limit).all():
                break
        size = (crop_zyx[0], *(int(v) for v in size_yx))
        regions.append((fit_inside((start_zyx[0], *origin), shape_zyx, size), size))
    return regions


def _create(h5: h5py.File, split: str, count: int, patch_shape: tuple[int, ...]) -> h5py.Group:
    """Patch dataset of one split, preallocated so patches land at their plan position whatever the reading order."""
    group = h5.create_group(split)
    group.create_dataset("patches", (count, *patch_shape), np.float16, chunks=(1, *patch_shape), track_times=False)
    return group


def write_meta(group: h5py.Group, meta: dict[str, np.ndarray], ids: np.ndarray) -> None:
    """Labels and per-column metadata of one split."""
    group.create_dataset("labels", data=meta["class"].astype(np.int64), track_times=False)
    columns = group.create_group("meta")
    columns.create_dataset("id", data=ids.astype(object), dtype=h5py.string_dtype(), track_times=False)
    for name, values in meta.items():
        columns.create_dataset(name, data=values, track_times=False)


def extract_patches(
    plan: pd.DataFrame,
    open_scan: Callable[[str], Scan],
    out_h5: Path | str,
    settings: DiscoverySettings,
    multi_resolution: bool,
    seed: int,
    config_attrs: dict,
) -> None:
    """Cut every planned crop (plus two multi-resolution crops per training row if asked) into `out_h5`.

    Scans are visited one at a time in sorted id order and only their crops are read, so memory does not grow with
    the data set; each patch goes to the row given by its plan position (times 3 with multi-resolution), so the file
    does not depend on that order. Counts: train = classes x k x (3 if multi_resolution else 1), val = classes x
    val_neighbours. The random sides and shifts come from `seed` alone: same plan and seed, same file content.
    """
    crop_zyx = settings.crop_zyx
    patch_shape = crop_zyx if len(settings.crop_size_xyz) == 3 else crop_zyx[1:]
    plan = plan.rename(columns={"class": "label"}).reset_index(drop=True)
    plan["row"] = plan.groupby("split").cumcount()
    per_row = {"train": 3 if multi_resolution else 1, "val": 1}
    counts = {s: int((plan.split == s).sum()) * per_row[s] for s in per_row}
    meta = {
        s: {c: np.zeros(n, np.float32 if c == "scale" else np.int32) for c in META_COLUMNS} for s, n in counts.items()
    }
    ids = {s: np.empty(n, object) for s, n in counts.items()}
    rng = np.random.default_rng(seed)
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(
            config=json.dumps(config_attrs, sort_keys=True, default=str),
            settings=json.dumps(settings.as_dict(), sort_keys=True),
            multi_resolution=multi_resolution,
            seed=seed,
            version=__version__,
            layout=LAYOUT,
        )
        groups = {s: _create(h5, s, n, patch_shape) for s, n in counts.items()}
        for sid, rows in tqdm(plan.groupby("neighbour", sort=True), desc="patches", unit="scan"):
            scan = open_scan(sid)
            shape = as_zyx(scan.shape)
            for row in rows.itertuples(index=False):
                start = (row.start_z, row.start_y, row.start_x)
                regions = [(start, crop_zyx)]
                if row.split == "train" and multi_resolution:
                    regions += multi_resolution_regions(start, shape, crop_zyx, rng)
                for resolution, (begin, size) in enumerate(regions):
                    index = box(begin, size)
                    crop = np.asarray(scan[index[-len(scan.shape) :]], np.float32).reshape(size)
                    if size != crop_zyx:
                        crop = bilinear_in_plane(crop, crop_zyx[1:])
                    n = row.row * per_row[row.split] + resolution
                    groups[row.split]["patches"][n] = crop.reshape(patch_shape)
                    ids[row.split][n] = sid
                    values = (row.label, row.rank, *begin, *size[1:], resolution, size[2] / crop_zyx[2])
                    for column, value in zip(META_COLUMNS, values):
                        meta[row.split][column][n] = value
        for split, group in groups.items():
            write_meta(group, meta[split], ids[split])
    log.info("wrote %s: %s patches", out_h5, counts)


def patch_montage(h5_path: Path | str, out_png: Path | str, classes: int = 8, neighbours: int = 8) -> None:
    """One row per class, one column per neighbour (mid slice of each plain training crop), as in Figure 2."""
    rows, labels = [], []
    with read_h5(h5_path) as h5:
        group = h5["train"]
        all_labels = group["labels"][()]
        plain = group["meta/resolution"][()] == 0
        for label in np.unique(all_labels)[:classes]:
            members = np.flatnonzero(plain & (all_labels == label))[:neighbours]
            crops = [group["patches"][n].astype(np.float32) for n in members]
            cells = [Cell(crop[len(crop) // 2] if crop.ndim == 3 else crop) for crop in crops]
            rows.append(cells + [None] * (neighbours - len(cells)))  # every row as wide as the figure's columns
            labels.append(f"class {label}")
    image_grid(
        rows,
        out_png,
        title="Self-discovered classes: one row per coordinate, one column per neighbour",
        row_labels=labels,
        cell_size=(1.3, 1.3),
    )


def patches(
    dims: int,
    plan_tsv: Path | str,
    h5_files: list[str],
    settings: DiscoverySettings,
    multi_resolution: bool,
    out_h5: Path | str,
    out_png: Path | str,
) -> None:
    """Entry point of rule patches: cut the planned crops of one dimension (one scan in memory at a time) into one
    HDF5 file, and draw the class montage."""
    open_scan = ct_scans(h5_files) if dims == 3 else cxr_scans(h5_files[0])
    record = {"discovery": json.dumps({**asdict(settings), "multi_resolution": multi_resolution})}
    extract_patches(read_plan(plan_tsv), open_scan, out_h5, settings, multi_resolution, settings.seed, record)
    patch_montage(out_h5, out_png)
