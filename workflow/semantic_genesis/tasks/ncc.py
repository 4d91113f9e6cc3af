"""NCC, lung nodule false-positive reduction: cubes around LUNA16 candidates, labelled nodule (1) or not (0).

Input is LUNA16's `candidates_V2.csv` (seriesuid, coordX, coordY, coordZ in world mm, class 0/1) together with the
CT scans as already preprocessed for pretraining (per-subset HDF5 files of int16 HU in LPS and the manifest
`results/ct/scans.tsv`), so no scan is read twice from its .mhd. Each kept candidate gives one cube of
`cube_size_xyz` voxels centred on it (padded with 0, i.e. air, where it leaves the scan); its split is the split of
its scan in the manifest. Negatives outnumber positives about 500 to 1 in LUNA16, so they are subsampled per split.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from ..preprocess.ct import TASK_STATUSES, to_unit
from ..preprocess.readers import InputError, NoUsableDataError
from ..runtime.files import read_h5, read_tsv
from ..settings import Settings
from .taskdata import SPLITS, TaskWriter

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")


@dataclass(frozen=True)
class NCCSettings(Settings):
    """Cube size (x, y, z), negative subsampling (per split) and the HU window of the cubes."""

    ALIASES: ClassVar[dict[str, str]] = {"cube_size": "cube_size_xyz"}

    cube_size_xyz: tuple[int, int, int] = (64, 64, 32)
    negatives_per_positive: int = 3  # cap on negatives per positive of the same split; 0 keeps every negative
    max_negatives: int | None = None  # absolute cap on negatives per split, after the ratio
    seed: int = 0
    hu_window: tuple[int, int] = (-1000, 1000)

    def __post_init__(self):
        if len(self.cube_size_xyz) != 3 or min(self.cube_size_xyz) < 1:
            raise ValueError(f"cube_size_xyz must be three positive sizes, not {self.cube_size_xyz}")
        if self.negatives_per_positive < 0 or (self.max_negatives is not None and self.max_negatives < 0):
            raise ValueError("negatives_per_positive and max_negatives must not be negative")
        if self.hu_window[1] <= self.hu_window[0]:
            raise ValueError(f"hu_window must be increasing, not {self.hu_window}")


def world_to_index(
    world_xyz: np.ndarray, origin_xyz: np.ndarray, spacing_xyz: np.ndarray, direction: np.ndarray
) -> np.ndarray:
    """Continuous voxel index (z, y, x) of world points (x, y, z) mm; direction is ITK's row-major 3x3 matrix.

    ITK maps index i to origin + D diag(spacing) i, so i = diag(1 / spacing) D^-1 (p - origin); works on (..., 3).
    """
    world = np.asarray(world_xyz, float)
    matrix = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing_xyz, float)[None, :]
    index_xyz = np.linalg.solve(matrix, (world - np.asarray(origin_xyz, float)).reshape(-1, 3).T).T
    return index_xyz.reshape(world.shape)[..., ::-1]


def crop_padded(data: h5py.Dataset | np.ndarray, start: np.ndarray, size: tuple[int, ...], fill) -> np.ndarray:
    """The box of `size` at integer `start` (z, y, x), reading only what lies inside the array; the rest is fill."""
    shape = np.asarray(data.shape)
    start = np.asarray(start, int)
    lo, hi = np.maximum(start, 0), np.minimum(start + np.asarray(size), shape)
    out = np.full(size, fill, dtype=data.dtype)
    if np.all(hi > lo):
        src = tuple(slice(a, b) for a, b in zip(lo, hi))
        dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
        out[dst] = data[src]
    return out


def read_candidates(path: Path | str) -> pd.DataFrame:
    """Read a candidates_V2.csv; raise InputError naming the file for missing columns or bad values."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"seriesuid": str})
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise InputError(path, f"cannot be read as CSV ({error})") from None
    missing = [c for c in CANDIDATE_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(path, f"lacks column(s) {', '.join(missing)}; expected {', '.join(CANDIDATE_COLUMNS)}")
    for column in ("coordX", "coordY", "coordZ", "class"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(float))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                path,
                f"{bad.sum()} non-numeric or missing value(s) in column {column}, "
                f"first at data row {row + 1} ({frame[column].iloc[row]!r})",
            )
        frame[column] = values
    if not frame["class"].isin((0, 1)).all():
        bad = frame["class"][~frame["class"].isin((0, 1))]
        raise InputError(path, f"column class must be 0 or 1, found {bad.iloc[0]!r} at data row {bad.index[0] + 1}")
    if frame["seriesuid"].isna().any():
        raise InputError(path, f"empty seriesuid at data row {int(np.flatnonzero(frame.seriesuid.isna())[0]) + 1}")
    frame["class"] = frame["class"].astype(int)
    frame["row"] = np.arange(len(frame))  # the candidate's position in the file: a stable, unique sample id
    return frame


def select_candidates(candidates: pd.DataFrame, settings: NCCSettings) -> pd.DataFrame:
    """Keep every positive and a seeded random subset of the negatives of each split (column `split` required)."""
    kept = []
    for k, split in enumerate(SPLITS):
        rows = candidates[candidates.split == split]
        pos, neg = rows[rows["class"] == 1], rows[rows["class"] == 0]
        cap = len(neg)
        if settings.negatives_per_positive > 0:
            # A split without positives still keeps a few negatives (as if it had one positive), not none.
            cap = min(cap, settings.negatives_per_positive * max(len(pos), 1))
        if settings.max_negatives is not None:
            cap = min(cap, settings.max_negatives)
        if cap < len(neg):
            rng = np.random.default_rng([settings.seed, k])
            neg = neg.iloc[np.sort(rng.choice(len(neg), size=cap, replace=False))]
        kept.append(pd.concat([pos, neg]))
        log.info("%s: %d positives, %d of %d negatives kept", split, len(pos), len(neg), (rows["class"] == 0).sum())
    return pd.concat(kept).sort_values("row")


def prepare_ncc(
    candidates_csv: Path | str,
    manifest_tsv: Path | str,
    ct_h5_files: list[Path | str],
    out_h5: Path | str,
    settings: NCCSettings,
    synthetic: bool,
) -> pd.DataFrame:
    """Cut a cube around every kept candidate from the preprocessed scans into the NCC task file; return its index."""
    candidates = read_candidates(candidates_csv)
    manifest = read_tsv(manifest_tsv)
    # Scans kept for the target tasks only (thinner than min_slices) are NCC scans too: a pretraining filter must not
    # change the candidate set.
    stored = manifest.status.isin(TASK_STATUSES)
    usable = manifest[stored].drop_duplicates("id").set_index("id")
    excluded_ids = set(manifest.id[~stored]) - set(usable.index)
    files: dict[str, Path] = {}
    for path in map(Path, ct_h5_files):
        with read_h5(path) as h5:
            files.update(dict.fromkeys(h5["scans"] if "scans" in h5 else [], path))
            stored = json.loads(h5.attrs.get("settings", "{}")).get("hu_window", settings.hu_window)
        if settings.hu_window[0] < stored[0] or settings.hu_window[1] > stored[1]:
            # The scans were clipped to the preprocessing window: HU beyond it are gone and read back as its limits.
            log.warning("%s holds HU clipped to %s, narrower than NCC's window %s", path, stored, settings.hu_window)
    known = candidates.seriesuid.isin(usable.index) & candidates.seriesuid.isin(files)
    skipped = Counter(
        "excluded scan" if uid in excluded_ids else "scan not in the manifest or the HDF5 files"
        for uid in candidates.seriesuid[~known]
    )
    for reason, n in skipped.items():
        log.warning("skipped %d candidates of %d: %s", n, len(candidates), reason)
    candidates = candidates[known].copy()
    candidates["split"] = usable.split.reindex(candidates.seriesuid).to_numpy()
    candidates["subset"] = usable.subset.reindex(candidates.seriesuid).to_numpy()
    candidates = select_candidates(candidates, settings)
    if candidates.empty:
        raise NoUsableDataError(f"no NCC candidate of {candidates_csv} falls on a usable preprocessed scan")

    size_zyx = tuple(settings.cube_size_xyz[::-1])
    half = np.asarray(size_zyx) // 2  # the candidate lands on voxel size // 2 of the cube
    lo, hi = settings.hu_window
    rows, outside = [], 0
    info = dict(source=str(candidates_csv), settings=asdict(settings))
    with TaskWriter(out_h5, "ncc", size_zyx, synthetic, info["source"], info["settings"]) as writer:
        groups = candidates.groupby("seriesuid", sort=False)
        for uid, group in tqdm(groups, total=groups.ngroups, desc="NCC cubes", unit="scan"):
            with read_h5(files[uid]) as h5:
                data = h5["scans"][uid]
                attrs = data.attrs
                centres = world_to_index(
                    group[["coordX", "coordY", "coordZ"]].to_numpy(float),
                    attrs["origin_xyz"],
                    attrs["spacing_xyz"],
                    attrs["direction"],
                )
                voxel = np.rint(centres).astype(int)
                for (_, cand), centre in zip(group.iterrows(), voxel):
                    if np.any(centre < 0) or np.any(centre >= data.shape):
                        outside += 1
                        continue
                    hu = crop_padded(data, centre - half, size_zyx, fill=lo)
                    cube = to_unit(np.clip(hu, lo, hi), (lo, hi))
                    sample_id = f"{uid}:{cand.row}"
                    writer.add(cand.split, cube, [cand["class"]], sample_id, source=uid)
                    rows.append(
                        dict(
                            id=sample_id,
                            split=cand.split,
                            seriesuid=uid,
                            subset=cand.subset,
                            row=int(cand.row),
                            label=int(cand["class"]),
                            coordX=cand.coordX,
                            coordY=cand.coordY,
                            coordZ=cand.coordZ,
                            index_z=int(centre[0]),
                            index_y=int(centre[1]),
                            index_x=int(centre[2]),
                        )
                    )
        if outside:
            log.warning("skipped %d candidates whose centre lies outside their scan", outside)
        if not rows:  # raised inside the block, so that no empty task file appears
            raise NoUsableDataError(f"no NCC candidate of {candidates_csv} lies inside its scan")
    index = pd.DataFrame(rows)
    counts = index.groupby(["split", "label"]).size().to_dict()
    log.info("NCC: %d cubes of %s voxels (split, label): %s -> %s", len(index), size_zyx, counts, out_h5)
    return index
