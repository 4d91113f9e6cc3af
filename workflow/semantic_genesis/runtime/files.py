"""Write artifacts atomically: a later stage never sees a half-written file or folder."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; move it to `path` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix so that writers choosing a format by extension (SimpleITK, matplotlib) still work.
    tmp = path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{''.join(path.suffixes)}")
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_tsv(frame: pd.DataFrame, path: Path | str) -> None:
    """Write a tab-separated table atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)


def read_tsv(path: Path | str) -> pd.DataFrame:
    """Read a table written by write_tsv, keeping ids as strings."""
    return pd.read_csv(path, sep="\t", dtype={"id": str, "subset": str, "reason": str}, keep_default_na=False)


# Which rule writes each HDF5 artifact, to say how to rebuild a damaged one.
PRODUCERS = (
    ("/preprocessed/", "preprocess_ct"),
    ("/shards/", "preprocess_cxr"),
    ("images.h5", "cxr_manifest"),
    ("latents.h5", "embed"),
    ("patches.h5", "patches"),
    ("/tasks/", "task_data"),
)


class DamagedFileError(OSError):
    """An HDF5 file that cannot be read (truncated by a full disk or a copy cut short); says how to rebuild it."""


def read_h5(path: Path | str) -> h5py.File:
    """Open an HDF5 file read-only; a truncated or damaged one raises DamagedFileError naming it and the fix."""
    try:
        return h5py.File(path, "r")
    except OSError as error:
        if not Path(path).exists():
            raise
        rule = next((rule for part, rule in PRODUCERS if part in Path(path).as_posix()), None)
        how = f"snakemake --forcerun {rule} <your target>" if rule else "delete it and rerun the workflow"
        raise DamagedFileError(
            f"{path} cannot be read as HDF5 ({' '.join(str(error).split())}): it is truncated or damaged. Rebuild it "
            f"with `{how}` (or delete it; the next run makes it again)"
        ) from None


def write_chunks(
    group: h5py.Group,
    name: str,
    array: np.ndarray,
    chunks: tuple[int, ...],
    dtype: np.dtype | None = None,
    fill: Callable[[np.ndarray, np.ndarray], object] = np.copyto,
) -> h5py.Dataset:
    """An uncompressed chunked dataset of `dtype` (default array's) holding fill(out=chunk, part) of every chunk.

    Each chunk is converted into one reused buffer and its bytes handed to HDF5 as they are: no whole-array copy, and
    none of HDF5's per-element selection and conversion machinery (most of the time of `create_dataset(data=...)` for
    a whole scan). Edge chunks are zero-padded, as HDF5 stores them. Reads back exactly as create_dataset's."""
    chunks = tuple(min(c, s) for c, s in zip(chunks, array.shape))
    data = group.create_dataset(name, shape=array.shape, dtype=dtype or array.dtype, chunks=chunks)
    block = np.zeros(chunks, dtype=data.dtype)
    for corner in itertools.product(*(range(0, size, step) for size, step in zip(array.shape, chunks))):
        part = array[tuple(slice(c, c + step) for c, step in zip(corner, chunks))]
        if part.shape != chunks:
            block.fill(0)
        fill(block[tuple(slice(0, n) for n in part.shape)], part)
        data.id.write_direct_chunk(corner, block)
    return data
