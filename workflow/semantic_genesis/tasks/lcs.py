"""LCS, liver segmentation: LiTS-2017 volumes resampled to one grid and tiled into cubes with liver masks.

Real format (LiTS-2017 training batches): `<root>/volume-N.nii` (CT in HU) and `<root>/segmentation-N.nii`
(0 background, 1 liver, 2 tumour; liver = label >= 1), N = 0..130; `.nii.gz` is accepted too. LiTS files come in
several orientations (many are RAS-like, some with the slices running downwards), so each volume is reoriented to
LPS first, then windowed, resampled to `volume_size_xyz` (area averaging where it shrinks, linear where it grows;
the mask with nearest neighbour) and tiled into `cube_size_xyz` cubes, ids "volume-N:tile_z_y_x". With `native_z`
only x and y are resampled (the authors' in-plane 256x256) and the slices stay as scanned, the last cube padded
with air (0) and background below the scan. The split is
given by inclusive ranges of N (the paper: 0-99 train, 100-114 val, 115-129 test). Unreadable or truncated files,
volume/segmentation size mismatches and segmentations without liver are excluded with a logged reason.

synthetic/lits.py writes the same layout from the chest phantom, with the scan range moved down to the liver.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from tqdm import tqdm

from ..preprocess.ct import reorient, to_unit, window_hu
from ..preprocess.readers import InputError, NoUsableDataError, read_volume
from ..resize import area_or_linear_axis, nearest_on_centres
from ..settings import Settings
from .taskdata import SPLITS, TaskWriter

log = logging.getLogger(__name__)

PAPER_SPLITS = {"train": [0, 99], "val": [100, 114], "test": [115, 129]}
_VOLUME = re.compile(r"^volume-(\d+)\.nii(\.gz)?$")


@dataclass(frozen=True)
class LCSSettings(Settings):
    """Split ranges of N (inclusive), the common volume grid and its cube tiling (x, y, z), HU window."""

    ALIASES: ClassVar[dict[str, str]] = {"volume_size": "volume_size_xyz", "cube_size": "cube_size_xyz"}

    splits: dict = field(default_factory=lambda: {k: list(v) for k, v in PAPER_SPLITS.items()})
    volume_size_xyz: tuple[int, int, int] = (128, 128, 64)
    cube_size_xyz: tuple[int, int, int] = (64, 64, 32)
    hu_window: tuple[int, int] = (-1000, 1000)
    native_z: bool = False

    def __post_init__(self):
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"splits has unknown split(s) {sorted(unknown)}; use {SPLITS}")
        for split, (lo, hi) in self.splits.items():
            if hi < lo:
                raise ValueError(f"split {split}: range [{lo}, {hi}] is empty")
        resampled = 2 if self.native_z else 3  # native slices are padded to the cube depth instead
        pairs = list(zip(self.volume_size_xyz, self.cube_size_xyz))[:resampled]
        if any(v % c or v < c for v, c in pairs):
            raise ValueError(
                f"volume_size_xyz {self.volume_size_xyz[:resampled]} must be a multiple of cube_size_xyz "
                f"{self.cube_size_xyz[:resampled]}"
            )

    def split_of(self, n: int) -> str | None:
        """The split whose range holds volume N, or None."""
        return next((split for split, (lo, hi) in self.splits.items() if lo <= n <= hi), None)


def proportional_splits(count: int) -> dict[str, list[int]]:
    """The paper's 100/15/15 split scaled to volumes 0..count-1 (val and test get at least one volume each)."""
    if count < 3:
        raise ValueError(f"three splits need at least 3 volumes, not {count}")
    held = max(1, int(round(count * 15 / 130)))
    held = min(held, (count - 1) // 2)
    train = count - 2 * held
    return {"train": [0, train - 1], "val": [train, train + held - 1], "test": [train + held, count - 1]}


# ---- reader -------------------------------------------------------------------------------------------------------


def resize_unit(hu: np.ndarray, size_zyx: tuple[int, int, int], window: tuple[int, int], slab: int = 16) -> np.ndarray:
    """Windowed HU -> [0, 1] float32 of size_zyx; in-plane first, slab by slab, so a 512x512 scan never goes float."""
    _, ny, nx = size_zyx
    planes = []
    for z in range(0, len(hu), slab):
        t = torch.from_numpy(to_unit(hu[z : z + slab], window))
        planes.append(area_or_linear_axis(area_or_linear_axis(t, 1, ny), 2, nx))
    out = area_or_linear_axis(torch.cat(planes), 0, size_zyx[0]).numpy()
    return np.clip(out, 0.0, 1.0)


def _pair(root: Path, n: int, volume: Path) -> Path:
    """The segmentation file of volume N (.nii or .nii.gz, whichever exists; the volume's suffix first)."""
    suffixes = (".nii.gz", ".nii") if volume.name.endswith(".gz") else (".nii", ".nii.gz")
    for suffix in suffixes:
        if (path := root / f"segmentation-{n}{suffix}").exists():
            return path
    return root / f"segmentation-{n}{suffixes[0]}"


def load_volume(volume: Path, segmentation: Path, settings: LCSSettings) -> tuple[np.ndarray, np.ndarray]:
    """(image in [0, 1], liver mask uint8) on the settings' grid, reoriented to LPS; InputError when unusable."""
    image, seg = read_volume(volume), read_volume(segmentation)
    if image.GetSize() != seg.GetSize():
        raise InputError(segmentation, f"has size {seg.GetSize()}, its volume {volume.name} has {image.GetSize()}")
    if not np.allclose(image.GetDirection(), seg.GetDirection(), atol=1e-3):
        raise InputError(segmentation, f"has other axis directions than its volume {volume.name}")
    seg.CopyInformation(image)  # LiTS segmentation headers differ from their volumes' by rounding in places
    image, seg = reorient(image, "LPS"), reorient(seg, "LPS")
    labels = sitk.GetArrayViewFromImage(seg)
    liver = labels >= 1  # tumour (2) lies inside the liver and counts as liver
    if not liver.any():
        raise InputError(segmentation, "has no liver voxel (label >= 1)")
    size_zyx = tuple(settings.volume_size_xyz[::-1])
    if settings.native_z:
        size_zyx = (len(labels), *size_zyx[1:])
    unit = resize_unit(window_hu(sitk.GetArrayViewFromImage(image), settings.hu_window), size_zyx, settings.hu_window)
    mask = nearest_on_centres(liver, size_zyx).astype(np.uint8)
    depth = settings.cube_size_xyz[2]
    below = -len(unit) % depth
    if below:  # native slices: the last cube reaches past the scan, into air and background
        unit, mask = (np.pad(a, ((0, below), (0, 0), (0, 0))) for a in (unit, mask))
    return unit, mask


def tiles(size_zyx: tuple[int, ...], cube_zyx: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Tile indices (z, y, x) of a grid cut into cubes."""
    counts = [s // c for s, c in zip(size_zyx, cube_zyx)]
    return [tuple(int(i) for i in t) for t in np.ndindex(*counts)]


def find_volumes(root: Path | str) -> dict[int, Path]:
    """volume-N.nii(.gz) files under root by N."""
    found = {}
    for path in sorted(Path(root).iterdir()):
        if match := _VOLUME.match(path.name):
            found.setdefault(int(match.group(1)), path)
    return dict(sorted(found.items()))


def prepare_lcs(root: Path | str, out_h5: Path | str, settings: LCSSettings, synthetic: bool) -> pd.DataFrame:
    """Resample and tile every LiTS volume under root into the LCS task file; return tiles and excluded volumes."""
    root = Path(root)
    volumes = find_volumes(root)
    if not volumes:
        raise NoUsableDataError(f"no volume-N.nii or volume-N.nii.gz under {root}")
    cube_zyx = tuple(settings.cube_size_xyz[::-1])
    columns = ["id", "volume", "split", "tile_z", "tile_y", "tile_x", "liver_voxels", "status", "reason"]
    rows = []
    with TaskWriter(out_h5, "lcs", cube_zyx, synthetic, str(root), asdict(settings)) as writer:
        for n, volume in tqdm(volumes.items(), desc="LCS volumes", unit="volume"):
            split = settings.split_of(n)
            try:
                if split is None:
                    raise InputError(volume, f"N = {n} lies in no split range of {settings.splits}")
                unit, mask = load_volume(volume, _pair(root, n, volume), settings)
            except InputError as error:
                log.warning("excluded volume-%d: %s", n, error)
                rows.append(dict(id=f"volume-{n}", volume=n, split=split, status="excluded", reason=str(error)))
                continue
            for tz, ty, tx in tiles(unit.shape, cube_zyx):
                box = tuple(slice(t * c, (t + 1) * c) for t, c in zip((tz, ty, tx), cube_zyx))
                sample_id = f"volume-{n}:tile_{tz}_{ty}_{tx}"
                writer.add(split, unit[box], mask[box], sample_id)
                rows.append(
                    dict(
                        id=sample_id,
                        volume=n,
                        split=split,
                        tile_z=tz,
                        tile_y=ty,
                        tile_x=tx,
                        liver_voxels=int(mask[box].sum()),
                        status="ok",
                        reason="",
                    )
                )
        result = pd.DataFrame(rows, columns=columns)
        usable = result[result.status == "ok"]
        if usable.empty:  # raised inside the block, so that no empty task file appears
            raise NoUsableDataError(f"no usable LiTS volume among the {len(volumes)} under {root}")
    log.info(
        "LCS: %d volumes -> %d cubes %s, %d volumes excluded -> %s",
        usable.volume.nunique(),
        len(usable),
        usable.groupby("split").size().to_dict(),
        (result.status != "ok").sum(),
        out_h5,
    )
    return result
