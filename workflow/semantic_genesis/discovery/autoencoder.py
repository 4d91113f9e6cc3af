"""Self-discovery autoencoder: whole-scan (3D) or whole-radiograph (2D) reconstruction and its latent embedding."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..networks.unet3d import double_conv, layers
from ..plots import Cell, Panel, epoch_curves, image_grid
from ..runtime.files import atomic_path
from ..runtime.training import (
    Checkpointing,
    Stopping,
    amp_dtype,
    batches,
    finish_run,
    fit,
    reproducible,
    resolve_device,
    run_stamp,
)
from ..settings import Settings
from .inputs import ImageSet, array_images

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "lr", "seconds"]
# Settings that may change between a run and its resumption without changing the trajectory of the run.
RESUMABLE_CHANGES = {"max_epochs", "num_threads"}


@dataclass(frozen=True)
class AutoencoderSettings(Settings):
    """Architecture and training settings of the self-discovery autoencoder.

    The authors' V-Net without skips (`self_discovery/vnet3d.py`, depth 4): level i (i = 0 .. levels-1) has two convs
    of base_width * 2**i and base_width * 2**(i+1) channels, with a max-pool 2 between levels (levels - 1 pools); the
    latent is the last level's output, base_width * 2**levels channels at 1 / 2**(levels-1) of the input. The paper's
    network is base_width=32, levels=4: convs (32, 64), (64, 128), (128, 256), (256, 512); a 128x128x64 scan gives a
    512 x 16x16x8 map, averaged to the 512-long embedding. Every spatial input size must be divisible by
    2**(levels-1). The decoder, as theirs: per level back up, nearest upsampling 2 and two convs of that level's output
    width, then a 1x1 conv and a sigmoid; `skips` concatenates the level's output (the authors left that out).
    A plateau or early-stopping "improvement" is a relative decrease of more than min_improvement in the monitored loss.
    """

    dims: int = 3
    base_width: int = 32
    levels: int = 4
    skips: bool = False
    batch_size: int = 4
    lr: float = 1e-3
    max_epochs: int = 1000
    plateau_factor: float = 0.5
    plateau_patience: int = 20
    early_stopping_patience: int = 50
    min_improvement: float = 1e-4
    seed: int = 0
    num_threads: int = 0
    device: str = "auto"  # "auto": the GPU when there is one (training.resolve_device)
    amp: str | bool = "auto"  # mixed precision on a GPU (training.amp_dtype)

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, not {self.dims}")
        if self.levels < 1 or self.base_width < 1 or self.batch_size < 1:
            raise ValueError("levels, base_width and batch_size must be positive")


class Autoencoder(nn.Module):
    """Convolutional autoencoder for 2D or 3D single-channel images in [0, 1], optionally with U-Net skips."""

    def __init__(self, settings: AutoencoderSettings):
        super().__init__()
        self.settings = settings
        dims, levels = settings.dims, settings.levels
        widths = [settings.base_width * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList(
            double_conv(dims, widths[i] if i else 1, widths[i], widths[i + 1]) for i in range(levels)
        )
        self.up = nn.ModuleList(
            double_conv(dims, widths[i + 2] + (widths[i + 1] if settings.skips else 0), widths[i + 1], widths[i + 1])
            for i in reversed(range(levels - 1))
        )
        self.head = layers(dims)[0](widths[1], 1, 1)
        self.pool = F.max_pool2d if dims == 2 else F.max_pool3d

    @property
    def latent_channels(self) -> int:
        """Length of the embedding returned by embed."""
        return self.settings.base_width * 2**self.settings.levels

    @property
    def divisor(self) -> int:
        """What every spatial input size must be divisible by: 2 per pool."""
        return 2 ** (self.settings.levels - 1)

    def _check(self, x: torch.Tensor) -> None:
        """Reject inputs the pooling pyramid cannot reproduce exactly."""
        if x.ndim != self.settings.dims + 2 or x.shape[1] != 1:
            raise ValueError(f"expected (N, 1, {'D, ' if self.settings.dims == 3 else ''}H, W), got {tuple(x.shape)}")
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} is not divisible by 2**(levels-1) = {self.divisor}")

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Latent feature map and the output of every level above it."""
        self._check(x)
        features = []
        for i, block in enumerate(self.down):
            x = block(self.pool(x, 2) if i else x)
            features.append(x)
        return features.pop(), features

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent feature map (N, base_width * 2**levels, *input_size / 2**(levels-1))."""
        return self._encode(x)[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled latent map, (N, C): the embedding used to find similar patients."""
        return self.encode(x).flatten(2).mean(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of x, same shape, values in [0, 1]."""
        x, features = self._encode(x)
        for block, skip in zip(self.up, reversed(features)):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skip], 1) if self.settings.skips else x)
        return torch.sigmoid(self.head(x))


def load_autoencoder(path: Path | str, map_location: str | torch.device = "cpu") -> Autoencoder:
    """Load the best weights written by train_autoencoder as model.pt, in eval mode."""
    saved = torch.load(path, map_location=map_location, weights_only=True)
    model = Autoencoder(AutoencoderSettings(**saved["settings"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def _fingerprint(*sets: ImageSet) -> str:
    """Digest of the shapes and contents of the training data, so a checkpoint is never resumed on other data (one
    pass over the images, batch by batch)."""
    digest = hashlib.blake2b(digest_size=16)
    for images in sets:
        digest.update(repr((len(images), *images.shape)).encode())
        for batch in images.batches(FINGERPRINT_BATCH):
            digest.update(batch.tobytes())
    return digest.hexdigest()


FINGERPRINT_BATCH = 64


def as_image_set(images: np.ndarray | ImageSet, dims: int) -> ImageSet:
    """Images as an ImageSet ((N, [D,] H, W) arrays are wrapped), checking their rank."""
    images = images if isinstance(images, ImageSet) else array_images(images)
    if len(images.shape) != dims:
        raise ValueError(
            f"expected {dims + 1}-d images (N, {'D, ' if dims == 3 else ''}H, W), got shape "
            f"{(len(images), *images.shape)}"
        )
    return images


def _tensor(images: ImageSet, indices) -> torch.Tensor:
    """Some images of a set as an (N, 1, ...) float32 tensor."""
    return torch.from_numpy(images.read(np.asarray(indices)))[:, None]


@torch.no_grad()
def _mean_loss(model: Autoencoder, images: ImageSet, batch_size: int, device: torch.device) -> float:
    """Mean squared reconstruction error over all voxels of a set, in eval mode."""
    model.eval()
    total = 0.0
    for batch in batches(len(images), batch_size):
        x = _tensor(images, batch).to(device)
        total += F.mse_loss(model(x), x, reduction="sum").item()
    return total / images.numel


class _Run:
    """The autoencoder's hooks for training.fit: model, optimiser, schedule, loss scaling and the batch order."""

    def __init__(self, settings: AutoencoderSettings, train: ImageSet, val: ImageSet, device: torch.device):
        self.settings, self.train, self.val, self.device = settings, train, val, device
        self.amp = amp_dtype(settings.amp, device)
        self.validates = len(val) > 0
        torch.manual_seed(settings.seed)
        self.model = Autoencoder(settings).to(device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == torch.float16)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            factor=settings.plateau_factor,
            patience=settings.plateau_patience,
            threshold=settings.min_improvement,
        )
        self.shuffle = torch.Generator().manual_seed(settings.seed)

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        total = 0.0
        order = torch.randperm(len(self.train), generator=self.shuffle)
        for batch in batches(len(self.train), self.settings.batch_size, order):
            images = _tensor(self.train, batch).to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                reconstruction = self.model(images)
            loss = F.mse_loss(reconstruction.float(), images)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.item() * images.numel()
        return {"loss": total / self.train.numel}

    def validate(self) -> dict[str, float]:
        return {"loss": _mean_loss(self.model, self.val, self.settings.batch_size, self.device)}

    def schedule(self, watched: float) -> None:
        self.scheduler.step(watched)

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle.get_state(),
        }

    def load_state(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])
        self.shuffle.set_state(saved["shuffle_rng"])

    def describe(self, row: Mapping[str, float]) -> str:
        return f"train {row['train_loss']:.6f}, val {row.get('val_loss', float('nan')):.6f}"


def train_autoencoder(
    train_images: np.ndarray | ImageSet,
    val_images: np.ndarray | ImageSet,
    settings: AutoencoderSettings,
    out_dir: Path | str,
    log: logging.Logger | None = None,
    restart_stale: bool = False,
) -> pd.DataFrame:
    """Train on (N, [D,] H, W) images in [0, 1] (arrays, or ImageSets read batch by batch), resuming from
    out_dir/checkpoint.pt; return the epoch history.

    Writes checkpoint.pt (every epoch; deleted when the run is done), model.pt (best weights), history.csv, loss.png
    and reconstructions.png. With the same seed, a run interrupted and resumed ends with the same weights and losses
    as an uninterrupted one. A checkpoint of other settings, data or code is an error, or with restart_stale (a
    workflow rerun after a change) it is ignored and overwritten.
    """
    log = log or logging.getLogger(__name__)
    out_dir, device = Path(out_dir), resolve_device(settings.device)
    train, val = as_image_set(train_images, settings.dims), as_image_set(val_images, settings.dims)
    if len(train) == 0:
        raise ValueError("no training images")
    if len(val) == 0:
        log.warning("validation set is empty: the learning-rate schedule and early stopping follow the training loss")
    checkpoint = Checkpointing(
        out_dir / "checkpoint.pt",
        run_stamp(asdict(settings), _fingerprint(train, val), __name__),
        RESUMABLE_CHANGES,
        restart_stale,
    )
    stopping = Stopping(settings.max_epochs, settings.early_stopping_patience, settings.min_improvement)
    # On a GPU, speed wins over bitwise repeatability (cuDNN autotuning); on the CPU runs are exact.
    with reproducible(settings.num_threads, deterministic=device.type == "cpu"):
        run = _Run(settings, train, val, device)
        log.info(
            "autoencoder: %d train / %d val images, device %s%s",
            len(train),
            len(val),
            device,
            f" ({run.amp} autocast)" if run.amp else "",
        )
        state = fit(run, stopping, log, checkpoint, desc="autoencoder")
    model = run.model
    with atomic_path(out_dir / "model.pt") as tmp:
        weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}  # loads anywhere
        torch.save({"settings": asdict(settings), "state_dict": weights, "epoch": state["best_epoch"]}, tmp)
    history = pd.DataFrame(state["history"], columns=HISTORY_COLUMNS)
    with atomic_path(out_dir / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    loss = Panel("MSE", {"train": "train_loss", "validation": "val_loss"}, log=True)
    epoch_curves(history, [loss], out_dir / "loss.png", title="autoencoder reconstruction loss")
    examples = val if len(val) else train
    picks = torch.linspace(0, len(examples) - 1, min(4, len(examples))).round().long()
    rows, labels = reconstruction_rows(model, _tensor(examples, picks))
    image_grid(rows, out_dir / "reconstructions.png", row_labels=labels, dpi=100)
    finish_run(checkpoint.path)
    return history


@torch.no_grad()
def embed_images(model: Autoencoder, images: np.ndarray | ImageSet, batch_size: int = 8) -> np.ndarray:
    """Latent vectors (N, C) float32 of (N, [D,] H, W) images (an array or an ImageSet read batch by batch)."""
    model.eval()
    device = next(model.parameters()).device
    images = as_image_set(images, model.settings.dims)
    latents = [model.embed(torch.from_numpy(b)[:, None].to(device)).cpu() for b in images.batches(batch_size)]
    return (
        torch.cat(latents).numpy().astype(np.float32) if latents else np.zeros((0, model.latent_channels), np.float32)
    )


@torch.no_grad()
def reconstruction_rows(model: Autoencoder, images: torch.Tensor) -> tuple[list[list[Cell]], list[str]]:
    """Inputs and their reconstructions as image_grid rows with their labels; 3D: mid axial and coronal slices."""
    model.eval()
    recon = model(images.to(next(model.parameters()).device)).cpu()
    pairs = torch.stack([images, recon], 1)[:, :, 0].numpy()  # (N, 2, [D,] H, W)
    if model.settings.dims == 2:
        views = [("input", pairs[:, 0], "upper"), ("reconstruction", pairs[:, 1], "upper")]
    else:
        depth, height = pairs.shape[2], pairs.shape[3]
        axial, coronal = pairs[:, :, depth // 2], pairs[:, :, :, height // 2]
        # Array index 0 along z is inferior, so coronal slices are drawn with the origin at the bottom.
        views = [
            ("input axial", axial[:, 0], "upper"),
            ("reconstruction axial", axial[:, 1], "upper"),
            ("input coronal", coronal[:, 0], "lower"),
            ("reconstruction coronal", coronal[:, 1], "lower"),
        ]
    rows = [[Cell(image, origin=origin) for image in slices] for _, slices, origin in views]
    return rows, [label for label, _, _ in views]


def train(manifest: pd.DataFrame, images: ImageSet, settings: AutoencoderSettings, out_dir: Path | str) -> None:
    """Train on the train split, validate on the val split; resume an interrupted run, restart a stale one."""
    split = manifest.split.to_numpy()
    log.info(
        "autoencoder on %d train / %d val images of shape %s, read batch by batch",
        (split == "train").sum(),
        (split == "val").sum(),
        images.shape,
    )
    train, val = images.subset(split == "train"), images.subset(split == "val")
    train_autoencoder(train, val, settings, out_dir, log=log, restart_stale=True)
