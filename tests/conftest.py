"""Shared fixtures: small volumes and radiographs written in real on-disk formats."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from interruption import Interrupted, stopping_end_epoch  # noqa: F401  (Interrupted: for the tests)
from PIL import Image

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


def write_volume(
    path: Path,
    array: np.ndarray,
    spacing=(0.8, 0.8, 2.5),
    origin=(-100.0, -100.0, -300.0),
    direction=None,
    compress: bool = False,
) -> Path:
    """Write a [z, y, x] array with SimpleITK in the format given by the path's extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def chest_like(shape=(40, 48, 48), seed=0) -> np.ndarray:
    """A small int16 volume with air padding, a soft-tissue body and two lung-density blobs."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    cy, cx = shape[1] / 2, shape[2] / 2
    body = ((y - cy) / (0.45 * shape[1])) ** 2 + ((x - cx) / (0.45 * shape[2])) ** 2 < 1
    lungs = (((y - cy) / (0.3 * shape[1])) ** 2 + ((np.abs(x - cx) - 0.2 * shape[2]) / (0.15 * shape[2])) ** 2) < 1
    hu = np.full(shape, -2000, np.int16)
    hu[body] = 40
    hu[lungs] = -850
    return (hu + rng.normal(0, 10, shape) * body).astype(np.int16)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def real_ct(tmp_path) -> Path:
    return Path(shutil.copy(DATA / "CTChest4.nrrd", tmp_path))


@pytest.fixture
def real_cr(tmp_path) -> Path:
    return Path(shutil.copy(DATA / "RG1_UNCR.dcm", tmp_path))


def interrupt_after(monkeypatch, epochs: int) -> None:
    """Make the training loop (training.fit: the autoencoder, pretraining) stop as if killed after epoch `epochs`'
    checkpoint."""
    from semantic_genesis.runtime import training

    monkeypatch.setattr(training, "end_epoch", stopping_end_epoch(training.end_epoch, epochs))


def interrupt_processes_after(monkeypatch, epochs: int) -> None:
    """The same for the training processes this one starts (torchrun): tests/interrupt/sitecustomize.py."""
    monkeypatch.setenv("SG_TEST_INTERRUPT_AFTER", str(epochs))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(Path(__file__).parent / "interrupt"), os.environ.get("PYTHONPATH", "")])
    )
