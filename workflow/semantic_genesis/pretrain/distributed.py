"""Data-parallel training over several processes (one per GPU, or gloo processes on the CPU) started by torchrun.

A step on P processes equals the single-process step on the same global batch: each process takes a contiguous share
of the batch, scales its loss by its share (`share_weight`) so that DistributedDataParallel's gradient average is the
mean over the whole batch, and batch norm normalises with the statistics of the whole batch (`GlobalBatchNorm`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints, artifacts and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @classmethod
    def from_environment(cls) -> Processes:
        """The place torchrun gave this process; a lone process outside torchrun is rank 0 of 1."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    def share(self, items: Sequence) -> Sequence:
        """This process's contiguous share of a global batch (sizes differ by at most one)."""
        bounds = [len(items) * r // self.world_size for r in range(self.world_size + 1)]
        return items[bounds[self.rank] : bounds[self.rank + 1]]


SINGLE = Processes()  # a run without torchrun


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[tuple[Processes, torch.device]]:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on the CPU); yield the place and this rank's device.

    Outside torchrun this yields rank 0 of 1 and the device unchanged."""
    processes = Processes.from_environment()
    if not processes.active:
        yield processes, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield processes, device
    finally:
        dist.destroy_process_group()


def all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sums of `values` over all processes (the values themselves for a lone process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def share_weight(local: int, total: int, processes: Processes) -> float:
    """Factor on a process's mean loss over `local` samples that makes DDP's average the mean over `total`."""
    return local * processes.world_size / total


class _AllSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of the processes' gradients (each input feeds every output)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(_BatchNorm):
    """Batch norm that, in training mode across processes, normalises with the whole global batch's statistics.

    torch's SyncBatchNorm does this on GPUs only; this one runs on any backend (gloo included) and keeps the state
    dict of nn.BatchNorm*d, so its weights load into the plain networks. Alone or in eval mode it is plain batch norm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 3:
            raise ValueError(f"expected a (N, C, ...) input with spatial axes, got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        axes, shape = [0, *range(2, input.dim())], (1, -1, *[1] * (input.dim() - 2))
        # Half-precision activations (autocast) get float32 statistics.
        x = input.to(torch.promote_types(input.dtype, torch.float32))
        count = x.new_tensor([x.numel() / x.shape[1]])
        # Two passes (mean, then squared deviations) keep float32 variance accurate; the all-reduces carry gradients.
        sums = _AllSum.apply(torch.cat([x.sum(axes), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        centred = x - mean.view(shape)
        var = _AllSum.apply(centred.pow(2).sum(axes)) / total
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_((var.detach() * total / (total - 1)).to(self.running_var.dtype), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def with_global_batchnorm(module: nn.Module) -> nn.Module:
    """The module with every BatchNorm2d/3d replaced, in place, by a GlobalBatchNorm holding the same state."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm2d, nn.BatchNorm3d)):
            like = next(tensor for tensor in child.state_dict().values() if tensor.is_floating_point())
            replacement = GlobalBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            ).to(device=like.device, dtype=like.dtype)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            with_global_batchnorm(child)
    return module


def launch(module: str, arguments: Sequence[str], processes: int) -> None:
    """Run `python -m module arguments` as `processes` torchrun processes on this node and wait for them.

    Their output joins this process's stderr, which the workflow keeps in the rule's log."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        module,
        *arguments,
    ]
    log.info("starting %d training processes: %s", processes, " ".join(command))
    done = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
    if done.returncode:
        raise RuntimeError(f"{processes} torchrun processes of {module} failed (exit {done.returncode}); see above")
