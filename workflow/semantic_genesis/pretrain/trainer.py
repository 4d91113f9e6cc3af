"""Pretraining on the self-discovered patches: self-restoration, self-classification or both, for every method.

A method fixes which heads train and which transform policy makes the restoration task (METHODS). The data stay in
patches.h5 and are read lazily, one file handle per DataLoader worker. A sample's transform depends only on
(seed, epoch, index), and the batch order only on (seed, epoch), so a run resumed from its per-epoch checkpoint ends
with the same weights as an uninterrupted one, whatever the number of workers. Validation uses epoch 0's draw every
epoch: its transforms are fixed, so early stopping watches a loss that changes only with the weights.

With processes > 1 (one per GPU) the run is data-parallel under torchrun: every global batch is shared out among the
processes, a step equals the single-process step on that batch (distributed.py), and rank 0 alone writes.
Each torchrun process runs `main` (through the module semantic_genesis.pretrain.process).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ..methods import METHODS, Method
from ..networks.genesis import GenesisNet, NetworkSettings, save_pretrained
from ..plots import Cell, Panel, epoch_curves, image_grid, matrix_image
from ..runtime.files import atomic_path, read_h5
from ..runtime.logs import rule_logging
from ..runtime.provenance import file_digest
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
from .distributed import SINGLE, Processes, all_sum, launch, process_group, share_weight, with_global_batchnorm
from .transforms import (
    TransformSettings,
    apply,
    apply_batch,
    draw,
    draw_step,
    restoration_mask_batch,
    sample_generator,
)

log = logging.getLogger(__name__)


RESTORATION_POLICIES = ("models_genesis", "released")
SCHEDULES = ("plateau", "step")
OPTIMIZERS = ("adam", "sgd")
# Where a method's training samples come from: the self-discovered patches, or random crops of every scan (the Models
# Genesis paper's data, rule random_cubes).
DATA_SOURCES = ("patches", "random_cubes")
# The in-painting baseline's restoration loss: on the in-painted blocks (Pathak et al.) or on the whole patch.
INPAINTING_LOSSES = ("masked", "full")
# What the self-classification baseline sees: the patch, or the patch transformed as for restoration (the released
# data loader's exp_choice "en").
CLASSIFICATION_INPUTS = ("patch", "transformed")
HISTORY_COLUMNS = [
    "epoch",
    *(f"{split}_{name}" for split in ("train", "val") for name in ("loss", "rec", "cls", "acc")),
    "train_samples_per_s",
    "lr",
    "seconds",
]
# Settings that may differ between a run and its resumption without changing what the run computes.
RESUMABLE_CHANGES = {"max_epochs", "num_threads", "workers"}
VALIDATION_EPOCH = 0  # training epochs count from 1, so the fixed validation draw never repeats a training draw


@dataclass(frozen=True)
class PretrainSettings(Settings):
    """One pretraining run. Defaults are the paper's; execution settings (device .. num_threads) pick hardware.

    augment "workers" applies transforms with numpy in the DataLoader workers, "device" with the batched torch path on
    the training device (its noise comes from torch generators, so the two give different, equally valid draws);
    "auto" takes "device" on a GPU. amp "auto" uses bfloat16 (float16 with loss scaling where bfloat16 is missing) on
    a GPU and full precision on the CPU. workers -1 means 0 on the CPU, where the model needs every core, and on a GPU
    the job's threads but one (at most 8). optimizer "sgd" uses `momentum` (Models Genesis: lr 1, momentum 0.9,
    batch 6, step schedule); "adam" ignores it. data names the sample source (DATA_SOURCES); methods with a
    classification head need the labelled patches. inpainting_loss and self_classification_input: see
    INPAINTING_LOSSES and CLASSIFICATION_INPUTS.
    """

    method: str = "semantic_genesis"
    dims: int = 3
    restoration_policy: str = "models_genesis"
    transforms: Mapping = field(default_factory=dict)
    base_width: int = 32
    head_width: int = 1024
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    data: str = "patches"
    inpainting_loss: str = "masked"
    self_classification_input: str = "patch"
    schedule: str = "plateau"
    step_size: int = 40
    decay_factor: float = 0.5
    plateau_patience: int = 20
    early_stopping_patience: int = 50
    min_improvement: float = 1e-4
    max_epochs: int = 10_000
    lambda_rec: float = 1.0
    lambda_cls: float = 0.01
    seed: int = 0
    device: str = "auto"
    amp: str | bool = "auto"
    augment: str = "auto"
    workers: int = -1
    num_threads: int = 0

    def __post_init__(self) -> None:
        """Reject unknown names before any data is read."""
        choices = {
            "method": (self.method, tuple(METHODS)),
            "restoration_policy": (self.restoration_policy, RESTORATION_POLICIES),
            "schedule": (self.schedule, SCHEDULES),
            "optimizer": (self.optimizer, OPTIMIZERS),
            "data": (self.data, DATA_SOURCES),
            "inpainting_loss": (self.inpainting_loss, INPAINTING_LOSSES),
            "self_classification_input": (self.self_classification_input, CLASSIFICATION_INPUTS),
            "amp": (self.amp, ("auto", True, False)),
            "augment": (self.augment, ("auto", "workers", "device")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, not {self.dims}")
        if self.data == "random_cubes" and METHODS[self.method].classification:
            raise ValueError(f"method {self.method} trains a classification head: it needs data 'patches' (labels)")
        TransformSettings.from_dict(self.transforms)

    @property
    def policy(self) -> str:
        """The transform policy this method trains with."""
        if self.method == "self_classification" and self.self_classification_input == "transformed":
            return self.restoration_policy
        return METHODS[self.method].policy or self.restoration_policy

    @property
    def masked_loss(self) -> bool:
        """Whether the restoration loss covers only the in-painted blocks."""
        return self.policy == "inpainting" and self.inpainting_loss == "masked"

    def network(self, num_classes: int) -> NetworkSettings:
        """Network settings for this method with num_classes discovered classes."""
        method = METHODS[self.method]
        return NetworkSettings(
            dims=self.dims,
            base_width=self.base_width,
            num_classes=num_classes if method.classification else 0,
            head_width=self.head_width,
            restoration=method.restoration,
        )


class PatchDataset(Dataset):
    """One split of patches.h5, transformed on the fly; each DataLoader worker opens its own read-only handle.

    Items are keyed (epoch, index). With draw_only the item holds the raw patch and its drawn plan, for the batched
    torch path; otherwise the (input, target) pair made with numpy.
    """

    def __init__(
        self, path: Path | str, split: str, policy: str, transforms: TransformSettings, seed: int, draw_only: bool
    ):
        self.path, self.split, self.policy, self.transforms = Path(path), split, policy, transforms
        self.seed, self.draw_only = seed, draw_only
        with read_h5(self.path) as h5:
            self.labels = h5[split]["labels"][()]
            self.shape = tuple(h5[split]["patches"].shape[1:])
        self._h5: h5py.File | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:
        # An open HDF5 handle must not travel into a worker process: each opens its own.
        return {**self.__dict__, "_h5": None, "_pid": None}

    def _patches(self) -> h5py.Dataset:
        """The split's patch dataset through this process's own handle."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5, self._pid = read_h5(self.path), os.getpid()
        return self._h5[self.split]["patches"]

    def __getitem__(self, key: tuple[int, int]) -> tuple:
        epoch, index = key
        patch = self._patches()[index].astype(np.float32)
        plan = draw(self.policy, patch.shape, sample_generator(self.seed, epoch, index), self.transforms)
        label = int(self.labels[index])
        if self.draw_only:
            return patch, plan, label
        return (*apply(patch, plan), label, plan)


def collate(samples: Sequence[tuple]) -> dict:
    """Stack a list of PatchDataset items into (N, 1, ...) tensors (plans stay a list)."""
    first, second, labels, *plans = zip(*samples)
    stacked = torch.from_numpy(np.stack(first))[:, None]
    batch = {"label": torch.tensor(labels, dtype=torch.long)}
    if isinstance(second[0], np.ndarray):
        target = torch.from_numpy(np.stack(second))[:, None]
        return {**batch, "input": stacked, "target": target, "plans": list(plans[0])}
    return {**batch, "patch": stacked, "plans": list(second)}


def restoration_loss(restored: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """MSE over every voxel, or over the voxels of `mask` (the in-painted blocks) only."""
    if mask is None:
        return F.mse_loss(restored, target)
    return ((restored - target) ** 2)[mask].mean()


class EpochBatches(Sampler):
    """Batches of (epoch, index) keys: the order is a function of (seed, epoch) alone; set .epoch before iterating.

    Among several processes each takes its share of every batch. In lockstep (training, where every process must
    join every step) a last batch with fewer samples than processes is skipped; otherwise empty shares are.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, shuffle: bool, processes: Processes = SINGLE, lockstep=False
    ):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.processes, self.lockstep = processes, lockstep
        self.epoch = VALIDATION_EPOCH

    def _shares(self) -> list[tuple[torch.Tensor, int]]:
        """This process's index batches of the current epoch, each with the size of the global batch it belongs to."""
        order = None
        if self.shuffle:
            order = torch.from_numpy(np.random.default_rng([self.seed, self.epoch]).permutation(self.n))
        parts = batches(self.n, self.batch_size, order)
        if self.lockstep and self.processes.active:
            parts = [part for part in parts if len(part) >= self.processes.world_size]
        shares = ((self.processes.share(part), len(part)) for part in parts)
        return [(share, size) for share, size in shares if len(share)]

    def __iter__(self):
        for share, _ in self._shares():
            yield [(self.epoch, int(i)) for i in share]

    def __len__(self) -> int:
        return len(self._shares())

    def global_sizes(self) -> list[int]:
        """Size of the global batch behind each batch __iter__ yields this epoch, in the same order."""
        return [size for _, size in self._shares()]


def _auto_workers(device: torch.device, num_threads: int) -> int:
    """DataLoader workers when not configured: none on the CPU, whose cores train the model; on a GPU the job's
    threads but one (at most 8)."""
    if device.type == "cpu":
        return 0
    return max(1, min(8, (num_threads or os.cpu_count() or 2) - 1))


class _Totals:
    """Sample-weighted sums of the loss terms and correct classifications over one pass."""

    def __init__(self):
        self.n, self.rec, self.cls, self.correct = 0, 0.0, 0.0, 0

    def add(self, n: int, rec: torch.Tensor, cls: torch.Tensor, correct: int) -> None:
        self.n += n
        self.rec += rec.item() * n
        self.cls += cls.item() * n
        self.correct += correct

    def summed(self, device: torch.device) -> _Totals:
        """These totals summed over all processes."""
        self.n, self.rec, self.cls, self.correct = all_sum([self.n, self.rec, self.cls, self.correct], device)
        return self

    def summary(self, settings: PretrainSettings, method: Method) -> dict[str, float]:
        """Mean restoration MSE, cross-entropy, weighted loss and accuracy (NaN where a head is absent)."""
        if self.n == 0:
            return {"loss": float("nan"), "rec": float("nan"), "cls": float("nan"), "acc": float("nan")}
        rec, cls = self.rec / self.n, self.cls / self.n
        loss = settings.lambda_rec * rec * method.restoration + settings.lambda_cls * cls * method.classification
        return {
            "loss": loss,
            "rec": rec if method.restoration else float("nan"),
            "cls": cls if method.classification else float("nan"),
            "acc": self.correct / self.n if method.classification else float("nan"),
        }


class Pretrainer:
    """The model, its optimiser and data of one pretraining run, with the per-batch work they share.

    `model` is the network itself; `trained` is what the training step calls: the network, or its
    DistributedDataParallel wrapper when there are several processes.
    """

    def __init__(
        self,
        patches_h5: Path | str,
        settings: PretrainSettings,
        processes: Processes = SINGLE,
        device: torch.device | None = None,
    ):
        self.settings, self.method, self.processes = settings, METHODS[settings.method], processes
        self.device = device or resolve_device(settings.device)
        self.amp = amp_dtype(settings.amp, self.device)
        on_device = settings.augment == "device" or (settings.augment == "auto" and self.device.type == "cuda")
        transforms = TransformSettings.from_dict(settings.transforms)
        self.data = {
            split: PatchDataset(patches_h5, split, settings.policy, transforms, settings.seed, draw_only=on_device)
            for split in ("train", "val")
        }
        num_classes = int(max(self.data["train"].labels.max(initial=-1), self.data["val"].labels.max(initial=-1))) + 1
        torch.manual_seed(settings.seed)
        self.model = GenesisNet(settings.network(num_classes)).to(self.device)
        self.trained: torch.nn.Module = self.model
        if processes.active:
            with_global_batchnorm(self.model)
            self.trained = DistributedDataParallel(
                self.model,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                # Batch-norm statistics are already equal on every process (global batch norm).
                forward_sync_buffers=False,
                # Self-classification never runs the decoder.
                find_unused_parameters=not self.method.restoration,
            )
        if settings.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=settings.lr, momentum=settings.momentum)
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        if settings.schedule == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                factor=settings.decay_factor,
                patience=settings.plateau_patience,
                threshold=settings.min_improvement,
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.StepLR(
                self.optimizer, step_size=settings.step_size, gamma=settings.decay_factor
            )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        workers = settings.workers if settings.workers >= 0 else _auto_workers(self.device, settings.num_threads)
        self.samplers = {
            split: EpochBatches(
                len(data), settings.batch_size, settings.seed, split == "train", processes, lockstep=split == "train"
            )
            for split, data in self.data.items()
        }
        self.loaders = {
            split: DataLoader(
                data,
                batch_sampler=self.samplers[split],
                collate_fn=collate,
                num_workers=workers,
                persistent_workers=workers > 0,
                pin_memory=self.device.type == "cuda",
            )
            for split, data in self.data.items()
            if len(data)
        }

    @property
    def validates(self) -> bool:
        return len(self.data["val"]) > 0

    def learning_rate(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def schedule(self, watched: float) -> None:
        if self.settings.schedule == "plateau":
            self.scheduler.step(watched)
        else:
            self.scheduler.step()

    def describe(self, row: Mapping[str, float]) -> str:
        parts = [
            f"{split} loss {row[f'{split}_loss']:.5f} (rec {row[f'{split}_rec']:.5f}, cls {row[f'{split}_cls']:.4f}, "
            f"acc {row[f'{split}_acc']:.3f})"
            for split in ("train", "val")
            if f"{split}_loss" in row
        ]
        return ", ".join(parts) + f", {row['train_samples_per_s']:.1f} samples/s"

    def inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input, target, label) of a collated batch on the device, transformed there if it came untransformed."""
        labels = batch["label"].to(self.device, non_blocking=True)
        if "patch" in batch:
            inputs, targets = apply_batch(batch["patch"].to(self.device, non_blocking=True), batch["plans"])
            return inputs, targets, labels
        return batch["input"].to(self.device, non_blocking=True), batch["target"].to(self.device), labels

    def restoration_mask(self, batch: dict, targets: torch.Tensor) -> torch.Tensor:
        """(N, 1, ...) bool: the in-painted voxels of each sample of a batch, from its plans."""
        return restoration_mask_batch(batch["plans"], targets.shape[2:], self.device)[:, None]

    def losses(
        self, batch: dict, network: torch.nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor]:
        """Weighted loss, restoration MSE, cross-entropy, correct count and the restoration of one batch."""
        inputs, targets, labels = self.inputs(batch)
        zero = torch.zeros((), device=self.device)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            restored, logits = network(inputs)
        # The losses run in float32 whatever the autocast dtype: cross-entropy on logits, never log(softmax).
        mask = self.restoration_mask(batch, targets) if self.settings.masked_loss else None
        rec = restoration_loss(restored.float(), targets, mask) if restored is not None else zero
        cls = F.cross_entropy(logits.float(), labels) if logits is not None else zero
        correct = int((logits.argmax(1) == labels).sum()) if logits is not None else 0
        loss = self.settings.lambda_rec * rec + self.settings.lambda_cls * cls
        return loss, rec.detach(), cls.detach(), correct, restored

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training patches in the order of (seed, epoch): losses, accuracy and samples/s."""
        start = time.perf_counter()
        self.model.train()
        self.samplers["train"].epoch = epoch
        totals = _Totals()
        progress = tqdm(
            self.loaders["train"], desc=f"epoch {epoch}", unit="batch", leave=False, disable=not self.processes.main
        )
        # The sampler knows each global batch's size, so no step waits for the other processes to count theirs.
        for batch, total in zip(progress, self.samplers["train"].global_sizes()):
            totals.add(len(batch["label"]), *self.step(batch, total))
        summary = totals.summed(self.device).summary(self.settings, self.method)
        return summary | {"samples_per_s": len(self.data["train"]) / (time.perf_counter() - start)}

    def step(self, batch: dict, total: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One optimisation step on a batch: this process's share of a global batch of `total` samples (all of it
        for a lone process); its MSE, cross-entropy and correct count."""
        loss, rec, cls, correct, _ = self.losses(batch, self.trained)
        if self.processes.active:
            loss = loss * share_weight(len(batch["label"]), total, self.processes)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return rec, cls, correct

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Losses and accuracy on the validation patches with their fixed transforms, in eval mode."""
        self.model.eval()
        totals = _Totals()
        for batch in self.loaders.get("val", []):
            _, rec, cls, correct, _ = self.losses(batch, self.model)
            totals.add(len(batch["label"]), rec, cls, correct)
        return totals.summed(self.device).summary(self.settings, self.method)

    def state(self) -> dict:
        """Everything a resumed run needs besides the epoch bookkeeping."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state(self, saved: dict) -> None:
        """Restore what state() returned."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])


def pretrain(
    patches_h5: Path | str,
    settings: PretrainSettings,
    out_dir: Path | str,
    restart_stale: bool = False,
    processes: int = 1,
    log_path: Path | str | None = None,
    sources: Sequence[Mapping] = (),
) -> pd.DataFrame:
    """Pretrain one method on patches.h5, resuming from out_dir/checkpoint.pt; return the epoch history.

    On the CPU a run is bitwise reproducible (and a resumed run equals an uninterrupted one); on a GPU, where cuDNN
    autotuning picks kernels, only up to floating-point summation order.

    Writes checkpoint.pt every epoch (deleted when the run is done), then the best epoch's weights (weights.pt,
    encoder.pt, architecture.json; load them with networks.load_pretrained), history.csv, curves.png and
    examples.png. A checkpoint of other settings, patches or code is an error, or with restart_stale (a workflow
    rerun after a change) it is discarded. sources: the data records (provenance.data_record) of the scans behind
    the patches, kept in architecture.json so that every later result knows whether it rests on synthetic data.

    processes > 1 starts that many torchrun processes (one per visible GPU, or gloo processes on the CPU, which share
    num_threads) and waits for them; their rank 0 appends its log to log_path.
    """
    out_dir = Path(out_dir)
    if processes > 1 and not Processes.from_environment().active:
        arguments = ["--patches", str(patches_h5), "--out", str(out_dir), "--settings", json.dumps(asdict(settings))]
        arguments += ["--sources", json.dumps(list(sources))]
        arguments += ["--restart-stale"] * restart_stale + ["--log-file", str(log_path)] * (log_path is not None)
        launch("semantic_genesis.pretrain.process", arguments, processes)
        return pd.read_csv(out_dir / "history.csv")
    device = resolve_device(settings.device)
    with process_group(device) as (ranks, device):
        return _pretrain(patches_h5, settings, out_dir, restart_stale, ranks, device, sources)


def _pretrain(
    patches_h5: Path | str,
    settings: PretrainSettings,
    out_dir: Path,
    restart_stale: bool,
    ranks: Processes,
    device: torch.device,
    sources: Sequence[Mapping],
) -> pd.DataFrame:
    """pretrain() in one process of `ranks` (all of them compute, rank 0 writes)."""
    # The patches' bytes, not only their shapes and labels: a rebuilt patches.h5 (another HU window, say) has other
    # contents in the same layout, and must never continue a run on the old ones.
    fingerprint = file_digest(patches_h5)
    stamp = run_stamp(asdict(settings), fingerprint, __name__)
    threads = max(1, settings.num_threads // ranks.world_size) if settings.num_threads else 0
    # On a GPU, speed wins over bitwise repeatability: deterministic kernels would slow 3D pooling and scatters.
    with reproducible(threads, deterministic=device.type == "cpu"):
        run = Pretrainer(patches_h5, replace(settings, num_threads=threads), ranks, device)
        if not len(run.data["train"]):
            raise ValueError(f"{patches_h5} holds no training patches")
        log.info(
            "%s: %s policy, %d train / %d val patches of %s, %d classes, %s parameters, device %s%s%s",
            settings.method,
            settings.policy,
            len(run.data["train"]),
            len(run.data["val"]),
            "x".join(map(str, run.data["train"].shape)),
            run.model.settings.num_classes,
            f"{sum(p.numel() for p in run.model.parameters()):,}",
            run.device,
            f" ({run.amp} autocast)" if run.amp else "",
            f", {ranks.world_size} processes sharing batches of {settings.batch_size}" if ranks.active else "",
        )
        checkpoint = Checkpointing(out_dir / "checkpoint.pt", stamp, RESUMABLE_CHANGES, restart_stale, ranks.main)
        stopping = Stopping(settings.max_epochs, settings.early_stopping_patience, settings.min_improvement)
        state = fit(run, stopping, log, checkpoint, progress_bar=ranks.main)
        history = pd.DataFrame(state["history"], columns=HISTORY_COLUMNS)
        if not ranks.main:
            return history
        best = history[history.epoch == state["best_epoch"]].to_dict("records")
        extra = {
            "method": settings.method,
            "policy": settings.policy,
            "best_epoch": state["best_epoch"],
            "best": best[0] if best else {},
            "settings": asdict(settings),
            "patches": str(patches_h5),
            "patch_size": list(run.data["train"].shape),
            "patches_sha256": fingerprint,
            "data": list(sources),
        }
        save_pretrained(run.model, out_dir, extra=json.loads(json.dumps(extra, default=str)))
        with atomic_path(out_dir / "history.csv") as tmp:
            history.to_csv(tmp, index=False)
        panels = [Panel("loss (lambda-weighted)", {"train": "train_loss", "val": "val_loss"}, log=True)]
        if history.train_acc.notna().any():
            panels.append(Panel("classification accuracy", {"train": "train_acc", "val": "val_acc"}))
        epoch_curves(history, panels, out_dir / "curves.png", title=f"pretraining: {settings.method}")
        plot_examples(run, out_dir / "examples.png")
        finish_run(checkpoint.path)
    return history


def _middle(array: np.ndarray) -> np.ndarray:
    """The mid axial slice of a 3D patch, or the 2D patch itself."""
    return array[len(array) // 2] if array.ndim == 3 else array


@torch.no_grad()
def plot_examples(run: Pretrainer, out_png: Path | str, count: int = 4) -> None:
    """Validation restorations (transformed input, restoration, target) or, without a decoder, the confusion matrix."""
    data = run.data["val"] if len(run.data["val"]) else run.data["train"]
    run.model.eval()
    picks = np.linspace(0, len(data) - 1, min(count, len(data))).round().astype(int)
    batch = collate([data[(VALIDATION_EPOCH, int(i))] for i in picks])
    inputs, targets, labels = run.inputs(batch)
    restored, logits = run.model(inputs)
    if restored is not None:
        rows = []
        for r in range(len(picks)):
            note = f"class {int(labels[r])} -> {int(logits[r].argmax())}" if logits is not None else ""
            images = [_middle(x[r, 0].float().cpu().numpy()) for x in (inputs, restored, targets)]
            rows.append([Cell(images[0], note=note), Cell(images[1]), Cell(images[2])])
        image_grid(rows, out_png, column_titles=["input", "restoration", "target"], dpi=90)
        return
    # Without a decoder the interesting output is which classes the head confuses (on all of them: the run's own
    # loaders may hold only this process's share).
    every = EpochBatches(len(data), run.settings.batch_size, run.settings.seed, shuffle=False)
    truth, predicted = [], []
    for batch in DataLoader(data, batch_sampler=every, collate_fn=collate):
        inputs, _, labels = run.inputs(batch)
        truth.append(labels.cpu())
        predicted.append(run.model(inputs)[1].argmax(1).cpu())
    classes = run.model.settings.num_classes
    matrix = np.zeros((classes, classes), int)
    np.add.at(matrix, (torch.cat(truth).numpy(), torch.cat(predicted).numpy()), 1)
    matrix_image(
        matrix, out_png, "predicted class", "true class", "self-classification on validation patches", "patches"
    )


GALLERY_STEPS = {
    "flip": "flip",
    "local pixel shuffling": "local_shuffle",
    "non-linear": "nonlinear",
    "in-painting": "inpaint",
    "out-painting": "outpaint",
    "elastic": "elastic",
    "patch shuffling": "patch_shuffle",
}


def transform_gallery(
    patches_h5: Path | str,
    out_png: Path | str,
    restoration_policy: str,
    transforms: Mapping,
    rows: int = 3,
    seed: int = 0,
) -> None:
    """Validation patches (rows) unchanged, under each transform alone and under the whole policy (the paper's Fig. 4).

    3D patches show their mid axial slice."""
    settings = TransformSettings.from_dict(transforms)
    with read_h5(patches_h5) as h5:
        group = h5["val"] if len(h5["val/labels"]) else h5["train"]
        picks = np.linspace(0, len(group["labels"]) - 1, min(rows, len(group["labels"]))).round().astype(int)
        patches = [group["patches"][int(i)].astype(np.float32) for i in np.unique(picks)]
    grid = []
    for r, patch in enumerate(patches):
        rng = sample_generator(seed, VALIDATION_EPOCH, r)
        plans = [(), *(((step, draw_step(step, patch.shape, rng, settings)),) for step in GALLERY_STEPS.values())]
        plans.append(draw(restoration_policy, patch.shape, rng, settings))
        grid.append([Cell(_middle(apply(patch, plan)[0])) for plan in plans])
    image_grid(
        grid,
        out_png,
        title="Self-restoration transforms: each alone, then the policy (network input; the target is the original)",
        column_titles=["original", *GALLERY_STEPS, f"{restoration_policy} policy"],
        cell_size=(1.6, 1.7),
        dpi=90,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """One torchrun process of a multi-process pretrain() (see there); rank 0 logs, the others only warn."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--patches", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--settings", required=True, help="PretrainSettings as JSON")
    parser.add_argument("--sources", default="[]", help="data records as JSON")
    parser.add_argument("--restart-stale", action="store_true")
    parser.add_argument("--log-file", help="log file rank 0 appends to")
    args = parser.parse_args(argv)
    ranks = Processes.from_environment()
    level = logging.INFO if ranks.main else logging.WARNING
    with rule_logging(args.log_file if ranks.main else None, level=level, mode="a"):
        settings = PretrainSettings.from_dict(json.loads(args.settings))
        pretrain(args.patches, settings, args.out, args.restart_stale, sources=json.loads(args.sources))
