"""Write artifacts atomically: a later stage never sees a half-written file or folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

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
