"""Entry point of rule synthetic_task: one target task's synthetic data set, written in its public format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..settings import Settings
from .brain_phantom import BrainSettings
from .brats import write_synthetic_brats
from .lits import write_synthetic_lits
from .siim import write_synthetic_siim

DATASETS = ("lits", "brats", "siim")  # NCS cubes come from the synthetic CT instead (synthetic/ncs.py)


@dataclass(frozen=True)
class SyntheticTaskSettings(Settings):
    """Sizes of the synthetic task sets (the `synthetic.tasks` config section)."""

    lits_volumes: int = 12
    lits_matrix: int = 96
    brats_subjects: int = 12
    brats_shape: tuple[int, int, int] = (96, 96, 64)
    siim_images: int = 60
    siim_size: int = 256


def write_synthetic_task(dataset: str, out_dir: Path | str, settings: SyntheticTaskSettings, seed: int) -> None:
    """Write the synthetic LiTS, BraTS or SIIM-ACR set into out_dir."""
    if dataset == "lits":
        write_synthetic_lits(out_dir, settings.lits_volumes, seed, matrix=settings.lits_matrix)
    elif dataset == "brats":
        write_synthetic_brats(out_dir, settings.brats_subjects, seed, BrainSettings(shape_xyz=settings.brats_shape))
    elif dataset == "siim":
        write_synthetic_siim(out_dir, settings.siim_images, seed, size=settings.siim_size)
    else:
        raise ValueError(f"unknown synthetic data set {dataset!r}; expected one of {', '.join(DATASETS)}")
