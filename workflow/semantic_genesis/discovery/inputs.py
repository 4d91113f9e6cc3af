"""The inputs of self-discovery: usable scans or radiographs from the manifests, and opened preprocessed files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from ..preprocess.ct import PreprocessedCT, load_thumbnails
from ..preprocess.cxr import PreprocessedCXR
from ..resize import area_2d
from ..runtime.files import read_h5, read_tsv


def ct_inputs(scans_tsv: Path | str, h5_files: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Usable CT scans and their thumbnails (N, z, y, x); each subset file is named <subset>.h5."""
    return load_thumbnails(read_tsv(scans_tsv), {Path(p).stem: p for p in h5_files})


def cxr_inputs(images_tsv: Path | str, images_h5: Path | str, size: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Usable radiographs and their images area-averaged to size x size (N, size, size)."""
    manifest = read_tsv(images_tsv)
    usable = manifest[manifest.status == "ok"].reset_index(drop=True)
    with PreprocessedCXR(images_h5) as store:
        images = np.stack([store.image(int(i)) for i in usable["index"]])
    return usable, area_2d(images, size)


def load_inputs(dims: int, manifest_tsv: Path | str, h5_files: list[str], input_size: int | None = None):
    """The usable images of one dimension and their manifest: CT thumbnails (3) or resized radiographs (2)."""
    if dims == 3:
        return ct_inputs(manifest_tsv, h5_files)
    return cxr_inputs(manifest_tsv, h5_files[0], input_size)


class Scan(Protocol):
    """What extract_patches reads from a scan: its shape and numpy-style slices in [0, 1]."""

    shape: tuple[int, ...]

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray: ...


def ct_scans(h5_paths: Sequence[Path | str]) -> Callable[[str], Scan]:
    """An `open_scan` over preprocess_ct's per-subset files: lazy [0, 1] views reading only the touched chunks."""
    stores = [PreprocessedCT(p) for p in h5_paths]
    where = {sid: store for store in stores for sid in store.ids}
    return lambda sid: where[sid].view(sid)


def cxr_scans(h5_path: Path | str) -> Callable[[str], Scan]:
    """An `open_scan` over images.h5 of preprocess_cxr: one radiograph (H, W) in [0, 1] per call."""
    reader = PreprocessedCXR(h5_path)
    position = {sid: i for i, sid in enumerate(reader.ids)}
    return lambda sid: reader.image(position[sid])


def scan_shapes(open_scan: Callable[[str], Scan], ids: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Array shape of every scan, for plan_classes (cheap for ct_scans' lazy views; reads each image for cxr_scans)."""
    return {sid: tuple(open_scan(sid).shape) for sid in ids}


def read_latents(path: Path | str) -> tuple[np.ndarray, list[str], list[str]]:
    """Latents (N, C), ids and splits written by embed."""
    with read_h5(path) as h5:
        return h5["latents"][()], h5["ids"].asstr()[()].tolist(), h5["splits"].asstr()[()].tolist()
