"""Synthetic nodule cubes: NIfTI image and mask cubes around the synthetic CT's nodules, with an index (task NCS)."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from ..preprocess.readers import read_volume
from ..runtime.files import atomic_path
from ..tasks.ncc import crop_padded, world_to_index
from ..tasks.ncs import INDEX_COLUMNS
from .phantom import LABELS

log = logging.getLogger(__name__)


def _centre_component(mask: np.ndarray, centre: tuple[int, ...]) -> np.ndarray:
    """The connected part of mask that holds the centre voxel (or the part nearest to it); other nodules are dropped."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    keep = labels[centre]
    if keep == 0:
        points = np.argwhere(labels > 0)
        keep = labels[tuple(points[np.argmin(((points - np.asarray(centre)) ** 2).sum(1))])]
    return labels == keep


def _write_nifti(array: np.ndarray, spacing, origin, direction, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def write_synthetic_ncs(
    luna_root: Path | str,
    out_root: Path | str,
    ct_splits: dict[str, list[str]],
    cube_size_xyz: tuple[int, int, int] = (64, 64, 32),
    seed: int = 0,
) -> pd.DataFrame:
    """Cut a cube around every annotated nodule of the synthetic LUNA16 set into the NCS layout; return index.csv.

    ct_splits maps split -> subsets (config `preprocess.ct.splits`); the mask is the phantom's nodule label
    restricted to the nodule at the centre. The centre is jittered by up to 30% of the nodule radius (seeded), so
    that a model cannot learn that the answer always sits on the exact centre voxel, yet stays inside the nodule.
    """
    luna_root, out_root = Path(luna_root), Path(out_root)
    split_of = {subset: split for split, subsets in ct_splits.items() for subset in subsets}
    annotations = pd.read_csv(luna_root / "annotations.csv", dtype={"seriesuid": str})
    scans = {p.name[: -len(".mhd")]: p for p in luna_root.glob("subset*/*.mhd")}
    size_zyx = np.asarray(cube_size_xyz[::-1])
    rows = []
    groups = annotations.groupby("seriesuid", sort=False)
    for uid, nodules in tqdm(groups, total=groups.ngroups, desc="synthetic NCS", unit="scan"):
        path = scans.get(uid)
        split = split_of.get(path.parent.name) if path else None
        if split is None:
            log.warning("%s: scan %s, in no split of %s; its nodules are skipped", uid, path, ct_splits)
            continue
        image = read_volume(path)
        labels = read_volume(luna_root / "phantom-labels" / f"{uid}.mhd")
        hu, lab = sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(labels)
        spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
        matrix = np.asarray(direction).reshape(3, 3) * np.asarray(spacing)
        for k, nodule in enumerate(nodules.itertuples()):
            world = np.array([nodule.coordX, nodule.coordY, nodule.coordZ])
            voxel = np.rint(world_to_index(world, origin, spacing, direction)).astype(int)
            rng = np.random.default_rng([seed, zlib.crc32(uid.encode()), k])
            reach = np.floor(0.3 * nodule.diameter_mm / 2 / np.asarray(spacing)[::-1]).astype(int)
            start = voxel + rng.integers(-reach, reach + 1) - size_zyx // 2
            cube = crop_padded(hu, start, tuple(size_zyx), fill=-1000)
            mask = crop_padded(lab, start, tuple(size_zyx), fill=0) == LABELS["nodule"]
            if not mask.any():
                log.warning("%s nodule %d: no nodule voxel in its cube; skipped", uid, k)
                continue
            mask = _centre_component(mask, tuple(np.clip(voxel - start, 0, size_zyx - 1)))
            sample = f"{uid}_n{k}"
            corner = np.asarray(origin) + matrix @ start[::-1].astype(float)  # world position of voxel 0 of the cube
            _write_nifti(cube, spacing, corner, direction, out_root / "images" / f"{sample}.nii.gz")
            _write_nifti(mask.astype(np.uint8), spacing, corner, direction, out_root / "masks" / f"{sample}.nii.gz")
            rows.append(
                dict(
                    id=sample,
                    image=f"images/{sample}.nii.gz",
                    mask=f"masks/{sample}.nii.gz",
                    split=split,
                    seriesuid=uid,
                    diameter_mm=nodule.diameter_mm,
                    voxels=int(mask.sum()),
                )
            )
    index = pd.DataFrame(rows, columns=[*INDEX_COLUMNS, "seriesuid", "diameter_mm", "voxels"])
    with atomic_path(out_root / "index.csv") as tmp:  # last: its presence means every file it names is complete
        index.to_csv(tmp, index=False)
    log.info("wrote %d synthetic NCS cubes %s under %s", len(index), index.groupby("split").size().to_dict(), out_root)
    return index
