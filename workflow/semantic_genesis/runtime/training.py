"""The one training loop (`fit`) and what the three trainers share: reproducible kernels, batching, the improvement
test, devices, mixed precision and checkpoints.

The autoencoder (discovery/autoencoder.py), pretraining (pretrain/trainer.py) and fine-tuning (finetune/trainer.py)
each implement the hooks of `Trainable` (one epoch of training, validation, the schedule's step, their checkpoint
state, the log line) and call `fit`, which owns the epoch loop: early stopping, best weights, history, progress bar,
log and the per-epoch checkpoint a resumed run continues from.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from .files import atomic_path
from .heap import reuse_freed_memory
from .provenance import module_code_digest

_log = logging.getLogger(__name__)


def _deterministic_algorithms(mode: bool, warn_only: bool = True) -> None:
    """torch.use_deterministic_algorithms without its import of torch._inductor (over a second in every job).

    The public function also sets inductor's flag, which only torch.compile reads; nothing here compiles."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


@contextlib.contextmanager
def reproducible(num_threads: int, deterministic: bool = True) -> Iterator[None]:
    """Deterministic kernels (or, if not, cuDNN autotuning) and a fixed thread count for one training run.

    The global flags are restored after; the heap keeps freed memory for reuse from then on (`heap`)."""
    reuse_freed_memory()
    threads, was_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_benchmark = torch.backends.cudnn.benchmark
    # warn_only: on GPUs some kernels have no deterministic variant; CPU training is exactly reproducible regardless.
    _deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        _deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
        torch.backends.cudnn.benchmark = was_benchmark
        torch.set_num_threads(threads)


def batches(n: int, batch_size: int, order: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Index batches of at most batch_size; a lone last sample joins the previous batch."""
    order = torch.arange(n) if order is None else order
    parts = list(order.split(batch_size))
    # Batch norm in training mode cannot normalise one value per channel (one sample at a 1-voxel bottleneck).
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


def improved(loss: float, best: float, min_improvement: float) -> bool:
    """Whether loss beats best by the same relative threshold ReduceLROnPlateau uses."""
    return loss < best * (1 - min_improvement)


def fresh_run_state() -> dict:
    """Epoch bookkeeping of a run (kept in its checkpoint): epochs done, best monitored loss and epoch, stop flag."""
    return {"epoch": 0, "best_loss": float("inf"), "best_epoch": 0, "stopped": False, "history": []}


def end_epoch(state: dict, watched: float, min_improvement: float, patience: int) -> bool:
    """Count one finished epoch with its monitored loss: update the best and the early-stopping flag.

    Returns whether this epoch is the new best (its weights should be kept)."""
    state["epoch"] += 1
    best = improved(watched, state["best_loss"], min_improvement)
    if best:
        state.update(best_loss=watched, best_epoch=state["epoch"])
    state["stopped"] = state["epoch"] - state["best_epoch"] >= patience
    return best


def resolve_device(name: str = "auto") -> torch.device:
    """The requested device; "auto" takes the first GPU when there is one, else the CPU.

    A job that claimed GPUs (CUDA_VISIBLE_DEVICES names some) but sees no CUDA device gets a loud warning: that is
    a CPU build of torch or a driver too old for its CUDA, and the job would otherwise crawl on the CPU unnoticed."""
    claimed = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if not torch.cuda.is_available() and claimed.strip() and name != "cpu":
        _log.warning(
            "THIS JOB CLAIMED GPU %s, BUT PYTORCH SEES NO CUDA DEVICE (torch %s, built for CUDA %s): it runs on the "
            "CPU, far slower. Usual causes: a CPU build of torch, or an NVIDIA driver older than that CUDA version "
            "(check nvidia-smi and python -c 'import torch; print(torch.cuda.is_available())').",
            claimed,
            torch.__version__,
            torch.version.cuda,
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but PyTorch sees no CUDA GPU")
    return device


def amp_dtype(amp: str | bool, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (bfloat16, or float16 where a GPU lacks it) for amp = "auto" | True | False, or None for
    float32; "auto" means mixed precision on a GPU only."""
    if amp is False or (amp == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def run_stamp(settings: Mapping, data: str, trainer_module: str) -> dict:
    """What makes two runs the same job, saved in each checkpoint: the settings, a digest of the input contents
    (data) and the digest of the trainer's code (its module and everything of the package it imports)."""
    return {"settings": dict(settings), "fingerprint": data, "code": module_code_digest(trainer_module)}


def load_checkpoint(
    path: Path,
    stamp: Mapping,
    resumable: set[str],
    restart_stale: bool,
    log: logging.Logger,
) -> dict | None:
    """The checkpoint at path if this run may resume it, else None (none there, or stale and restart_stale).

    A checkpoint is the state of an interrupted run (a finished run deletes its own: finish_run). It is stale when it
    was written with other settings (beyond the `resumable` ones, which do not change what a run computes), for
    other input contents or by other code (see run_stamp): two runs are never mixed. A stale checkpoint is an error
    unless restart_stale (a workflow rerun after a change), in which case it is ignored and later overwritten.
    """
    if not path.exists():
        return None
    # RNG states must stay on the CPU; load_state_dict moves weights and optimizer state to the device.
    saved = torch.load(path, map_location="cpu", weights_only=True)
    changed = {k for k, v in stamp["settings"].items() if saved["settings"].get(k) != v} - resumable
    problem = None
    if changed:
        problem = f"was written with other settings ({', '.join(sorted(changed))})"
    elif saved["fingerprint"] != stamp["fingerprint"]:
        problem = "was written for other input data"
    elif saved.get("code") != stamp["code"]:
        problem = "was written by other code (the package changed since)"
    if problem and not restart_stale:
        raise ValueError(f"{path} {problem}; delete it to restart")
    if problem:
        log.warning("%s %s: starting afresh", path, problem)
        return None
    return saved


def finish_run(checkpoint: Path) -> None:
    """Delete a finished run's checkpoint (after its artifacts are written): a later run of the job, which Snakemake
    starts only when an input, a setting or the code changed, must train from scratch, never resume this one."""
    checkpoint.unlink(missing_ok=True)


class Trainable(Protocol):
    """The hooks `fit` calls: what differs between the autoencoder, pretraining and fine-tuning."""

    model: torch.nn.Module
    validates: bool  # whether there is validation data (else the training loss is monitored)

    def learning_rate(self) -> float:
        """The learning rate of the coming epoch."""

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (1-based number); the training metrics, "loss" among them."""

    def validate(self) -> dict[str, float]:
        """The validation metrics, "loss" among them (called only when `validates`)."""

    def schedule(self, watched: float) -> None:
        """Step the learning-rate schedule after an epoch whose monitored loss was `watched`."""

    def state(self) -> dict:
        """What a checkpoint holds beyond the loop's own bookkeeping: model, optimizer, scheduler, RNG states."""

    def load_state(self, saved: dict) -> None:
        """Restore what `state` returned."""

    def describe(self, row: Mapping[str, float]) -> str:
        """The metrics of one history row as the epoch's log line shows them."""


@dataclass(frozen=True)
class Stopping:
    """How long a run goes: at most max_epochs, early stopping after `patience` epochs without an improvement of
    the monitored loss by more than the relative min_improvement."""

    max_epochs: int
    patience: int
    min_improvement: float


@dataclass(frozen=True)
class Checkpointing:
    """Where and whether a run saves its state every epoch, and which saved state it may resume (load_checkpoint)."""

    path: Path
    stamp: Mapping
    resumable: set[str]
    restart_stale: bool
    write: bool = True  # False in the other processes of a multi-process run: rank 0 writes


def fit(
    run: Trainable,
    stopping: Stopping,
    log: logging.Logger,
    checkpointing: Checkpointing | None = None,
    desc: str | None = None,
    progress_bar: bool = True,
) -> dict:
    """The one epoch loop: train, validate, schedule, early stopping, best weights, history, progress bar, log and
    checkpoint, resuming from a checkpoint of the same job. The model ends with the best epoch's weights; the returned
    bookkeeping (fresh_run_state) holds the best epoch and loss and the history rows.

    An epoch's history row holds epoch, train_<metric>, val_<metric> (absent without validation data), lr and
    seconds (training and validation). The loop draws no random numbers itself: a run is as reproducible as its
    hooks, and a resumed run equals an uninterrupted one when `state` holds every RNG the hooks use."""
    state, best_weights = fresh_run_state(), copy.deepcopy(run.model.state_dict())
    if checkpointing is not None:
        saved = load_checkpoint(
            checkpointing.path, checkpointing.stamp, checkpointing.resumable, checkpointing.restart_stale, log
        )
        if saved is not None:
            run.load_state(saved)
            best_weights, state = saved["best_weights"], saved["state"]
            log.info("resuming from %s after epoch %d", checkpointing.path, state["epoch"])
    monitored = "val" if run.validates else "train"
    # A run that already stopped early stays stopped, even if resumed with a larger max_epochs.
    last = state["epoch"] if state["stopped"] else stopping.max_epochs
    progress = tqdm(
        range(state["epoch"], last),
        initial=state["epoch"],
        total=stopping.max_epochs,
        desc=desc,
        unit="epoch",
        disable=not progress_bar,
    )
    for epoch in progress:
        start, lr = time.perf_counter(), run.learning_rate()
        train = run.train_epoch(epoch + 1)
        val = run.validate() if run.validates else None
        watched = (val or train)["loss"]
        run.schedule(watched)
        best = end_epoch(state, watched, stopping.min_improvement, stopping.patience)
        if best:
            best_weights = copy.deepcopy(run.model.state_dict())
        row = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train.items()}}
        row |= {f"val_{k}": v for k, v in (val or {}).items()} | {"lr": lr, "seconds": time.perf_counter() - start}
        state["history"].append(row)
        progress.set_postfix(train=f"{train['loss']:.4g}", val=f"{val['loss']:.4g}" if val else "-")
        log.info(
            "epoch %d/%d: %s, lr %.3g, %.1f s%s",
            epoch + 1,
            stopping.max_epochs,
            run.describe(row),
            lr,
            row["seconds"],
            " (best)" if best else "",
        )
        if checkpointing is not None and checkpointing.write:
            with atomic_path(checkpointing.path) as tmp:
                torch.save({**run.state(), **checkpointing.stamp, "best_weights": best_weights, "state": state}, tmp)
        if state["stopped"]:
            log.info("early stopping: no %s-loss improvement for %d epochs", monitored, stopping.patience)
            break
    progress.close()
    run.model.load_state_dict(best_weights)
    log.info("best %s loss %.6f at epoch %d", monitored, state["best_loss"], state["best_epoch"])
    return state
