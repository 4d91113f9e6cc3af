"""Entry point of rule task_data: any task's data, read from its public format into the common task file."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ..preprocess.readers import NoUsableDataError
from ..runtime.files import atomic_path, write_tsv
from .bms import BMSSettings, prepare_bms
from .dxc import DXCSettings, prepare_dxc
from .lcs import LCSSettings, prepare_lcs
from .ncc import NCCSettings, prepare_ncc
from .ncs import NCSSettings, prepare_ncs
from .overlap import annotate_overlap
from .pxs import PXSSettings, prepare_pxs
from .taskdata import TaskData, task_montage

log = logging.getLogger(__name__)


def prepare_task(
    task: str,
    inputs: Mapping,
    settings: Mapping,
    synthetic: bool,
    out_h5: Path | str,
    out_index: Path | str,
    out_montage: Path | str,
) -> None:
    """Read one task's data from its format into the common task file, its sample index and a montage; the file
    records how many of its test cases pretraining used (inputs["pretraining"]: that kind's manifest, if any)."""
    with atomic_path(out_h5) as partial:
        index = _prepare(task, inputs, settings, synthetic, partial)
        write_tsv(index, out_index)
        with TaskData(partial) as data:
            sizes = {split: data.size(split) for split in ("train", "val", "test")}
        log.info("%s: %s samples per split%s", task, sizes, " (synthetic data)" if synthetic else "")
        empty = [split for split, size in sizes.items() if not size]
        if empty:  # raised before the file is moved into place, so no later stage sees it
            raise NoUsableDataError(
                f"task {task}: no {' and no '.join(empty)} samples in {out_h5} (see {out_index}); fine-tuning trains "
                "on train, picks its epoch on val and reports test, so each needs samples (check the task's split "
                f"settings under tasks.{task} and the reasons in the index)"
            )
        annotate_overlap(partial, task, inputs.get("pretraining"))
    task_montage(out_h5, out_montage)


def _prepare(task: str, inputs: Mapping, settings: Mapping, synthetic: bool, out_h5: Path) -> pd.DataFrame:
    """Write one task's file with its own reader; return its sample index."""
    if task == "ncc":
        return prepare_ncc(
            inputs["candidates"],
            inputs["manifest"],
            list(inputs["h5"]),
            out_h5,
            NCCSettings.from_dict(settings),
            synthetic,
        )
    if task == "ncs":
        return prepare_ncs(inputs["root"], out_h5, NCSSettings.from_dict(settings), synthetic)
    if task == "lcs":
        return prepare_lcs(inputs["root"], out_h5, LCSSettings.from_dict(settings), synthetic)
    if task == "bms":
        return prepare_bms(inputs["root"], out_h5, BMSSettings.from_dict(settings), synthetic)
    if task == "dxc":
        return prepare_dxc(
            inputs["h5"], inputs["manifest"], inputs["entries"], out_h5, DXCSettings.from_dict(settings), synthetic
        )
    if task == "pxs":
        return prepare_pxs(inputs["root"], out_h5, PXSSettings.from_dict(settings), synthetic)
    raise ValueError(f"unknown task {task!r}")
