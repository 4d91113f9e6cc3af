"""Whether the self-discovery and pretraining settings can work on the data at hand, judged from the manifest alone.

Checked first thing in the jobs that follow a kind's manifest (the autoencoder, the class plan), before any
training: an infeasible setting (more neighbours than usable scans, a crop larger than the scans, a batch larger than
the patches) fails within seconds with every problem, its config key, the numbers and a fix, instead of after hours.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import InfeasibleError
from ..runtime.files import read_tsv
from .plan import DiscoverySettings, start_range

log = logging.getLogger(__name__)


def usable_shapes(manifest: pd.DataFrame, dims: int) -> pd.DataFrame:
    """Usable rows with their split and array shape (z, y, x); a radiograph is one slice."""
    usable = manifest[manifest.status == "ok"]
    if dims == 3:
        xyz = usable["shape"].str.split("x", expand=True).astype(int).to_numpy() if len(usable) else np.zeros((0, 3))
        zyx = xyz[:, ::-1]
    else:
        zyx = np.stack([np.ones(len(usable)), usable.height, usable.width], axis=1) if len(usable) else np.zeros((0, 3))
    return pd.DataFrame(
        {"id": usable.id.to_numpy(), "split": usable.split.to_numpy(), "z": zyx[:, 0], "y": zyx[:, 1], "x": zyx[:, 2]}
    ).astype({"z": int, "y": int, "x": int})


def _starts(shape_zyx: np.ndarray, settings: DiscoverySettings) -> int:
    """How many crop starts the margins leave on a scan of this shape (the choices of one class coordinate)."""
    try:
        lo, hi = start_range(shape_zyx, settings)
    except ValueError:  # no room at all inside the margins
        return 0
    return int(np.prod(hi - lo + 1))


def check_discovery(
    manifest: pd.DataFrame, kind: str, settings: DiscoverySettings, pretrain_batch: int, multi_resolution: bool
) -> dict:
    """The numbers that decide feasibility; raises InfeasibleError listing every problem found."""
    dims = 3 if kind == "ct" else 2
    noun = "scans" if dims == 3 else "radiographs"
    shapes = usable_shapes(manifest, dims)
    crop = np.array(settings.crop_zyx)
    fits = (shapes[["z", "y", "x"]].to_numpy() >= crop).all(axis=1) if len(shapes) else np.zeros(0, bool)
    counts = {split: int((shapes.split == split).sum()) for split in ("train", "val")}
    fitting = {split: int(((shapes.split == split).to_numpy() & fits).sum()) for split in ("train", "val")}
    train_fit = shapes[(shapes.split == "train").to_numpy() & fits]
    starts = [_starts(np.array(row), settings) for row in train_fit[["z", "y", "x"]].itertuples(index=False)]
    per_patch = 3 if multi_resolution and dims == 3 else 1
    numbers = {
        "kind": kind,
        "usable": counts,
        "fitting_the_crop": fitting,
        "crop_zyx": [int(v) for v in crop],
        "smallest_usable_zyx": shapes[["z", "y", "x"]].min().astype(int).tolist() if len(shapes) else None,
        "fewest_crop_starts_on_a_train_scan": min(starts) if starts else 0,
        "train_patches": settings.classes * settings.k * per_patch,
        "val_patches": settings.classes * settings.val_neighbours,
    }
    key = f"discovery.{kind}"
    resample = (
        "set preprocess.ct.spacing_mm (e.g. [1.0, 1.0, 2.0]) so that thick-slice scans get enough slices"
        if dims == 3
        else "raise preprocess.cxr.size"
    )
    problems = []
    if counts["train"] == 0:
        where = "preprocess.ct.splits.train" if dims == 3 else "the root's train_val_list.txt"
        problems.append(f"no usable training {noun} in the manifest: check {where} and the excluded rows' reasons")
    for split, need, setting in (("train", settings.k, "k"), ("val", settings.val_neighbours, "val_neighbours")):
        if fitting[split] >= need or (split == "train" and not counts[split]):  # no training data: said above
            continue
        wanted = f"{key}.{setting} = {need}: self-discovery needs {need} usable {split} {noun}"
        if counts[split] < need:
            problems.append(f"{wanted}, only {counts[split]} are usable; lower {key}.{setting} or add {split} data")
        else:
            small = counts[split] - fitting[split]
            problems.append(
                f"{wanted} that hold the {'x'.join(map(str, crop))} (z x y x x) crop, but only {fitting[split]} of the "
                f"{counts[split]} usable ones do ({small} are smaller); lower {key}.{setting} or {key}.crop_size, "
                f"or {resample}"
            )
    if starts and min(starts) < settings.classes:
        problems.append(
            f"{key}.classes = {settings.classes}: the margins leave only {min(starts)} crop positions on the smallest "
            f"training {noun[:-1]} that holds the crop; lower {key}.classes, {key}.margin_lo / margin_hi or "
            f"{key}.crop_size"
        )
    pretrain_key = f"pretrain.{kind}.batch_size"
    if pretrain_batch > numbers["train_patches"]:
        problems.append(
            f"{pretrain_key} = {pretrain_batch} exceeds the {numbers['train_patches']} training patches self-discovery "
            f"makes ({key}.classes x k{' x 3 resolutions' if per_patch == 3 else ''}); lower {pretrain_key} or raise "
            f"{key}.classes / k"
        )
    if problems:
        raise InfeasibleError(f"{len(problems)} setting(s) cannot work on this data:\n  - " + "\n  - ".join(problems))
    return numbers


def check_config(manifest_tsv: Path | str, kind: str, config: Mapping) -> dict:
    """check_discovery of the workflow config's discovery.<kind> and pretrain.<kind> settings on a manifest file;
    the error names the manifest. Logs the numbers and returns them."""
    section = config["discovery"][kind]
    settings = DiscoverySettings.from_dict(section)
    multi_resolution = bool(section.get("multi_resolution", False))
    try:
        numbers = check_discovery(
            read_tsv(manifest_tsv), kind, settings, config["pretrain"][kind]["batch_size"], multi_resolution
        )
    except InfeasibleError as error:
        raise InfeasibleError(f"{manifest_tsv}: {error}") from None
    log.info("settings feasible on %s: %s", manifest_tsv, json.dumps(numbers))
    return numbers
