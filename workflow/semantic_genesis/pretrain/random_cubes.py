"""Random crops of every scan, the data the Models Genesis paper pretrains on, streamed to HDF5 as patches.h5 is.

The authors' `infinite_generator_3D.py` cuts up to `scale` (32) cubes of 64x64x32 per training scan at uniform
positions inside fixed borders, rejects those failing the air test, and gives up on a scan after 50 x scale tries.
Here the positions come from the self-discovery margins (`discovery.plan.start_range`, fractions of the scan equal to
the authors' borders on 512-wide LUNA16) and the air test is the self-discovery one (3D only: plan_cxr has none).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import __version__
from ..discovery.inputs import Scan, ct_scans, cxr_scans
from ..discovery.patches import LAYOUT, META_COLUMNS, write_meta
from ..discovery.plan import DiscoverySettings, Start, air_acceptor, as_zyx, start_range
from ..preprocess.ct import box
from ..runtime.files import atomic_path, read_tsv
from ..settings import Settings

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


@dataclass(frozen=True)
class RandomCubeSettings(Settings):
    """Crops per scan and tries per crop (the authors: scale 32, 50 tries each); crop size, margins and air test come
    from the kind's DiscoverySettings."""

    per_scan: int = 32
    tries_per_cube: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_scan < 1 or self.tries_per_cube < 1:
            raise ValueError("per_scan and tries_per_cube must be positive")


def draw_starts(
    shape: Sequence[int],
    discovery: DiscoverySettings,
    cubes: RandomCubeSettings,
    rng: np.random.Generator,
    accept: Callable[[Start], bool],
) -> list[Start]:
    """Up to per_scan uniform crop starts (z, y, x) inside the margins that pass `accept`; [] where none fits."""
    try:
        lo, hi = start_range(shape, discovery)
    except ValueError:
        return []
    chosen: list[Start] = []
    for _ in range(cubes.per_scan * cubes.tries_per_cube):
        if len(chosen) == cubes.per_scan:
            break
        start = tuple(int(v) for v in rng.integers(lo, hi + 1))
        if accept(start):
            chosen.append(start)
    return chosen


def _crop(scan: Scan, start: Start, size: Start) -> np.ndarray:
    """One (z, y, x) crop of a scan (a 2D image as one slice), float32."""
    index = box(start, size)
    return np.asarray(scan[index[-len(scan.shape) :]], np.float32).reshape(size)


def extract_random_cubes(
    scans: pd.DataFrame,
    open_scan: Callable[[str], Scan],
    out_h5: Path | str,
    discovery: DiscoverySettings,
    cubes: RandomCubeSettings,
    air_test: bool,
) -> dict[str, int]:
    """Cut the random crops of every scan (columns id, split) into out_h5; return the count per split.

    Scan i draws from its own generator (seed, i), one scan in memory at a time; labels are -1 (no class)."""
    size = discovery.crop_zyx
    patch_shape = size if len(discovery.crop_size_xyz) == 3 else size[1:]
    counts = dict.fromkeys(SPLITS, 0)
    meta = {split: {c: [] for c in META_COLUMNS} for split in SPLITS}
    ids: dict[str, list[str]] = {split: [] for split in SPLITS}
    skipped = []
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(
            settings=json.dumps({**asdict(discovery), **asdict(cubes)}, sort_keys=True),
            source="random_cubes",
            version=__version__,
            layout=LAYOUT,
        )
        datasets = {
            split: h5.create_group(split).create_dataset(
                "patches",
                (0, *patch_shape),
                np.float16,
                maxshape=(None, *patch_shape),
                chunks=(1, *patch_shape),
                track_times=False,
            )
            for split in SPLITS
        }
        for i, row in enumerate(tqdm(scans.itertuples(index=False), total=len(scans), desc="random cubes")):
            scan = open_scan(row.id)
            rng = np.random.default_rng([cubes.seed, i])
            accept = air_acceptor(lambda start, crop_size, scan=scan: _crop(scan, start, crop_size), discovery)
            starts = draw_starts(as_zyx(scan.shape), discovery, cubes, rng, accept if air_test else lambda s: True)
            if not starts:
                skipped.append(row.id)
                continue
            data, n = datasets[row.split], counts[row.split]
            data.resize(n + len(starts), axis=0)
            for j, start in enumerate(starts):
                data[n + j] = _crop(scan, start, size).reshape(patch_shape)
                values = (-1, j, *start, *size[1:], 0, 1.0)
                for column, value in zip(META_COLUMNS, values):
                    meta[row.split][column].append(value)
            ids[row.split] += [row.id] * len(starts)
            counts[row.split] += len(starts)
        for split in SPLITS:
            columns = {c: np.asarray(v, np.float32 if c == "scale" else np.int32) for c, v in meta[split].items()}
            write_meta(h5[split], columns, np.asarray(ids[split], object))
        if not counts["train"]:
            raise ValueError(
                f"no random crop of {discovery.crop_size_xyz} (x, y[, z]) fits inside the margins and passes the air "
                f"test in any of the {int((scans.split == 'train').sum())} training scans: lower the crop size or "
                "the margins (discovery.<kind>) or relax the air test"
            )
    if skipped:
        log.warning("%d scans gave no crop (too small for the margins, or all air): %s", len(skipped), skipped[:10])
    log.info("wrote %s: %s random crops (up to %d per scan)", out_h5, counts, cubes.per_scan)
    return counts


def random_cubes(
    dims: int,
    manifest_tsv: Path | str,
    h5_files: list[str],
    discovery: DiscoverySettings,
    cubes: RandomCubeSettings,
    out_h5: Path | str,
) -> dict[str, int]:
    """Entry point of rule random_cubes: the usable training and validation scans of one dimension, randomly cropped."""
    manifest = read_tsv(manifest_tsv)
    scans = manifest[(manifest.status == "ok") & manifest.split.isin(SPLITS)].sort_values("id")
    open_scan = ct_scans(h5_files) if dims == 3 else cxr_scans(h5_files[0])
    return extract_random_cubes(scans.reset_index(drop=True), open_scan, out_h5, discovery, cubes, air_test=dims == 3)
