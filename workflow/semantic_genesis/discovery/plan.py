"""Self-discovery: nearest neighbours in latent space, air-tested crop coordinates and the table of pseudo-classes.

Arrays are indexed [z, y, x]; a 2D image (H, W) is handled as a single slice (1, H, W). Sizes in settings are written
(x, y[, z]) as in the config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from ..preprocess.ct import box
from ..runtime.files import read_h5, write_tsv
from ..settings import Settings
from .inputs import ct_scans, cxr_scans, read_latents, scan_shapes

log = logging.getLogger(__name__)

Start = tuple[int, int, int]
PLAN_COLUMNS = ["class", "reference", "neighbour", "rank", "distance", "split", "start_z", "start_y", "start_x"]
SELECTIONS = ("paper", "released")


@dataclass(frozen=True)
class DiscoverySettings(Settings):
    """How pseudo-classes are discovered; defaults are the paper's 3D values.

    Margins are fractions of the scan size per axis, in the order of `crop_size_xyz`: `margin_lo` is the share of the
    scan kept free before a crop's first voxel, `margin_hi` the share kept free after its last voxel. Measuring the
    upper margin from the crop's end (not its start) keeps the window valid when a crop is large relative to the scan.
    In-plane values come from the released code's 512-wide LUNA16 range x, y in [100, size - 165] for 64-wide crops:
    lo = 100/512, hi = (165 - 64)/512 = 101/512. Its slice range z in [30, size_z - 66] for 32-slice crops gives 30
    slices before and 34 after the crop; they are expressed as fractions of a typical 256-slice LUNA16 scan (30/256,
    34/256), because absolute numbers would leave no room on the 96-slice scans that preprocessing still accepts.
    """

    ALIASES: ClassVar[dict[str, str]] = {"crop_size": "crop_size_xyz"}

    classes: int = 44
    k: int = 200
    val_neighbours: int = 30
    selection: str = "paper"
    crop_size_xyz: tuple[int, ...] = (64, 64, 32)
    margin_lo: tuple[float, ...] = (100 / 512, 100 / 512, 30 / 256)
    margin_hi: tuple[float, ...] = (101 / 512, 101 / 512, 34 / 256)
    min_distance: float = 5.0
    air_threshold: float = 0.425
    air_fraction: float = 0.15
    max_tries: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        """Reject inconsistent settings early, before any scan is read."""
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, not {self.selection!r}")
        if len(self.crop_size_xyz) not in (2, 3):
            raise ValueError(f"crop_size_xyz needs 2 (2D) or 3 (3D) values, got {self.crop_size_xyz}")
        if not len(self.margin_lo) == len(self.margin_hi) == len(self.crop_size_xyz):
            raise ValueError("margin_lo, margin_hi and crop_size_xyz need one value per axis each")
        if min(self.classes, self.k, self.val_neighbours, self.max_tries) < 1:
            raise ValueError("classes, k, val_neighbours and max_tries must be positive")

    def as_dict(self) -> dict:
        """Plain values for JSON attributes."""
        return asdict(self)

    @property
    def crop_zyx(self) -> Start:
        """Crop size as array extents (z, y, x); 1 slice in 2D."""
        return tuple(int(s) for s in reversed(self._pad(self.crop_size_xyz, 1)))

    @property
    def margins_zyx(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(lo, hi) margin fractions as (z, y, x); 2D has no margin along its single slice."""
        return tuple(reversed(self._pad(self.margin_lo, 0.0))), tuple(reversed(self._pad(self.margin_hi, 0.0)))

    @staticmethod
    def _pad(values: tuple, z_value: float) -> tuple:
        return tuple(values) if len(values) == 3 else (*values, z_value)


def as_zyx(shape: Sequence[int]) -> Start:
    """A 2D shape (H, W) as (1, H, W); 3D shapes unchanged."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"expected a 2D or 3D shape, got {shape}")
    return (1, *shape) if len(shape) == 2 else shape


def nearest_neighbours(
    latents: np.ndarray, query: int | np.ndarray, k: int, candidates: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean top-k rows of `latents` (indices into `latents`, distances), nearest first."""
    latents = np.asarray(latents, dtype=np.float64)  # float64 keeps brute force's |a|^2 - 2ab + |b|^2 exact enough
    pool = np.arange(len(latents)) if candidates is None else np.asarray(candidates, dtype=np.int64)
    if k > len(pool):
        raise ValueError(f"asked for {k} neighbours among {len(pool)} candidates")
    vector = latents[query] if np.isscalar(query) else np.asarray(query, dtype=np.float64)
    search = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(latents[pool])
    distances, found = search.kneighbors(vector[None])
    indices, distances = pool[found[0]], distances[0]
    if np.isscalar(query) and query in pool:
        # Rounding or a duplicate latent could otherwise rank another patient ahead of the reference itself.
        others = indices != query
        indices = np.concatenate([[query], indices[others]])[:k]
        distances = np.concatenate([[0.0], distances[others]])[:k]
    return indices, distances


def air_score(crop: np.ndarray, threshold: float = 0.425, lookahead: int = 3) -> float:
    """Sum over voxels of d = 1 - k / (lookahead - 1), k the first of the next `lookahead` slices reaching threshold.

    Slice k = 0 is the voxel's own slice. Where no slice in reach reaches the threshold, d = 0: that is what the
    released loop computes (its k stops at lookahead - 1), whereas "k = 3 if none" taken literally would give
    d = -0.5 and reward air. Slices past the end of the crop count as below threshold, so voxels in the last slice can
    only score 1 or 0 and in the one before 1, 0.5 or 0 (the released code instead reads two slices beyond the crop).
    A 2D crop is one slice: d is 1 where a pixel reaches the threshold, else 0.
    """
    crop = np.asarray(crop)
    mask = (crop >= threshold).reshape(as_zyx(crop.shape))
    found = np.zeros(mask.shape, bool)
    score = 0.0
    for k in range(min(lookahead, len(mask))):
        hit = np.zeros(mask.shape, bool)
        hit[: len(mask) - k] = mask[k:]
        hit &= ~found
        score += (1.0 - k / (lookahead - 1)) * np.count_nonzero(hit)
        found |= hit
    return float(score)


def passes_air_test(crop: np.ndarray, threshold: float = 0.425, fraction: float = 0.15) -> bool:
    """True when sum(d) <= fraction * crop size, i.e. the crop is not mostly dense tissue (the original's lung_max)."""
    return air_score(crop, threshold) <= fraction * np.asarray(crop).size


def air_acceptor(crop: Callable[[Start, Start], np.ndarray], settings: DiscoverySettings) -> Callable[[Start], bool]:
    """An `accept` for choose_coordinates: the air test on the crop that `crop(start_zyx, size_zyx)` returns."""
    size = settings.crop_zyx
    return lambda start: passes_air_test(crop(start, size), settings.air_threshold, settings.air_fraction)


def start_range(shape_zyx: Sequence[int], settings: DiscoverySettings) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive lowest and highest crop start per axis (z, y, x) allowed by the margins."""
    shape = np.array(as_zyx(shape_zyx))
    lo_frac, hi_frac = (np.array(m) for m in settings.margins_zyx)
    lo = np.ceil(lo_frac * shape).astype(int)
    hi = np.floor(shape - hi_frac * shape).astype(int) - np.array(settings.crop_zyx)
    if np.any(hi < lo):
        raise ValueError(
            f"scan of shape {tuple(shape)} (z, y, x) has no room for a {settings.crop_zyx} crop inside margins "
            f"{settings.margins_zyx}"
        )
    return lo, hi


def choose_coordinates(
    volume_shape_zyx: Sequence[int],
    n: int,
    settings: DiscoverySettings,
    rng: np.random.Generator,
    accept: Callable[[Start], bool],
    existing: Sequence[Start] = (),
) -> list[Start]:
    """`n` random crop starts inside the margins, `min_distance` from each other and `existing`, passing `accept`."""
    lo, hi = start_range(volume_shape_zyx, settings)
    taken = np.array(list(existing), dtype=float).reshape(-1, 3)
    chosen: list[Start] = []
    for _ in range(settings.max_tries):
        if len(chosen) == n:
            break
        start = rng.integers(lo, hi + 1)
        if len(taken) and np.linalg.norm(taken - start, axis=1).min() < settings.min_distance:
            continue
        candidate = tuple(int(v) for v in start)
        if accept(candidate):
            chosen.append(candidate)
            taken = np.vstack([taken, start])
    if len(chosen) < n:
        raise RuntimeError(
            f"found only {len(chosen)} of {n} crop coordinates in {settings.max_tries} tries on a scan of shape "
            f"{tuple(volume_shape_zyx)}: relax min_distance, the margins or the air test (threshold "
            f"{settings.air_threshold}, fraction {settings.air_fraction}), or raise max_tries"
        )
    return chosen


def fit_inside(start_zyx: Sequence[int], shape_zyx: Sequence[int], size_zyx: Sequence[int]) -> Start:
    """Shift a crop start so the crop lies inside a scan (the reference's coordinate in a smaller neighbour)."""
    limit = np.array(as_zyx(shape_zyx)) - np.array(size_zyx)
    return tuple(int(v) for v in np.clip(start_zyx, 0, limit))


def _rows(
    label: int,
    reference: str,
    found: tuple[np.ndarray, np.ndarray],
    split: str,
    start: Start,
    ids: list[str],
    shapes: Mapping[str, Sequence[int]],
    size: Start,
) -> list[dict]:
    """Plan rows of one class and split, each crop start fitted inside its own scan."""
    return [
        dict(
            zip(
                PLAN_COLUMNS,
                (label, reference, ids[n], rank, float(d), split, *fit_inside(start, shapes[ids[n]], size)),
            )
        )
        for rank, (n, d) in enumerate(zip(*found))
    ]


def plan_classes(
    latents: np.ndarray,
    ids: Sequence[str],
    splits: Sequence[str],
    settings: DiscoverySettings,
    rng: np.random.Generator,
    accept_factory: Callable[[str], Callable[[Start], bool]],
    shapes: Mapping[str, Sequence[int]],
) -> pd.DataFrame:
    """The table of pseudo-classes: for every class its reference, neighbours (train and val) and crop starts.

    Training rows are the `k` nearest training patients of the class's reference (the reference is rank 0); validation
    rows are the `val_neighbours` nearest validation patients of the same reference, so no patient is in both.
    "paper" draws one reference and all coordinates on it; "released" draws a reference and one coordinate per class,
    each at least `min_distance` from the earlier classes' coordinates. A coordinate is used unchanged in every
    neighbour's own grid (no registration); where a neighbour is too small for the crop there, the crop is shifted
    inside it, and start_z/y/x record where it was actually taken. Scans smaller than the crop itself are left out of
    the candidates. `accept_factory(reference_id)` returns the test a coordinate must pass on the reference (see
    air_acceptor); `shapes` maps every id to its scan's array shape.
    """
    ids = list(ids)
    splits = np.asarray(splits)
    size = settings.crop_zyx
    fits = np.array([all(s >= c for s, c in zip(as_zyx(shapes[i]), size)) for i in ids])
    if not fits.all():
        log.warning("%d scans smaller than the %s crop are not used: %s", (~fits).sum(), size, np.array(ids)[~fits])
    train = np.flatnonzero((splits == "train") & fits)
    val = np.flatnonzero((splits == "val") & fits)
    for name, pool, need in (("train", train, settings.k), ("val", val, settings.val_neighbours)):
        if len(pool) < need:
            raise ValueError(f"self-discovery needs {need} {name} scans, only {len(pool)} are usable")

    @cache
    def neighbourhood(reference: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        return (
            nearest_neighbours(latents, reference, settings.k, train),
            nearest_neighbours(latents, latents[reference], settings.val_neighbours, val),
        )

    rows: list[dict] = []
    starts: list[Start] = []
    # Paper: one reference carries every class. Released: each class draws its own reference and coordinate.
    references = [int(rng.choice(train))] if settings.selection == "paper" else []
    for label in range(settings.classes):
        if settings.selection == "released":
            references.append(int(rng.choice(train)))
        reference = references[-1]
        if len(starts) <= label:
            sid = ids[reference]
            wanted = settings.classes if settings.selection == "paper" else 1
            starts += choose_coordinates(as_zyx(shapes[sid]), wanted, settings, rng, accept_factory(sid), starts)
        in_train, in_val = neighbourhood(reference)
        rows += _rows(label, ids[reference], in_train, "train", starts[label], ids, shapes, size)
        rows += _rows(label, ids[reference], in_val, "val", starts[label], ids, shapes, size)
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    counts = plan.split.value_counts()
    log.info("%s selection: %d classes, %s crops", settings.selection, settings.classes, counts.to_dict())
    return plan


def write_plan(plan: pd.DataFrame, path: Path | str) -> None:
    """Write the class table atomically as TSV."""
    write_tsv(plan, path)


def read_plan(path: Path | str) -> pd.DataFrame:
    """Read a class table written by write_plan, keeping ids as strings."""
    return pd.read_csv(path, sep="\t", dtype={"reference": str, "neighbour": str, "split": str}, keep_default_na=False)


def _plan(
    latents_h5: Path | str,
    open_scan: Callable,
    shapes: Callable[[list[str]], dict],
    settings: DiscoverySettings,
    out_tsv: Path | str,
    *,
    air_test: bool,
) -> None:
    """Pick references, neighbours and crop coordinates from the latents; write the class table.

    `shapes(ids)` maps every id to its array shape."""
    latents, ids, splits = read_latents(latents_h5)

    def accept_factory(sid: str) -> Callable:
        if not air_test:
            return lambda start: True
        scan = open_scan(sid)
        return air_acceptor(lambda start, size: scan[box(start, size)], settings)

    rng = np.random.default_rng(settings.seed)
    plan = plan_classes(latents, ids, splits, settings, rng, accept_factory, shapes(ids))
    write_plan(plan, out_tsv)
    log.info(
        "%d classes from %d references: %d train and %d val rows",
        plan["class"].nunique(),
        plan.reference.nunique(),
        (plan.split == "train").sum(),
        (plan.split == "val").sum(),
    )


def plan_ct(latents_h5: Path | str, h5_files: list[str], settings: DiscoverySettings, out_tsv: Path | str) -> None:
    """The 3D class table; coordinates must pass the air test on the reference."""
    open_scan = ct_scans(h5_files)
    _plan(latents_h5, open_scan, lambda ids: scan_shapes(open_scan, ids), settings, out_tsv, air_test=True)


def plan_cxr(latents_h5: Path | str, images_h5: Path | str, settings: DiscoverySettings, out_tsv: Path | str) -> None:
    """The 2D class table. No air test: the paper has none for X-rays, and most of a film is above its threshold.

    Every stored radiograph has the same size, so the shapes need no image reads."""
    with read_h5(images_h5) as h5:
        shape = h5["images"].shape[1:]
    _plan(latents_h5, cxr_scans(images_h5), lambda ids: dict.fromkeys(ids, shape), settings, out_tsv, air_test=False)


def plan(dims: int, latents_h5: Path | str, h5_files: list[str], settings: DiscoverySettings, out_tsv: Path | str):
    """Entry point of rule plan: the class table of one dimension."""
    if dims == 3:
        plan_ct(latents_h5, h5_files, settings, out_tsv)
    else:
        plan_cxr(latents_h5, h5_files[0], settings, out_tsv)
