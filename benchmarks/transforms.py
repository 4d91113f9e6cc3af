"""Benchmark the self-restoration transforms: samples/s per policy, per step, and for the batched torch path.

Usage: python benchmarks/transforms.py [--shape 32 64 64] [--samples 300] [--threads 1] [--batch 32]
Times, on random [0, 1] float32 patches: the full "models_genesis" pipeline (draw + apply, what a DataLoader worker
does per sample), each step on its own (every sample gets that step), the "released" policy, and apply_batch on CPU
and, when available, CUDA. The acceptance target is >= 300 samples/s for models_genesis on one CPU core (the original
code does ~11 samples/s). torch's thread count is set by --threads; numpy runs single-threaded here either way.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from semantic_genesis.pretrain import transforms as T


def rate(run: Callable[[int], object], samples: int) -> float:
    """Samples per second of run(i) over `samples` calls, after one warm-up call."""
    run(0)
    start = time.perf_counter()
    for i in range(samples):
        run(i)
    return samples / (time.perf_counter() - start)


def step_plans(step: str, shape: tuple[int, ...], samples: int) -> list[T.Plan]:
    """One-step plans: the step's params from plans of a policy that uses it."""
    policy = {"elastic": "released", "patch_shuffle": "patch_shuffling"}.get(step, "models_genesis")
    plans = []
    index = 0
    while len(plans) < samples:
        plan = T.draw(policy, shape, T.sample_generator(0, 0, index))
        plans += [((name, params),) for name, params in plan if name == step]
        index += 1
    return plans


def batch_rate(patches: torch.Tensor, plans: list[T.Plan], batches: int) -> float:
    """Samples per second of apply_batch on `patches`' device (synchronised on CUDA)."""
    size = patches.shape[0]

    def run(i: int) -> None:
        T.apply_batch(patches, plans[(i * size) % len(plans) :][:size])
        if patches.is_cuda:
            torch.cuda.synchronize()

    return rate(run, batches) * size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs="+", default=[32, 64, 64], help="patch shape [z] y x")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    patch = np.random.default_rng(0).random(shape, dtype=np.float32)
    rows = []

    for policy in ("models_genesis", "released"):
        r = rate(lambda i, p=policy: T.transform(patch, p, T.sample_generator(0, 1, i)), args.samples)
        rows.append((f"policy {policy} (draw + apply)", r))
    for step in ("flip", "local_shuffle", "nonlinear", "inpaint", "outpaint", "elastic", "patch_shuffle"):
        plans = step_plans(step, shape, args.samples)
        rows.append((f"step {step}", rate(lambda i, plans=plans: T.apply(patch, plans[i % len(plans)]), args.samples)))

    plans = [T.draw("models_genesis", shape, T.sample_generator(0, 2, i)) for i in range(max(args.samples, args.batch))]
    batches = max(1, args.samples // args.batch)
    cpu = torch.from_numpy(np.stack([patch] * args.batch))
    rows.append((f"apply_batch models_genesis, CPU, batch {args.batch}", batch_rate(cpu, plans, batches)))
    if torch.cuda.is_available():
        cuda = cpu.cuda()
        rows.append((f"apply_batch models_genesis, CUDA, batch {args.batch}", batch_rate(cuda, plans, batches * 4)))

    print(f"shape {shape}, {args.samples} samples, torch threads {args.threads}")
    width = max(len(name) for name, _ in rows)
    for name, r in rows:
        print(f"{name:<{width}}  {r:9.1f} samples/s  {1e3 / r:7.2f} ms/sample")


if __name__ == "__main__":
    main()
