"""Synthetic LiTS-2017: abdominal phantom volumes with liver and lesion masks, in LiTS's file layout (task LCS)."""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from ..runtime.files import atomic_path
from ..runtime.parallel import ordered_map
from .phantom import LABELS, PhantomSettings, draw_patient, render_ct

log = logging.getLogger(__name__)


def _tumour(rng: np.random.Generator, liver: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray | None:
    """A spherical lesion of 5-15 mm radius wholly inside the liver, or None where none fits."""
    depth = ndimage.distance_transform_edt(liver, sampling=spacing_zyx)
    radius = rng.uniform(5, 15)
    inside = np.argwhere(depth > radius + 2)
    if not len(inside):
        return None
    centre = inside[rng.integers(len(inside))]
    reach = np.ceil(radius / spacing_zyx).astype(int) + 1
    lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, liver.shape)
    z, y, x = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    dz, dy, dx = spacing_zyx
    ball = ((z - centre[0]) * dz) ** 2 + ((y - centre[1]) * dy) ** 2 + ((x - centre[2]) * dx) ** 2 < radius**2
    mask = np.zeros(liver.shape, bool)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    mask[box] = ball & liver[box]
    return mask


def _write_lits_volume(n: int, out_root: Path, seed: int, matrix: int) -> dict:
    """Draw an abdominal scan around the liver, add a lesion in some, write volume-N.nii and segmentation-N.nii."""
    rng = np.random.default_rng([seed, 6, n])
    p = draw_patient(rng, PhantomSettings(matrix=matrix, nodules=(0, 0)))
    # The chest phantom's scan stops just below the domes; LiTS scans run from the lung bases to below the liver.
    # The world z of the right dome top is the pose centre's z, and the liver reaches at most liver_span below it.
    dz = float(rng.choice([1.5, 2.0, 2.5, 3.0, 5.0], p=[0.1, 0.25, 0.3, 0.2, 0.15]))
    top = p.center_xyz[2] + rng.uniform(30, 80)
    bottom = p.center_xyz[2] - p.liver_span - rng.uniform(30, 70)
    slices = int(round((top - bottom) / dz))
    p = dataclasses.replace(
        p,
        shape_zyx=(slices, matrix, matrix),
        spacing_xyz=(p.spacing_xyz[0], p.spacing_xyz[1], dz),
        origin_xyz=(p.origin_xyz[0], p.origin_xyz[1], float(bottom)),
    )
    hu, lab = render_ct(p)
    liver = lab == LABELS["liver"]
    seg = liver.astype(np.uint8)
    lesion = _tumour(rng, liver, np.asarray(p.spacing_xyz[::-1])) if rng.random() < 0.6 else None
    if lesion is not None:
        seg[lesion] = 2
        # Most liver lesions are hypodense on portal-venous CT; subtracting keeps the noise texture.
        hu[lesion] = np.clip(hu[lesion] - rng.uniform(30, 70), -1024, None).astype(np.int16)
    # RAS-like storage, as in many LiTS files: x runs to the patient's right, y anterior; some run head to feet.
    flip_z = bool(rng.random() < 0.3)
    flips = (slice(None, None, -1) if flip_z else slice(None), slice(None, None, -1), slice(None, None, -1))
    shape_xyz = np.asarray(hu.shape[::-1])
    signs = np.array([-1.0, -1.0, -1.0 if flip_z else 1.0])
    origin = np.asarray(p.origin_xyz) + (signs < 0) * (shape_xyz - 1) * np.asarray(p.spacing_xyz)
    for name, array in ((f"volume-{n}.nii", hu), (f"segmentation-{n}.nii", seg)):
        image = sitk.GetImageFromArray(np.ascontiguousarray(array[flips]))
        image.SetSpacing(p.spacing_xyz)
        image.SetOrigin([float(o) for o in origin])
        image.SetDirection([float(v) for v in np.diag(signs).ravel()])
        with atomic_path(out_root / name) as tmp:
            sitk.WriteImage(image, str(tmp))
    return dict(
        n=n,
        slices=slices,
        spacing_z=dz,
        liver_voxels=int(liver.sum()),
        tumour_voxels=0 if lesion is None else int(lesion.sum()),
        flip_z=flip_z,
    )


def write_synthetic_lits(out_root: Path | str, count: int, seed: int, matrix: int = 128, workers: int = 1) -> None:
    """Write <out_root>/volume-N.nii and segmentation-N.nii (1 liver, 2 lesion), N = 0..count-1, from the phantom."""
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    work = partial(_write_lits_volume, out_root=out_root, seed=seed, matrix=matrix)
    rows = list(tqdm(ordered_map(work, range(count), workers), total=count, desc="synthetic LiTS", unit="volume"))
    for r in rows:
        log.info(
            "volume-%d: %d slices of %.1f mm, %d liver and %d lesion voxels%s",
            r["n"],
            r["slices"],
            r["spacing_z"],
            r["liver_voxels"],
            r["tumour_voxels"],
            ", slices head to feet" if r["flip_z"] else "",
        )
    log.info("wrote %d synthetic LiTS volumes under %s", count, out_root)
