"""The entry points of the task rules: write a task's synthetic counterpart, or prepare any task's common file."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from ..preprocess.readers import NoUsableDataError
from ..runtime.files import write_tsv
from ..synthetic.brain_phantom import BrainSettings
from .bms import BMSSettings, prepare_bms, write_synthetic_brats
from .dxc import DXCSettings, prepare_dxc
from .lcs import LCSSettings, prepare_lcs, write_synthetic_lits
from .ncc import NCCSettings, prepare_ncc
from .ncs import NCSSettings, prepare_ncs, write_synthetic_ncs
from .pxs import PXSSettings, prepare_pxs, write_synthetic_siim
from .taskdata import TaskData, task_montage

log = logging.getLogger(__name__)
SYNTHETIC_DATASETS = ("ncs", "lits", "brats", "siim")


def write_synthetic(dataset: str, out_dir: Path | str, params: Mapping, inputs: Mapping) -> None:
    """Write one synthetic target-task data set in its public format (params as in rules/tasks.smk)."""
    if dataset == "ncs":
        luna_root = Path(inputs["annotations"]).parent
        write_synthetic_ncs(luna_root, out_dir, params["splits"], tuple(params["cube_size"]), params["seed"])
        return
    sizes = params["settings"]
    if dataset == "lits":
        write_synthetic_lits(out_dir, sizes["lits_volumes"], params["seed"], matrix=sizes["lits_matrix"])
    elif dataset == "brats":
        brain = BrainSettings(shape_xyz=tuple(sizes["brats_shape"]))
        write_synthetic_brats(out_dir, sizes["brats_subjects"], params["seed"], brain)
    elif dataset == "siim":
        write_synthetic_siim(out_dir, sizes["siim_images"], params["seed"], size=sizes["siim_size"])
    else:
        raise ValueError(f"unknown synthetic data set {dataset!r}; expected one of {SYNTHETIC_DATASETS}")


def prepare_task(
    task: str,
    inputs: Mapping,
    settings: Mapping,
    synthetic: bool,
    out_h5: Path | str,
    out_index: Path | str,
    out_montage: Path | str,
) -> None:
    """Read one task's data from its format into the common task file, its sample index and a montage."""
    if task == "ncc":
        index = prepare_ncc(
            inputs["candidates"],
            inputs["manifest"],
            list(inputs["h5"]),
            out_h5,
            NCCSettings.from_dict(settings),
            synthetic,
        )
    elif task == "ncs":
        index = prepare_ncs(inputs["root"], out_h5, NCSSettings.from_dict(settings), synthetic)
    elif task == "lcs":
        index = prepare_lcs(inputs["root"], out_h5, LCSSettings.from_dict(settings), synthetic)
    elif task == "bms":
        index = prepare_bms(inputs["root"], out_h5, BMSSettings.from_dict(settings), synthetic)
    elif task == "dxc":
        index = prepare_dxc(
            inputs["h5"], inputs["manifest"], inputs["entries"], out_h5, DXCSettings.from_dict(settings), synthetic
        )
    elif task == "pxs":
        index = prepare_pxs(inputs["root"], out_h5, PXSSettings.from_dict(settings), synthetic)
    else:
        raise ValueError(f"unknown task {task!r}")
    write_tsv(index, out_index)
    with TaskData(out_h5) as data:
        sizes = {split: data.size(split) for split in ("train", "val", "test")}
    log.info("%s: %s samples per split%s", task, sizes, " (synthetic data)" if synthetic else "")
    empty = [split for split, size in sizes.items() if not size]
    if empty:
        # Snakemake removes a failed job's outputs, so no later stage sees this file.
        raise NoUsableDataError(
            f"task {task}: no {' and no '.join(empty)} samples in {out_h5} (see {out_index}); fine-tuning trains on "
            "train, picks its epoch on val and reports test, so each needs samples (check the task's split settings "
            f"under tasks.{task} and the reasons in the index)"
        )
    task_montage(out_h5, out_montage)
