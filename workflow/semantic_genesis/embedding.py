"""Self-discovery, first half: train the autoencoder on whole scans or radiographs and embed every usable one."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .artifacts import atomic_path, read_h5, read_tsv
from .autoencoder import AutoencoderSettings, embed_images, latent_scatter, load_autoencoder, train_autoencoder
from .preprocess_ct import load_thumbnails
from .preprocess_cxr import PreprocessedCXR
from .training import resolve_device

log = logging.getLogger(__name__)


def ct_inputs(scans_tsv: Path | str, h5_files: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Usable CT scans and their thumbnails (N, z, y, x); each subset file is named <subset>.h5."""
    return load_thumbnails(read_tsv(scans_tsv), {Path(p).stem: p for p in h5_files})


def cxr_inputs(images_tsv: Path | str, images_h5: Path | str, size: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Usable radiographs and their images area-averaged to size x size (N, size, size)."""
    manifest = read_tsv(images_tsv)
    usable = manifest[manifest.status == "ok"].reset_index(drop=True)
    with PreprocessedCXR(images_h5) as store:
        images = np.stack([store.image(int(i)) for i in usable["index"]])
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(images)[:, None], (size, size))[:, 0]
    return usable, pooled.numpy()


def load_inputs(dims: int, manifest_tsv: Path | str, h5_files: list[str], input_size: int | None = None):
    """The usable images of one dimension and their manifest: CT thumbnails (3) or resized radiographs (2)."""
    if dims == 3:
        return ct_inputs(manifest_tsv, h5_files)
    return cxr_inputs(manifest_tsv, h5_files[0], input_size)


def train(manifest: pd.DataFrame, images: np.ndarray, settings: AutoencoderSettings, out_dir: Path | str) -> None:
    """Train on the train split, validate on the val split; resume an interrupted run, restart a stale one."""
    split = manifest.split.to_numpy()
    log.info(
        "autoencoder on %d train / %d val images of shape %s",
        (split == "train").sum(),
        (split == "val").sum(),
        images.shape[1:],
    )
    train_autoencoder(images[split == "train"], images[split == "val"], settings, out_dir, log=log, restart_stale=True)


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


def read_latents(path: Path | str) -> tuple[np.ndarray, list[str], list[str]]:
    """Latents (N, C), ids and splits written by embed."""
    with read_h5(path) as h5:
        return h5["latents"][()], h5["ids"].asstr()[()].tolist(), h5["splits"].asstr()[()].tolist()


def phantom_colours(manifest: pd.DataFrame, phantoms_tsv: Path | str) -> dict[str, np.ndarray]:
    """A synthetic phantom parameter per scan, to see whether the latent space follows anatomy."""
    phantoms = pd.read_csv(phantoms_tsv, sep="\t", dtype={"seriesuid": str}).set_index("seriesuid")
    return {"lung fraction (phantom)": phantoms.lung_fraction.reindex(manifest.id).to_numpy()}
