"""Synthetic BraTS 2018: brain phantom subjects with FLAIR and tumour labels, in BraTS's folder layout (task BMS)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from ..runtime.files import atomic_path
from .brain_phantom import BrainSettings, draw_subject, render_subject

log = logging.getLogger(__name__)


def write_synthetic_brats(out_root: Path | str, subjects: int, seed: int, settings: BrainSettings) -> pd.DataFrame:
    """Write phantom subjects in the BraTS 2018 layout (HGG/LGG folders, int16 FLAIR and uint8 seg .nii.gz).

    Geometry follows BraTS as SimpleITK reads it: identity direction (LPS), origin (0, -(ny - 1) * dy, 0); the
    voxel size is settings.spacing_xyz (1 mm on the BraTS grid). Returns subject, grade, flair, seg, tumour_voxels.
    """
    out_root = Path(out_root)
    spacing = settings.spacing_xyz
    origin = (0.0, -(settings.shape_xyz[1] - 1) * spacing[1], 0.0)
    rows = []
    for i in tqdm(range(subjects), desc="synthetic BraTS", unit="subject"):
        # One generator per subject: subject i is the same whatever the number of subjects. Grades are dealt
        # in the p_lgg proportion rather than drawn, so that even a small data set has both.
        lgg = int((i + 1) * settings.p_lgg) > int(i * settings.p_lgg)
        params = draw_subject(np.random.default_rng([seed, i]), settings, grade="LGG" if lgg else "HGG")
        flair, seg = render_subject(params, settings)
        name = f"Brats18_SYN_{i:03d}_1"
        folder = out_root / params.grade / name
        paths = {}
        for kind, array in (("flair", np.clip(np.rint(flair), 0, 32767).astype(np.int16)), ("seg", seg)):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(spacing)
            image.SetOrigin(origin)
            paths[kind] = folder / f"{name}_{kind}.nii.gz"
            with atomic_path(paths[kind]) as tmp:
                sitk.WriteImage(image, str(tmp), useCompression=True)
        rows.append((name, params.grade, str(paths["flair"]), str(paths["seg"]), int((seg > 0).sum())))
    frame = pd.DataFrame(rows, columns=["subject", "grade", "flair", "seg", "tumour_voxels"])
    log.info("wrote %d synthetic BraTS subjects (%s) to %s", subjects, frame.grade.value_counts().to_dict(), out_root)
    return frame
