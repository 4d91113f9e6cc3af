"""Self-discovery, first half: train the autoencoder on whole scans or radiographs and embed every usable one."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ..plots import latent_scatter
from ..runtime.files import atomic_path
from ..runtime.training import resolve_device
from .autoencoder import embed_images, load_autoencoder

log = logging.getLogger(__name__)


def embed(
    manifest: pd.DataFrame,
    images: np.ndarray,
    model_path: Path | str,
    out_h5: Path | str,
    out_png: Path | str,
    colour_by: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Latent vector of every usable image (all splits), stored with ids and splits, plus a PCA scatter plot."""
    model = load_autoencoder(model_path)
    # The device setting the autoencoder was trained with (its job and this one both claim a GPU).
    device = resolve_device(model.settings.device)
    log.info("embedding on %s", device)
    latents = embed_images(model.to(device), images, batch_size=model.settings.batch_size)
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("latents", data=latents)
        h5.create_dataset("ids", data=manifest.id.to_numpy(dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset("splits", data=manifest.split.to_numpy(dtype=object), dtype=h5py.string_dtype())
        h5.attrs["model"] = str(model_path)
    latent_scatter(latents, {"split": manifest.split.tolist(), **(colour_by or {})}, out_png)
    log.info("embedded %d images into %d-d latents", len(latents), latents.shape[1])
    return latents


def phantom_colours(manifest: pd.DataFrame, phantoms_tsv: Path | str) -> dict[str, np.ndarray]:
    """A synthetic phantom parameter per scan, to see whether the latent space follows anatomy."""
    phantoms = pd.read_csv(phantoms_tsv, sep="\t", dtype={"seriesuid": str}).set_index("seriesuid")
    return {"lung fraction (phantom)": phantoms.lung_fraction.reindex(manifest.id).to_numpy()}
