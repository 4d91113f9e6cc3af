"""Entry points of the self-discovery rules after the embedding: the class plan and the pseudo-labelled patches."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .artifacts import read_h5
from .discovery import DiscoverySettings, air_acceptor, plan_classes, read_plan, write_plan
from .embedding import read_latents
from .patches import ct_scans, cxr_scans, extract_patches, patch_montage, scan_shapes
from .preprocess_ct import box

log = logging.getLogger(__name__)


def discovery_settings(cfg: dict) -> DiscoverySettings:
    """DiscoverySettings from a `discovery.ct` or `discovery.cxr` section (crop_size there is crop_size_xyz here)."""
    return DiscoverySettings.from_config({**cfg, "crop_size_xyz": cfg["crop_size"]})


def _plan(
    latents_h5: Path | str,
    open_scan: Callable,
    shapes: Callable[[list[str]], dict],
    cfg: dict,
    air_test: bool,
    out_tsv: Path | str,
) -> None:
    """Pick references, neighbours and crop coordinates from the latents; write the class table.

    `shapes(ids)` maps every id to its array shape."""
    settings = discovery_settings(cfg)
    latents, ids, splits = read_latents(latents_h5)

    def accept_factory(sid: str) -> Callable:
        if not air_test:
            return lambda start: True
        scan = open_scan(sid)
        return air_acceptor(lambda start, size: scan[box(start, size)], settings)

    rng = np.random.default_rng(settings.seed)
    plan = plan_classes(latents, ids, splits, settings, rng, accept_factory, shapes(ids))
    write_plan(plan, out_tsv)
    log.info(
        "%d classes from %d references: %d train and %d val rows",
        plan["class"].nunique(),
        plan.reference.nunique(),
        (plan.split == "train").sum(),
        (plan.split == "val").sum(),
    )


def plan_ct(latents_h5: Path | str, h5_files: list[str], cfg: dict, out_tsv: Path | str) -> None:
    """The 3D class table; coordinates must pass the air test on the reference."""
    open_scan = ct_scans(h5_files)
    _plan(latents_h5, open_scan, lambda ids: scan_shapes(open_scan, ids), cfg, True, out_tsv)


def plan_cxr(latents_h5: Path | str, images_h5: Path | str, cfg: dict, out_tsv: Path | str) -> None:
    """The 2D class table. No air test: the paper has none for X-rays, and most of a film is above its threshold.

    Every stored radiograph has the same size, so the shapes need no image reads."""
    with read_h5(images_h5) as h5:
        shape = h5["images"].shape[1:]
    _plan(latents_h5, cxr_scans(images_h5), lambda ids: dict.fromkeys(ids, shape), cfg, False, out_tsv)


def _patches(plan_tsv: Path | str, open_scan: Callable, cfg: dict, out_h5: Path | str, out_png: Path | str) -> None:
    """Cut the planned crops (one scan in memory at a time) into one HDF5 file, and draw the class montage."""
    settings = discovery_settings(cfg)
    plan = read_plan(plan_tsv)
    extract_patches(
        plan, open_scan, out_h5, settings, cfg["multi_resolution"], settings.seed, {"discovery": json.dumps(cfg)}
    )
    patch_montage(out_h5, out_png)


def plan(dims: int, latents_h5: Path | str, h5_files: list[str], cfg: dict, out_tsv: Path | str) -> None:
    """The class table of one dimension."""
    if dims == 3:
        plan_ct(latents_h5, h5_files, cfg, out_tsv)
    else:
        plan_cxr(latents_h5, h5_files[0], cfg, out_tsv)


def patches(dims: int, plan_tsv: Path | str, h5_files: list[str], cfg: dict, out_h5: Path | str, png: Path | str):
    """The pseudo-labelled patches of one dimension."""
    open_scan = ct_scans(h5_files) if dims == 3 else cxr_scans(h5_files[0])
    _patches(plan_tsv, open_scan, cfg, out_h5, png)
