"""Entry points of the self-discovery rules after the embedding: the class plan and the pseudo-labelled patches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .discovery import DiscoverySettings, air_acceptor, plan_classes, read_plan, write_plan
from .embedding import read_latents
from .patches import ct_scans, extract_patches, patch_montage, scan_shapes

log = logging.getLogger(__name__)


def discovery_settings(cfg: dict) -> DiscoverySettings:
    """DiscoverySettings from a `discovery.ct` config section (crop_size there is crop_size_xyz here)."""
    return DiscoverySettings.from_config({**cfg, "crop_size_xyz": cfg["crop_size"]})


def plan_ct(latents_h5: Path | str, h5_files: list[str], cfg: dict, out_tsv: Path | str) -> None:
    """Pick references, neighbours and crop coordinates from the latents; write the class table."""
    settings = discovery_settings(cfg)
    latents, ids, splits = read_latents(latents_h5)
    open_scan = ct_scans(h5_files)

    def accept_factory(sid: str):
        scan = open_scan(sid)
        return air_acceptor(lambda start, size: scan[tuple(slice(b, b + n) for b, n in zip(start, size))], settings)

    plan = plan_classes(
        latents,
        ids,
        splits,
        settings,
        np.random.default_rng(settings.seed),
        accept_factory,
        scan_shapes(open_scan, ids),
    )
    write_plan(plan, out_tsv)
    log.info(
        "%d classes from %d references: %d train and %d val rows",
        plan["class"].nunique(),
        plan.reference.nunique(),
        (plan.split == "train").sum(),
        (plan.split == "val").sum(),
    )


def patches_ct(plan_tsv: Path | str, h5_files: list[str], cfg: dict, out_h5: Path | str, out_png: Path | str) -> None:
    """Cut the planned crops (one scan in memory at a time) into one HDF5 file, and draw the class montage."""
    settings = discovery_settings(cfg)
    extract_patches(
        read_plan(plan_tsv),
        ct_scans(h5_files),
        out_h5,
        settings,
        cfg["multi_resolution"],
        settings.seed,
        {"discovery": json.dumps(cfg)},
    )
    patch_montage(out_h5, out_png)
