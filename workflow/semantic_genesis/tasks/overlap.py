"""Leakage check: how many of a task's test cases come from scans or images that pretraining used.

LIDC-IDRI (NCS) scans are LUNA16 scans and SIIM-ACR radiographs come from ChestX-ray14, so a target task's test set
can hold images the encoder was pretrained on. Each task file records per sample its id in the pretraining collection
(`<split>/sources`); this module compares the test ones with the pretraining manifest and stores the result in the task
file's attrs (`pretraining_overlap`), from where fine-tuning copies it into metrics.json and the tables into captions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import h5py
import pandas as pd

from ..runtime.files import read_tsv

log = logging.getLogger(__name__)

PRETRAINING_SPLITS = ("train", "val")  # the splits self-discovery, the autoencoder and pretraining read
EXAMPLES = 5
# Why a task's overlap cannot be counted, for tasks whose data names no scan of the pretraining collection.
UNCHECKED = {
    "lcs": "LiTS 2017 abdominal CT is not part of LUNA16",
    "bms": "BraTS 2018 brain MRI is not part of LUNA16",
    "pxs": "SIIM-ACR publishes no ChestX-ray14 image ids, so its overlap with ChestX-ray14 cannot be counted",
    "ncs": "index.csv has no seriesuid column, so the overlap with LUNA16 cannot be counted",
}


def pretraining_ids(manifest: pd.DataFrame) -> set[str]:
    """Ids of the scans or images pretraining reads: usable (status ok) and in a pretraining split."""
    used = (manifest.status == "ok") & manifest.split.isin(PRETRAINING_SPLITS)
    return set(manifest.id[used].astype(str))


def count_overlap(task: str, test_sources: Iterable[str], manifest_tsv: Path | str | None) -> dict:
    """The overlap record of one task: test cases (distinct sources), how many pretraining used, a few of them."""
    sources = sorted({s for s in test_sources if s})
    if manifest_tsv is None or not sources:
        reason = UNCHECKED.get(task, "its test samples name no scan or image of the pretraining collection")
        return {"checked": False, "reason": reason}
    used = pretraining_ids(read_tsv(manifest_tsv))
    shared = [s for s in sources if s in used]
    return {
        "checked": True,
        "manifest": str(manifest_tsv),
        "test_cases": len(sources),
        "in_pretraining": len(shared),
        "examples": shared[:EXAMPLES],
    }


def describe_overlap(task: str, record: dict) -> str:
    """The overlap in words, for logs and captions."""
    if not record.get("checked"):
        return f"{task.upper()}: not checked ({record.get('reason', 'no record')})"
    return (
        f"{task.upper()}: {record['in_pretraining']} of {record['test_cases']} test cases come from scans or images "
        "pretraining used"
    )


def annotate_overlap(task_h5: Path | str, task: str, manifest_tsv: Path | str | None) -> dict:
    """Count the task file's test overlap with pretraining, log it and store it in the file's attrs."""
    with h5py.File(task_h5, "r+") as h5:
        sources = h5["test"]["sources"].asstr()[()].tolist()
        record = count_overlap(task, sources, manifest_tsv)
        h5.attrs["pretraining_overlap"] = json.dumps(record, sort_keys=True)
    text = describe_overlap(task, record)
    if record.get("in_pretraining"):
        log.warning(
            "%s (e.g. %s): their scores measure images the encoder has seen; set "
            "preprocess.exclude_target_test_from_pretraining: true to keep them out of pretraining",
            text,
            ", ".join(record["examples"]),
        )
    else:
        log.info("%s", text)
    return record
