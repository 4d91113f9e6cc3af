"""The inputs of self-discovery: usable scans or radiographs from the manifests, and opened preprocessed files."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from math import prod
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from ..preprocess.ct import PreprocessedCT
from ..preprocess.cxr import PreprocessedCXR
from ..resize import area_2d
from ..runtime.files import read_h5, read_tsv


class ImageSet:
    """Images of one dimension read on demand, float32 (N, [D,] H, W) in [0, 1]: memory holds a batch, never the set.

    `read(indices)` returns the images in the order asked; `subset(mask)` selects some of them.
    """

    def __init__(self, count: int, shape: tuple[int, ...], reader: Callable[[int], np.ndarray], rows=None):
        self.shape, self._reader = tuple(shape), reader
        self._rows = np.arange(count) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def numel(self) -> int:
        """Values in the whole set."""
        return len(self) * prod(self.shape)

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The images at these positions, stacked."""
        out = np.empty((len(indices), *self.shape), np.float32)
        for k, i in enumerate(np.asarray(indices, dtype=np.int64)):
            out[k] = self._reader(int(self._rows[i]))
        return out

    def subset(self, mask: np.ndarray) -> ImageSet:
        """The images where mask is true, in order."""
        return ImageSet(0, self.shape, self._reader, self._rows[np.asarray(mask, bool)])

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The whole set in order, batch by batch."""
        for start in range(0, len(self), batch_size):
            yield self.read(range(start, min(start + batch_size, len(self))))


def array_images(images: np.ndarray) -> ImageSet:
    """An ImageSet over images already in memory (tests, small sets), checked for range."""
    images = np.asarray(images, np.float32)
    if images.size and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must lie in [0, 1]")
    return ImageSet(len(images), images.shape[1:], images.__getitem__)


def ct_inputs(scans_tsv: Path | str, h5_files: list[str]) -> tuple[pd.DataFrame, ImageSet]:
    """Usable CT scans and their thumbnails (z, y, x), read scan by scan; each subset file is named <subset>.h5."""
    usable = usable_rows(read_tsv(scans_tsv))
    stores = {Path(p).stem: PreprocessedCT(p) for p in h5_files}
    where = list(zip(usable.subset, usable.id))
    if not where:
        return usable, ImageSet(0, (0, 0, 0), lambda i: np.zeros(0))
    shape = stores[where[0][0]].thumbnail(where[0][1]).shape

    def reader(i: int) -> np.ndarray:
        subset, sid = where[i]
        return stores[subset].thumbnail(sid)

    return usable, ImageSet(len(where), shape, reader)


def cxr_inputs(images_tsv: Path | str, images_h5: Path | str, size: int) -> tuple[pd.DataFrame, ImageSet]:
    """Usable radiographs area-averaged to size x size, read one at a time."""
    usable = usable_rows(read_tsv(images_tsv))
    store = PreprocessedCXR(images_h5)
    positions = usable["index"].astype(int).tolist()
    return usable, ImageSet(len(positions), (size, size), lambda i: area_2d(store.image(positions[i])[None], size)[0])


def usable_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest's rows with status ok, renumbered."""
    return manifest[manifest.status == "ok"].reset_index(drop=True)


def load_inputs(dims: int, manifest_tsv: Path | str, h5_files: list[str], input_size: int | None = None):
    """The usable images of one dimension (an ImageSet) and their manifest: CT thumbnails (3) or resized
    radiographs (2)."""
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
