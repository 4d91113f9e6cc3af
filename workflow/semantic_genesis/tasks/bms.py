"""BMS, brain tumour segmentation: BraTS 2018 FLAIR crops with whole-tumour masks (label > 0) in the task store.

Real layout: `<root>/{HGG,LGG}/<subject>/<subject>_flair.nii.gz` and `<subject>_seg.nii.gz` (t1, t1ce and t2 are
ignored). Subjects are split train/val/test by subject, with a seed or, as the authors did, by fold files
(`folds`: one subject id per line, the first CSV column, as their `keras/downstream_tasks/data/bms/fold_{1,2,3}.csv`;
the last file is the test fold, the others are pooled, shuffled by Python's `random.Random(4)` and their first eighth
is validation, exactly as their `bms_config`). FLAIR is normalised per subject: values are clipped at the 0.5th and
99.5th percentiles of the brain voxels (> 0; BraTS zeroes everything outside the head) and scaled to [0, 1], so the
background stays 0. Training and validation subjects give `crops_per_subject` crops of crop_size voxels inside the
bounding box of their non-zero voxels, at least half of them holding tumour; test subjects are tiled whole
(`test_crops: tiles`: crops side by side covering the head's bounding box, each voxel once, so the pooled test IoU
is the whole volume's) or sampled like the others (`sampled`). Crops are resized to cube_size (trilinear for the
image, nearest for the mask); a crop reaching past the volume is zero-padded.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from ..preprocess.readers import InputError, NoUsableDataError, read_volume
from ..resize import spline_on_centres
from ..settings import Settings
from .taskdata import TaskWriter

log = logging.getLogger(__name__)

GRADES = ("HGG", "LGG")
SAMPLE_COLUMNS = ["id", "subject", "grade", "split", "tumour_fraction"]
TEST_CROPS = ("tiles", "sampled")
# The authors' bms_config shuffles the pooled training folds with random.Random(4) and validates on the first eighth.
FOLD_SHUFFLE_SEED = 4
FOLD_VALIDATION_DIVISOR = 8


@dataclass(frozen=True)
class BMSSettings(Settings):
    """How BraTS subjects become task samples (sizes in voxels, x, y, z)."""

    ALIASES: ClassVar[dict[str, str]] = {"crop_size": "crop_size_xyz", "cube_size": "cube_size_xyz"}

    crop_size_xyz: tuple[int, int, int] = (100, 100, 50)
    cube_size_xyz: tuple[int, int, int] = (64, 64, 32)
    crops_per_subject: int = 4
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    folds: tuple[str, ...] = ()
    test_crops: str = "tiles"

    def __post_init__(self):
        if self.test_crops not in TEST_CROPS:
            raise ValueError(f"test_crops is {self.test_crops!r}; use one of {TEST_CROPS}")
        if len(self.folds) == 1:
            raise ValueError(
                f"folds lists one file ({self.folds[0]}); give the training folds and then the test fold, e.g. the "
                "authors' fold_1.csv, fold_2.csv, fold_3.csv"
            )


def subject_files(folder: Path) -> tuple[Path | None, Path | None]:
    """The subject's FLAIR and segmentation files (.nii.gz or .nii), None where missing."""
    found = []
    for kind in ("flair", "seg"):
        hits = [folder / f"{folder.name}_{kind}{ext}" for ext in (".nii.gz", ".nii")]
        found.append(next((h for h in hits if h.exists()), None))
    return found[0], found[1]


def find_subjects(root: Path | str) -> pd.DataFrame:
    """Subject folders under <root>/HGG and <root>/LGG, sorted by name: subject, grade, folder."""
    root = Path(root)
    rows = [
        dict(subject=d.name, grade=grade, folder=str(d))
        for grade in GRADES
        if (root / grade).is_dir()
        for d in sorted((root / grade).iterdir())
        if d.is_dir() and not d.name.startswith(".")
    ]
    frame = pd.DataFrame(rows, columns=["subject", "grade", "folder"])
    return frame.sort_values("subject", kind="stable").reset_index(drop=True)


def split_subjects(subjects: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """Assign each subject to train, val or test at random (seeded); a split with a non-zero fraction gets at least
    one subject while train keeps at least one."""
    n = len(subjects)
    order = np.random.default_rng(seed).permutation(n)
    counts = {}
    for split, fraction in (("val", val_fraction), ("test", test_fraction)):
        counts[split] = int(round(n * fraction))
        if fraction > 0 and counts[split] == 0:
            counts[split] = 1
    # Train keeps at least one subject: shrink the larger held-out split first.
    while counts["val"] + counts["test"] > max(n - 1, 0) and counts["val"] + counts["test"] > 0:
        counts["val" if counts["val"] >= counts["test"] else "test"] -= 1
    names = [sorted(subjects)[i] for i in order]
    splits = ["val"] * counts["val"] + ["test"] * counts["test"]
    splits += ["train"] * (n - len(splits))
    return dict(zip(names, splits))


def read_fold(path: Path | str) -> list[str]:
    """The subject ids of one fold file (first CSV column, blank lines skipped); InputError if missing, empty or
    repeating an id."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "fold file not found (tasks.bms.folds)")
    with open(path, newline="") as handle:
        ids = [row[0].strip() for row in csv.reader(handle) if row and row[0].strip()]
    if not ids:
        raise InputError(path, "fold file lists no subject id")
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InputError(path, f"fold file lists {repeated[:5]} more than once")
    return ids


def fold_splits(folds: list[list[str]]) -> dict[str, str]:
    """Subject -> split from fold lists as the authors' bms_config: the last fold is test; the others, in order,
    shuffled by random.Random(4), give validation their first eighth and train the rest."""
    seen: dict[str, int] = {}
    for k, fold in enumerate(folds):
        for subject in fold:
            if subject in seen:
                raise ValueError(f"subject {subject} is in fold {seen[subject] + 1} and fold {k + 1}")
            seen[subject] = k
    pool = [s for fold in folds[:-1] for s in fold]
    random.Random(FOLD_SHUFFLE_SEED).shuffle(pool)
    n_val = len(pool) // FOLD_VALIDATION_DIVISOR
    splits = dict.fromkeys(pool[:n_val], "val") | dict.fromkeys(pool[n_val:], "train")
    return splits | dict.fromkeys(folds[-1], "test")


def _same_geometry(a: sitk.Image, b: sitk.Image) -> str | None:
    """Why two images do not share a voxel grid, or None if they do."""
    if a.GetSize() != b.GetSize():
        return f"FLAIR size {a.GetSize()} differs from the segmentation's {b.GetSize()}"
    for what, va, vb in (
        ("spacing", a.GetSpacing(), b.GetSpacing()),
        ("origin", a.GetOrigin(), b.GetOrigin()),
        ("direction", a.GetDirection(), b.GetDirection()),
    ):
        if not np.allclose(va, vb, atol=1e-3):
            return f"FLAIR {what} {np.round(va, 3).tolist()} differs from the segmentation's {np.round(vb, 3).tolist()}"
    return None


def load_subject(folder: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """FLAIR normalised to [0, 1] (float32) and the whole-tumour mask (bool), [z, y, x]; InputError if unusable."""
    folder = Path(folder)
    flair_path, seg_path = subject_files(folder)
    if flair_path is None:
        raise InputError(folder, f"no FLAIR file {folder.name}_flair.nii.gz")
    if seg_path is None:
        raise InputError(folder, f"no segmentation file {folder.name}_seg.nii.gz")
    flair_image, seg_image = read_volume(flair_path), read_volume(seg_path)
    if (problem := _same_geometry(flair_image, seg_image)) is not None:
        raise InputError(folder, problem)
    flair = sitk.GetArrayFromImage(flair_image).astype(np.float32)
    seg = sitk.GetArrayFromImage(seg_image)
    brain = flair > 0
    if brain.sum() < 1000:
        raise InputError(flair_path, f"only {int(brain.sum())} voxels are > 0; a brain is expected")
    lo, hi = np.percentile(flair[brain], [0.5, 99.5])
    if hi <= lo:
        raise InputError(flair_path, f"has no contrast inside the brain (all values near {lo:g})")
    image = np.clip((flair - lo) / (hi - lo), 0, 1)
    image[~brain] = 0  # background stays 0 even when the 0.5th percentile is above it
    # Some re-saved segmentations are float: round before testing labels.
    mask = np.rint(seg) > 0 if np.issubdtype(seg.dtype, np.floating) else seg > 0
    return image, mask


def _start_range(lo: int, hi: int, crop: int, size: int) -> tuple[int, int]:
    """Crop starts along one axis that keep the crop inside [lo, hi) (or covering it, if the crop is larger)."""
    a, b = sorted((lo, hi - crop))
    return int(np.clip(a, 0, size - crop)), int(np.clip(b, 0, size - crop))


def crop_starts(
    brain: np.ndarray, mask: np.ndarray, crop_zyx: tuple[int, ...], n: int, rng: np.random.Generator
) -> list[tuple[int, ...]]:
    """n crop starts [z, y, x] in the brain's bounding box; the first ceil(n / 2) contain a tumour voxel if any."""
    nonzero = np.argwhere(brain)
    lo, hi = nonzero.min(0), nonzero.max(0) + 1
    ranges = [_start_range(int(a), int(b), c, s) for a, b, c, s in zip(lo, hi, crop_zyx, brain.shape)]
    tumour = np.flatnonzero(mask)
    n_tumour = (n + 1) // 2 if tumour.size else 0
    starts = []
    for k in range(n):
        if k < n_tumour:
            voxel = np.unravel_index(tumour[rng.integers(tumour.size)], mask.shape)
            start = []
            for v, (a, b), c, s in zip(voxel, ranges, crop_zyx, brain.shape):
                # Starts that keep the voxel inside the crop and the crop inside the bounding-box range.
                first, last = max(a, v - c + 1), min(b, v)
                fallback = int(np.clip(v - c // 2, 0, s - c))
                start.append(int(rng.integers(first, last + 1)) if first <= last else fallback)
        else:
            start = [int(rng.integers(a, b + 1)) for a, b in ranges]
        starts.append(tuple(start))
    return starts


def _pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-pad an array around its centre to at least `shape`."""
    pad = [(max(0, s - n) // 2, max(0, s - n) - max(0, s - n) // 2) for n, s in zip(array.shape, shape)]
    return np.pad(array, pad) if any(p != (0, 0) for p in pad) else array


def tile_starts(brain: np.ndarray, crop_zyx: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Starts [z, y, x] of crops side by side that cover the brain's bounding box, the grid centred on it (starts
    may lie outside the volume)."""
    nonzero = np.argwhere(brain)
    lo, hi = nonzero.min(0), nonzero.max(0) + 1
    axes = []
    for a, b, c in zip(lo, hi, crop_zyx):
        count = -(-(int(b) - int(a)) // c)
        first = int(a) - (count * c - (int(b) - int(a))) // 2
        axes.append([first + k * c for k in range(count)])
    return [tuple(int(axis[i]) for axis, i in zip(axes, t)) for t in np.ndindex(*(len(a) for a in axes))]


def window(array: np.ndarray, start: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    """array[start : start + size], zero where the window reaches past the array."""
    out = np.zeros(size, array.dtype)
    src = tuple(slice(max(s, 0), min(s + n, dim)) for s, n, dim in zip(start, size, array.shape))
    dst = tuple(slice(r.start - s, r.stop - s) for r, s in zip(src, start))
    if all(r.stop > r.start for r in src):
        out[dst] = array[src]
    return out


def subject_samples(
    image: np.ndarray, mask: np.ndarray, settings: BMSSettings, rng: np.random.Generator, tiled: bool = False
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(crop name, image cube float32 in [0, 1], mask cube uint8) for each crop of one subject: sampled crops
    "0", "1", ... or, tiled, the crops covering the head "tile_z_y_x"."""
    crop = tuple(settings.crop_size_xyz[::-1])
    cube = tuple(settings.cube_size_xyz[::-1])
    if tiled:
        starts = tile_starts(image > 0, crop)
        names = [f"tile_{z}_{y}_{x}" for z, y, x in np.ndindex(*_grid_counts(starts))]
    else:
        image, mask = _pad_to(image, crop), _pad_to(mask, crop)
        starts = crop_starts(image > 0, mask, crop, settings.crops_per_subject, rng)
        names = [str(k) for k in range(len(starts))]
    out = []
    for name, start in zip(names, starts):
        cube_image = np.clip(spline_on_centres(window(image, start, crop), cube, order=1), 0, 1)
        cube_mask = spline_on_centres(window(mask, start, crop).astype(np.uint8), cube, order=0)
        out.append((name, cube_image, cube_mask))
    return out


def _grid_counts(starts: list[tuple[int, ...]]) -> tuple[int, ...]:
    """How many distinct starts each axis of a tile grid has."""
    return tuple(len({s[axis] for s in starts}) for axis in range(len(starts[0])))


def _splits_from_folds(files: tuple[str, ...], candidates: list[str], exclude) -> dict[str, str]:
    """The fold files' splits of the subjects found; found subjects in no fold are excluded, listed ones not found
    are logged."""
    folds = [read_fold(f) for f in files]
    try:
        listed = fold_splits(folds)
    except ValueError as error:
        raise InputError(Path(files[0]).parent, f"fold files {list(files)}: {error}") from None
    for name in candidates:
        if name not in listed:
            exclude(name, f"in none of the fold files {list(files)}")
    found = set(candidates)
    missing = [name for name in listed if name not in found]
    if missing:
        log.warning(
            "BMS: %d of the %d subjects listed in the fold files are not usable under the BraTS root: %s%s",
            len(missing),
            len(listed),
            ", ".join(missing[:10]),
            " ..." if len(missing) > 10 else "",
        )
    return {name: split for name, split in listed.items() if name in found}


def prepare_bms(root: Path | str, out_h5: Path | str, settings: BMSSettings, synthetic: bool) -> pd.DataFrame:
    """Write the BMS task file from a BraTS-style folder; return the sample index (id, subject, grade, split,
    tumour_fraction), with the excluded subjects and their reasons in `.attrs["excluded"]`."""
    subjects = find_subjects(root)
    if subjects.empty:
        raise NoUsableDataError(f"no BraTS subject folders under {Path(root) / 'HGG'} or {Path(root) / 'LGG'}")
    excluded: dict[str, str] = {}

    def exclude(name: str, reason: str) -> None:
        excluded[name] = reason
        log.warning("excluded BraTS subject %s: %s", name, reason)

    duplicated = subjects.subject.duplicated(keep="first")
    for name in subjects.subject[duplicated]:
        exclude(name, "subject found under both HGG and LGG; the HGG copy is used")
    subjects = subjects[~duplicated]
    # Subjects whose files are missing cannot be split usefully; reading errors show up later and are rare.
    present = [subject_files(Path(f)) for f in subjects.folder]
    for name, folder, (flair, seg) in zip(subjects.subject, subjects.folder, present):
        if flair is None or seg is None:
            exclude(name, f"no {'FLAIR' if flair is None else 'segmentation'} file in {Path(folder)}")
    candidates = [s for s in subjects.subject if s not in excluded]
    if settings.folds:
        splits = _splits_from_folds(settings.folds, candidates, exclude)
    else:
        splits = split_subjects(candidates, settings.val_fraction, settings.test_fraction, settings.seed)
    log.info(
        "BMS: %d subjects under %s, %d with both files, settings %s", len(subjects), root, len(candidates), settings
    )
    rows = []
    cube = tuple(settings.cube_size_xyz[::-1])
    with TaskWriter(
        out_h5,
        "bms",
        cube,
        synthetic=synthetic,
        source="synthetic BraTS-like phantom" if synthetic else str(root),
        settings=asdict(settings),
    ) as writer:
        for row in tqdm(subjects.itertuples(), total=len(subjects), desc="BMS subjects", unit="subject"):
            if row.subject not in splits:
                continue
            try:
                image, mask = load_subject(row.folder)
            except InputError as error:
                exclude(row.subject, str(error))
                continue
            # One generator per subject: its crops do not depend on which other subjects are usable.
            rng = np.random.default_rng([settings.seed, *row.subject.encode()])
            tiled = splits[row.subject] == "test" and settings.test_crops == "tiles"
            for name, cube_image, cube_mask in subject_samples(image, mask, settings, rng, tiled):
                sample_id = f"{row.subject}:{name}"
                writer.add(splits[row.subject], cube_image, cube_mask, sample_id)
                rows.append((sample_id, row.subject, row.grade, splits[row.subject], float(cube_mask.mean())))
        if not rows:
            raise NoUsableDataError(
                f"no usable BraTS subject out of {len(subjects)} under {root}; "
                + "; ".join(f"{k}: {v}" for k, v in list(excluded.items())[:5])
            )
        writer.h5.attrs["excluded"] = json.dumps(excluded, sort_keys=True)
    index = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    index.attrs["excluded"] = excluded
    counts = index.groupby("split").subject.nunique().to_dict()
    log.info("BMS: %d samples from subjects per split %s; %d subjects excluded", len(index), counts, len(excluded))
    return index
