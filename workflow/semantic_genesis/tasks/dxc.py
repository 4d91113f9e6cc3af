"""DXC, thorax disease classification on ChestX-ray14: 14 binary labels per radiograph, mean AUC.

The task reuses the radiographs that preprocess_cxr already decoded into images.h5, so the PNGs are not read a
second time; splits come from its manifest (test = the official test_list.txt, val = a seeded share of the
train_val patients), and targets from the "Finding Labels" column of Data_Entry_2017.csv.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..preprocess.cxr import PreprocessedCXR
from ..preprocess.readers import NoUsableDataError
from ..resize import area_or_bilinear
from ..runtime.files import read_tsv
from ..settings import Settings
from .taskdata import CXR14_LABELS, SPLITS, TaskWriter

log = logging.getLogger(__name__)

NO_FINDING = "No Finding"


@dataclass(frozen=True)
class DXCSettings(Settings):
    """Side of the square task images, in pixels."""

    size: int = 224


def finding_matrix(finding_labels: pd.Series) -> np.ndarray:
    """Binary uint8 [n, 14] matrix in CXR14_LABELS order from "A|B" / "No Finding" strings; unknown names raise."""
    # Tolerate spaces around the separators, which hand-edited tables sometimes have.
    text = finding_labels.fillna("").astype(str).str.strip().str.replace(r"\s*\|\s*", "|", regex=True)
    dummies = text.str.get_dummies(sep="|")
    unknown = sorted(set(dummies.columns) - set(CXR14_LABELS) - {NO_FINDING})
    if unknown:
        raise ValueError(f"unknown finding labels {unknown}; expected {NO_FINDING!r} or some of {list(CXR14_LABELS)}")
    empty = finding_labels.index[dummies.sum(axis=1).to_numpy() == 0] if len(dummies.columns) else finding_labels.index
    if len(empty):
        raise ValueError(f"Finding Labels is empty in {len(empty)} rows, e.g. row {empty[0]}; use {NO_FINDING!r}")
    return dummies.reindex(columns=list(CXR14_LABELS), fill_value=0).to_numpy(np.uint8)


def prepare_dxc(
    images_h5: Path | str,
    images_tsv: Path | str,
    entries_csv: Path | str,
    out_h5: Path | str,
    settings: DXCSettings,
    synthetic: bool,
) -> pd.DataFrame:
    """Write the DXC task file from preprocessed radiographs; return one row per manifest image with its outcome."""
    manifest = read_tsv(images_tsv)
    entries = pd.read_csv(entries_csv, dtype={"Image Index": str, "Finding Labels": str})
    missing = {"Image Index", "Finding Labels"} - set(entries.columns)
    if missing:
        raise ValueError(f"{entries_csv}: missing columns {sorted(missing)}")
    duplicated = entries["Image Index"][entries["Image Index"].duplicated()]
    if len(duplicated):
        raise ValueError(f"{entries_csv}: {len(duplicated)} repeated Image Index values, e.g. {duplicated.iloc[0]}")
    labels = finding_matrix(entries["Finding Labels"])
    row_of = pd.Index(entries["Image Index"])

    # preprocess_cxr ids are the file names in Data_Entry_2017.csv's "Image Index" column.
    ok = manifest.status == "ok"
    unknown = manifest.id[ok & ~manifest.id.isin(row_of)]
    if len(unknown):
        raise ValueError(
            f"{len(unknown)} preprocessed images are not in {entries_csv}, e.g. {unknown.iloc[0]}; "
            "were images.tsv and Data_Entry_2017.csv made from the same data set?"
        )
    result = manifest[["id", "patient", "split", "status", "reason"]].copy()
    result["findings"] = manifest.id.map(entries.set_index("Image Index")["Finding Labels"]).fillna("")
    result.loc[~ok & (result.reason == ""), "reason"] = "excluded by preprocess_cxr"
    todo = manifest[ok]
    if todo.empty:
        raise NoUsableDataError(f"{images_tsv}: no usable radiograph to build the DXC task from")
    odd = sorted(set(todo.split) - set(SPLITS))
    if odd:
        raise ValueError(f"{images_tsv}: usable images with split {odd}; expected {list(SPLITS)}")

    source = f"ChestX-ray14 {Path(entries_csv).parent}"
    with (
        PreprocessedCXR(images_h5) as store,
        TaskWriter(out_h5, "dxc", (settings.size, settings.size), synthetic, source, asdict(settings)) as writer,
    ):
        stored = np.asarray(store.ids, dtype=object)
        index = todo["index"].astype(int).to_numpy()
        if index.max() >= len(stored) or (stored[index] != todo.id.to_numpy()).any():
            raise ValueError(f"{images_tsv} and {images_h5} disagree on which image is stored where")
        for split in SPLITS:
            rows = todo[todo.split == split]
            targets = labels[row_of.get_indexer(rows.id)]
            for sample_id, position, target in tqdm(
                zip(rows.id, rows["index"].astype(int), targets), total=len(rows), desc=f"DXC {split}", unit="image"
            ):
                image = area_or_bilinear(store.image(position), settings.size)
                writer.add(split, image, target, sample_id, source=sample_id)
        counts = dict(writer.counts)
    log.info(
        "DXC: %s images at %dx%d, %d excluded; label prevalence %s",
        counts,
        settings.size,
        settings.size,
        (~ok).sum(),
        dict(zip(CXR14_LABELS, labels[row_of.get_indexer(todo.id)].mean(axis=0).round(3).tolist())),
    )
    return result.reset_index(drop=True)
