"""Pieces every training loop of the package shares: reproducible kernels, batching, improvement test, device."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from .provenance import module_code_digest

_log = logging.getLogger(__name__)


@contextlib.contextmanager
def reproducible(num_threads: int, deterministic: bool = True) -> Iterator[None]:
    """Deterministic kernels (or, if not, cuDNN autotuning) and a fixed thread count for one training run.

    The global flags are restored after."""
    threads, was_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    was_benchmark = torch.backends.cudnn.benchmark
    # warn_only: on GPUs some kernels have no deterministic variant; CPU training is exactly reproducible regardless.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
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
