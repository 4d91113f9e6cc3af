"""3D preprocessing: canonical orientation, optional resampling, HU window, compact HDF5 storage and thumbnails."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import __version__
from ..runtime.files import atomic_path, read_h5, read_tsv, write_chunks, write_tsv
from ..runtime.parallel import ordered_map
from ..settings import Settings
from .readers import InputError, NoUsableDataError, read_volume, scan_id

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["id", "subset", "split", "path", "status", "reason", "shape", "spacing"]
# Manifest statuses: "ok" scans serve pretraining and the target tasks; "tasks_only" scans are stored but fail a
# pretraining filter (min_slices): a thin scan is still a valid NCC scan; "excluded" scans are not stored.
TASK_STATUSES = ("ok", "tasks_only")
# implausible_chest_ct: the most voxels above +1000 HU, and the fewest of air/lung and of soft tissue, in a chest CT.
MAX_DENSE_FRACTION = 0.1
MIN_TISSUE_FRACTION = 0.01


@dataclass(frozen=True)
class CTSettings(Settings):
    """Preprocessing settings; sizes and spacings are (x, y, z) as in the config."""

    hu_window: tuple[int, int] = (-1000, 1000)
    min_slices: int = 96
    spacing_mm: tuple[float, float, float] | None = None
    orientation: str = "LPS"
    thumbnail_size: tuple[int, int, int] = (64, 64, 32)
    chunk: tuple[int, int, int] = (64, 64, 32)
    compression: str = "none"
    check_plausible: bool = True


@dataclass
class ProcessedScan:
    """One scan after preprocessing: the reoriented (and resampled) image, windowed where it is written."""

    image: sitk.Image
    window: tuple[int, int]
    thumbnail: np.ndarray
    not_for_pretraining: str | None = None  # why the scan serves the target tasks only

    @property
    def raw(self) -> np.ndarray:
        """The image's voxels before windowing, index [z, y, x] (a read-only view: valid while the scan is)."""
        return sitk.GetArrayViewFromImage(self.image)

    @property
    def hu(self) -> np.ndarray:
        """int16 HU inside the window, as a new array (the writer windows chunk by chunk instead)."""
        return window_hu(self.raw, self.window)

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        return tuple(self.image.GetSpacing())

    @property
    def origin_xyz(self) -> tuple[float, float, float]:
        return tuple(self.image.GetOrigin())

    @property
    def direction(self) -> tuple[float, ...]:
        return tuple(self.image.GetDirection())


def to_unit(hu: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Map HU (already inside the window) linearly to float32 in [0, 1]."""
    lo, hi = window
    return (hu.astype(np.float32) - lo) / float(hi - lo)


def reorient(image: sitk.Image, orientation: str) -> sitk.Image:
    """Permute/flip axes so that the image directions follow `orientation` (ITK's DICOMOrient convention)."""
    current = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    return image if current == orientation else sitk.DICOMOrient(image, orientation)


def resample(image: sitk.Image, spacing_xyz: tuple[float, float, float], fill_hu: float) -> sitk.Image:
    """Linear resampling to a new voxel spacing covering the same physical extent."""
    old_spacing = np.array(image.GetSpacing())
    size = np.maximum(1, np.round(np.array(image.GetSize()) * old_spacing / np.array(spacing_xyz))).astype(int)
    return sitk.Resample(
        image,
        [int(s) for s in size],
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        [float(s) for s in spacing_xyz],
        image.GetDirection(),
        float(fill_hu),
        sitk.sitkFloat32,
    )


def window_hu(array: np.ndarray, window: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Clip to the HU window into int16 `out` (default a new array) in one pass (lossless for integer HU; float HU are
    rounded)."""
    lo, hi = window
    if np.issubdtype(array.dtype, np.floating):
        array = np.rint(array)
    return np.clip(array, lo, hi, out=np.empty(array.shape, np.int16) if out is None else out, casting="unsafe")


def thumbnail(hu: np.ndarray, window: tuple[int, int], size_xyz: tuple[int, int, int], slab: int = 16) -> np.ndarray:
    """Whole scan (HU, windowed or not) resized to size_xyz by area averaging (anti-aliased), [0, 1] float16, index
    [z, y, x].

    Area averaging is separable, so slabs of slices are windowed and pooled in-plane first and the small result along
    z: no copy exceeds one slab, where pooling the whole volume at once would need twice the scan in float32.
    """
    nx, ny, nz = size_xyz
    slabs = (torch.from_numpy(window_hu(hu[z : z + slab], window)).float() for z in range(0, len(hu), slab))
    in_plane = torch.cat([F.adaptive_avg_pool2d(part, (ny, nx)) for part in slabs])
    pooled = F.adaptive_avg_pool3d(in_plane[None, None], (nz, ny, nx))[0, 0].numpy()
    return to_unit(pooled, window).astype(np.float16)


def implausible_chest_ct(hu: np.ndarray) -> str | None:
    """Why an array of Hounsfield units cannot be a chest CT, or None when it can.

    A chest CT holds air or lung (at most -700 HU) and soft tissue (-200 to 200 HU), and only bone and metal above
    +1000 HU, a few percent at most. A wrong pixel type in the header (MET_USHORT over signed data puts air at
    +64536), data not in HU, an all-air or a uniform volume fail this. Judged on every second voxel per axis."""
    sample = np.asarray(hu[::2, ::2, ::2])
    air = float((sample <= -700).mean())
    soft = float(((sample > -200) & (sample < 200)).mean())
    dense = float((sample > 1000).mean())
    if dense > MAX_DENSE_FRACTION:
        return (
            f"{100 * dense:.0f}% of voxels are above +1000 HU (bone and metal: a few % at most): not HU as a chest CT "
            "has them; is the header's pixel type right (e.g. MET_USHORT over signed data)?"
        )
    missing = [
        name
        for name, share in (("air or lung (<= -700 HU)", air), ("soft tissue (-200..200 HU)", soft))
        if share < MIN_TISSUE_FRACTION
    ]
    if missing:
        return f"has almost no {' and no '.join(missing)}: not a plausible chest CT"
    return None


def preprocess_scan(path: Path | str, settings: CTSettings) -> ProcessedScan:
    """Read, reorient, optionally resample and window one scan; raise InputError if it is unusable.

    A scan with fewer than min_slices slices is processed all the same, marked not_for_pretraining."""
    image = reorient(read_volume(path), settings.orientation)
    if settings.spacing_mm is not None:
        image = resample(image, settings.spacing_mm, fill_hu=settings.hu_window[0])
    slices = image.GetSize()[2]
    thin = (
        f"has {slices} slices, fewer than min_slices = {settings.min_slices}" if slices < settings.min_slices else None
    )
    hu = sitk.GetArrayViewFromImage(image)  # a view: ProcessedScan.raw is the same memory
    if settings.check_plausible and (problem := implausible_chest_ct(hu)):
        raise InputError(path, f"{problem} (preprocess.ct.check_plausible: false accepts it)")
    return ProcessedScan(
        image=image,
        window=settings.hu_window,
        thumbnail=thumbnail(hu, settings.hu_window, settings.thumbnail_size),
        not_for_pretraining=thin,
    )


def _window_into(out: np.ndarray, part: np.ndarray, window: tuple[int, int]) -> None:
    """write_chunks' fill: one chunk of raw HU windowed into its buffer."""
    window_hu(part, window, out=out)


def _fmt(values, digits: int | None = None) -> str:
    return "x".join(f"{v:.{digits}f}" if digits is not None else str(v) for v in values)


def _process(path: str, settings: CTSettings) -> tuple[str, ProcessedScan | str, float]:
    """Worker: the processed scan, or the reason it is unusable, and the seconds it took."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        result: ProcessedScan | str = preprocess_scan(path, settings)
    except InputError as error:
        result = error.problem
    return path, result, time.perf_counter() - start


def preprocess_subset(
    scans: list[str],
    subset: str,
    split: str,
    settings: CTSettings,
    out_h5: Path | str,
    out_tsv: Path | str,
    strict: bool = False,
    workers: int = 1,
) -> pd.DataFrame:
    """Preprocess the scans of one subset into one HDF5 file and a manifest; bad scans are recorded, not fatal."""
    rows = []
    seen: set[str] = set()
    chunk_zyx = tuple(reversed(settings.chunk))
    compression = None if settings.compression == "none" else settings.compression
    log.info("subset %s (%s): %d scans, settings %s", subset, split, len(scans), asdict(settings))
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(
            subset=subset,
            split=split,
            settings=json.dumps(asdict(settings)),
            version=__version__,
            layout="scans/<id>: int16 HU, index [z, y, x]; thumbnails/<id>: float16 [0, 1]",
        )
        work = partial(_process, settings=settings)
        progress = tqdm(
            ordered_map(work, [str(s) for s in scans], workers),
            total=len(scans),
            desc=f"preprocess {subset}",
            unit="scan",
        )
        for path, result, seconds in progress:
            sid = scan_id(path)
            row = dict(id=sid, subset=subset, split=split, path=path, status="ok", reason="", shape="", spacing="")
            if sid in seen:
                result = f"duplicate id {sid} in subset {subset}"
            if isinstance(result, str):
                row.update(status="excluded", reason=result)
                log.warning("excluded %s: %s", path, result)
                if strict:
                    raise InputError(path, f"{result} (preprocess.strict is true)")
            else:
                seen.add(sid)
                raw = result.raw
                if compression is None:
                    clip = partial(_window_into, window=settings.hu_window)
                    data = write_chunks(h5, f"scans/{sid}", raw, chunk_zyx, np.dtype(np.int16), clip)
                else:
                    chunks = tuple(min(c, s) for c, s in zip(chunk_zyx, raw.shape))
                    data = h5.create_dataset(f"scans/{sid}", data=result.hu, chunks=chunks, compression=compression)
                data.attrs.update(
                    spacing_xyz=result.spacing_xyz,
                    origin_xyz=result.origin_xyz,
                    direction=result.direction,
                    source=path,
                )
                h5.create_dataset(f"thumbnails/{sid}", data=result.thumbnail)
                row.update(shape=_fmt(raw.shape[::-1]), spacing=_fmt(result.spacing_xyz, 3))
                if result.not_for_pretraining:
                    reason = f"{result.not_for_pretraining}: kept for the target tasks, not pretraining"
                    row.update(status="tasks_only", reason=reason)
                    log.warning("%s: %s", path, reason)
                log.info("%s: %s voxels at %s mm in %.2f s", sid, row["shape"], row["spacing"], seconds)
            rows.append(row)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    write_tsv(manifest, out_tsv)
    counts = manifest.status.value_counts()
    log.info(
        "subset %s: %d usable, %d for the target tasks only, %d excluded",
        subset,
        counts.get("ok", 0),
        counts.get("tasks_only", 0),
        counts.get("excluded", 0),
    )
    return manifest


def gather_manifests(tsvs: list[str], out_tsv: Path | str, keep_out: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Concatenate per-subset manifests; exclude ids seen in an earlier subset; mark the usable scans in `keep_out`
    (id -> why) as kept for the target tasks only; fail if no usable scan remains."""
    manifest = pd.concat([read_tsv(t) for t in tsvs], ignore_index=True)
    held = (manifest.status == "ok") & manifest.id.isin(list(keep_out or {}))
    manifest.loc[held, "status"] = "tasks_only"
    manifest.loc[held, "reason"] = [keep_out[i] for i in manifest.id[held]]
    if keep_out:
        log.info("%d of %d scans named as target-task test cases kept out of pretraining", held.sum(), len(keep_out))
    usable = manifest[manifest.status.isin(TASK_STATUSES)]
    repeated = usable.index[usable.id.duplicated(keep="first")]
    first_subset = usable.drop_duplicates("id").set_index("id").subset
    manifest.loc[repeated, "status"] = "excluded"
    manifest.loc[repeated, "reason"] = [
        f"duplicate id, already in subset {first_subset[i]}" for i in manifest.id[repeated]
    ]
    usable = manifest[manifest.status == "ok"]
    if usable.empty:
        reasons = manifest.groupby("reason").size().sort_values(ascending=False).head(5)
        raise NoUsableDataError(
            f"no usable CT scan remains out of {len(manifest)}; most common reasons: "
            + "; ".join(f"{n} x {r}" for r, n in reasons.items())
        )
    write_tsv(manifest, out_tsv)
    counts = usable.groupby("split").size().to_dict()
    tasks_only = int((manifest.status == "tasks_only").sum())
    log.info(
        "%d usable scans %s, %d for the target tasks only, %d excluded",
        len(usable),
        counts,
        tasks_only,
        len(manifest) - len(usable) - tasks_only,
    )
    return manifest


def box(start: tuple[int, ...], size: tuple[int, ...]) -> tuple[slice, ...]:
    """The array index of the box of `size` voxels starting at `start`."""
    return tuple(slice(b, b + n) for b, n in zip(start, size))


class UnitView:
    """Lazy view of a stored int16 HU scan: slicing reads only the chunks touched and maps them to [0, 1]."""

    def __init__(self, data: h5py.Dataset, window: tuple[int, int]):
        self._data, self._window, self.shape = data, window, data.shape

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        return to_unit(self._data[index], self._window)


class PreprocessedCT:
    """Read access to one subset file written by preprocess_subset; values come back in [0, 1], index [z, y, x]."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._h5 = read_h5(self.path)
        self.settings = CTSettings(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(self._h5.attrs["settings"]).items()}
        )

    def __enter__(self) -> PreprocessedCT:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the HDF5 file."""
        self._h5.close()

    @property
    def ids(self) -> list[str]:
        """Ids of the usable scans in this file."""
        return list(self._h5["scans"]) if "scans" in self._h5 else []

    def hu(self, sid: str) -> np.ndarray:
        """The stored int16 HU volume."""
        return self._h5["scans"][sid][()]

    def volume(self, sid: str) -> np.ndarray:
        """The whole scan in [0, 1]."""
        return to_unit(self.hu(sid), self.settings.hu_window)

    def view(self, sid: str) -> UnitView:
        """A lazy [0, 1] view of one scan, for reading many crops without loading the scan."""
        return UnitView(self._h5["scans"][sid], self.settings.hu_window)

    def crop(self, sid: str, start_zyx: tuple[int, int, int], size_zyx: tuple[int, int, int]) -> np.ndarray:
        """A crop in [0, 1]; only the chunks it touches are read from disk."""
        return self.view(sid)[box(start_zyx, size_zyx)]

    def thumbnail(self, sid: str) -> np.ndarray:
        """The autoencoder-size thumbnail in [0, 1] as float32."""
        return self._h5["thumbnails"][sid][()].astype(np.float32)

    def spacing(self, sid: str) -> tuple[float, float, float]:
        """Voxel spacing (x, y, z) in mm."""
        return tuple(float(v) for v in self._h5["scans"][sid].attrs["spacing_xyz"])
