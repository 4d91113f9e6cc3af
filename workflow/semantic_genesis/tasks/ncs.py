"""NCS, lung nodule segmentation: nodule-centred CT cubes and their binary masks.

The public LIDC-IDRI data (DICOM + XML reader annotations) needs a conversion that is out of scope here; this module
reads an accepted, documented layout instead, which any conversion (e.g. pylidc consensus masks) can write:

    <root>/index.csv        columns id, image, mask, split (one nodule-centred cube per row)
    <root>/<image>          CT cube in HU, any SimpleITK 3D format (.nii.gz, .nii, .mhd/.raw, .nrrd, ...)
    <root>/<mask>           same voxel grid as the image; binary, or labels where label > 0 is nodule

`image` and `mask` are paths relative to root; `split` is train, val or test; `id` must be unique. An optional
column `seriesuid` names the LUNA16 scan a cube was cut from (LIDC-IDRI scans are LUNA16's): with it, the workflow
counts the test cubes whose scan pretraining used and can keep those scans out of pretraining
(`preprocess.exclude_target_test_from_pretraining`); without it, the overlap is reported as unknown. Cubes are
reoriented to LPS, windowed (default [-1000, 1000] HU) and scaled to [0, 1]. A cube whose size differs from
`cube_size_xyz` is padded/cropped about its centre (`fit: crop`, spacing kept) or resampled to it (`fit: resample`).
Rows with a missing or unreadable file, mismatched image/mask grids, an empty mask or an unknown split are excluded
with a logged reason; they are not fatal.

synthetic/ncs.py writes this layout from the synthetic LUNA16 set (scans, `phantom-labels/` label maps and
`annotations.csv`), so the pipeline runs end to end without LIDC-IDRI.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from ..preprocess.ct import reorient, to_unit, window_hu
from ..preprocess.readers import InputError, NoUsableDataError, read_volume
from ..resize import spline_on_centres
from ..settings import Settings
from .ncc import crop_padded
from .taskdata import SPLITS, TaskWriter

log = logging.getLogger(__name__)

INDEX_COLUMNS = ("id", "image", "mask", "split")
FITS = ("crop", "resample")


@dataclass(frozen=True)
class NCSSettings(Settings):
    """Cube size (x, y, z), HU window, and how a cube of another size is brought to it."""

    ALIASES: ClassVar[dict[str, str]] = {"cube_size": "cube_size_xyz"}

    cube_size_xyz: tuple[int, int, int] = (64, 64, 32)
    hu_window: tuple[int, int] = (-1000, 1000)
    fit: str = "crop"  # crop: pad/crop about the centre (keeps the spacing); resample: scale to the cube size

    def __post_init__(self):
        if len(self.cube_size_xyz) != 3 or min(self.cube_size_xyz) < 1:
            raise ValueError(f"cube_size_xyz must be three positive sizes, not {self.cube_size_xyz}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, not {self.fit!r}")


# ---- reader of the layout ---------------------------------------------------------------------------------------


def fit_to_size(array: np.ndarray, size_zyx: tuple[int, ...], fill, order: int | None = None) -> np.ndarray:
    """Bring an array to size_zyx: pad with fill / crop about the centre, or resample with spline `order` if given."""
    if array.shape == tuple(size_zyx):
        return array
    if order is not None:
        return spline_on_centres(array, tuple(size_zyx), order)
    start = (np.asarray(array.shape) - np.asarray(size_zyx)) // 2
    return crop_padded(array, start, tuple(size_zyx), fill)


def read_index(root: Path | str) -> pd.DataFrame:
    """Read <root>/index.csv; raise InputError naming it when it is missing or lacks columns."""
    path = Path(root) / "index.csv"
    if not path.exists():
        raise InputError(path, f"does not exist; the NCS layout needs an index.csv with columns {INDEX_COLUMNS}")
    index = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise InputError(path, f"lacks column(s) {', '.join(missing)}; expected {', '.join(INDEX_COLUMNS)}")
    return index


def held_out_scans(root: Path | str) -> dict[str, str]:
    """The LUNA16 scans of the test cubes in <root>/index.csv (column seriesuid), each with why pretraining must not
    read it; none, with a warning, when the index has no seriesuid column."""
    index = read_index(root)
    if "seriesuid" not in index.columns:
        log.warning("%s has no seriesuid column: no NCS test scan can be kept out of pretraining", Path(root))
        return {}
    test = index[(index.split == "test") & (index.seriesuid != "")]
    reason = "scan of an NCS test cube: kept for the target tasks, not pretraining"
    return dict.fromkeys(sorted(set(test.seriesuid)), reason)


def load_case(root: Path, row, settings: NCSSettings) -> tuple[np.ndarray, np.ndarray]:
    """One case as (image in [0, 1], binary mask) at the cube size; raise InputError when it is unusable."""
    image_path, mask_path = root / row.image, root / row.mask
    image, mask = read_volume(image_path), read_volume(mask_path)
    if image.GetSize() != mask.GetSize():
        raise InputError(mask_path, f"has size {mask.GetSize()}, its image {image_path.name} has {image.GetSize()}")
    if not np.allclose(image.GetSpacing(), mask.GetSpacing(), rtol=1e-3) or not np.allclose(
        image.GetDirection(), mask.GetDirection(), atol=1e-3
    ):
        raise InputError(mask_path, f"has another voxel grid (spacing or direction) than its image {image_path.name}")
    mask.CopyInformation(image)  # origins may differ by rounding in converters; the size and axes match
    image, mask = reorient(image, "LPS"), reorient(mask, "LPS")
    labels = sitk.GetArrayViewFromImage(mask)
    if not (labels > 0).any():
        raise InputError(mask_path, "has no foreground voxel (label > 0)")
    size_zyx = tuple(settings.cube_size_xyz[::-1])
    hu = window_hu(sitk.GetArrayViewFromImage(image), settings.hu_window)
    resample = settings.fit == "resample"
    unit = to_unit(hu, settings.hu_window)
    unit = np.clip(fit_to_size(unit, size_zyx, 0.0, 1 if resample else None), 0, 1)
    target = fit_to_size((labels > 0).astype(np.uint8), size_zyx, 0, 0 if resample else None)
    if not target.any():
        raise InputError(mask_path, f"its foreground lies outside the central {settings.cube_size_xyz} voxels")
    return unit, target


def prepare_ncs(root: Path | str, out_h5: Path | str, settings: NCSSettings, synthetic: bool) -> pd.DataFrame:
    """Read the NCS layout under root into the NCS task file; return every index row with its status and reason."""
    root = Path(root)
    index = read_index(root)
    size_zyx = tuple(settings.cube_size_xyz[::-1])
    rows = []
    seen: set[str] = set()
    with TaskWriter(out_h5, "ncs", size_zyx, synthetic, str(root), asdict(settings)) as writer:
        for row in tqdm(index.itertuples(), total=len(index), desc="NCS cubes", unit="nodule"):
            record = dict(id=row.id, split=row.split, image=row.image, mask=row.mask, status="ok", reason="")
            try:
                if row.split not in SPLITS:
                    raise InputError(root / "index.csv", f"row {row.id}: split {row.split!r} is not one of {SPLITS}")
                if row.id in seen or not row.id:
                    raise InputError(root / "index.csv", f"row {row.id!r}: empty or duplicate id")
                image, target = load_case(root, row, settings)
            except InputError as error:
                record.update(status="excluded", reason=str(error))
                log.warning("excluded NCS case %s: %s", row.id, error)
            else:
                seen.add(row.id)
                writer.add(row.split, image, target, row.id, source=getattr(row, "seriesuid", ""))
                record["voxels"] = int(target.sum())
            rows.append(record)
        result = pd.DataFrame(rows, columns=["id", "split", "image", "mask", "status", "reason", "voxels"])
        usable = result[result.status == "ok"]
        if usable.empty:  # raised inside the block, so that no empty task file appears
            raise NoUsableDataError(f"no usable NCS case among the {len(index)} rows of {root / 'index.csv'}")
    log.info(
        "NCS: %d cubes %s, %d excluded -> %s",
        len(usable),
        usable.groupby("split").size().to_dict(),
        len(result) - len(usable),
        out_h5,
    )
    return result
