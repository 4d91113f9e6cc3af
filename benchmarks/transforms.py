"""Benchmark the self-restoration transforms: samples/s per policy, per step, and for the batched torch path.

Usage: python benchmarks/transforms.py [--shape 32 64 64] [--samples 300] [--threads 1] [--batch 32]
       [--authors-utils PATH/TO/ModelsGenesis/pytorch/utils.py]
Times, on random [0, 1] float32 patches: the full "models_genesis" pipeline (draw + apply, what a DataLoader worker
does per sample), each step on its own (every sample gets that step), the "released" policy, and apply_batch on CPU
and, when available, CUDA; then the same Models Genesis plans through a reference loop of the same algorithm (local
shuffling window by window in drawing order, as the authors' code does; outputs checked equal) and the speed-up over
it (target: 30x). torch's thread count is set by --threads; numpy runs single-threaded here either way. The heap
keeps freed memory for reuse as the training jobs' does (runtime/heap.py); --default-heap keeps glibc's defaults.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import random
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from semantic_genesis.pretrain import transforms as T
from semantic_genesis.runtime.heap import reuse_freed_memory


def reference_apply(patch: np.ndarray, plan: T.Plan) -> tuple[np.ndarray, np.ndarray]:
    """T.apply with local shuffling by the reference loop (the other steps are whole-array numpy in both)."""
    looped = tuple(("looped", params) if name == "local_shuffle" else (name, params) for name, params in plan)
    target = np.array(patch, dtype=np.float32)
    x = target
    for name, params in looped:
        x = T.local_shuffle_reference(x, params) if name == "looped" else T.NUMPY_STEPS[name](x, params)
        if name == "flip":
            target = T.flip(target, params)
    return x, target


def authors_generator(utils: Path, shape: tuple[int, ...], batch: int) -> Iterator:
    """The authors' Models Genesis `generate_pair` (pytorch/utils.py of a clone of MrGiovanni/ModelsGenesis that the
    user has) over random patches, with the paper's rates; imageio and scikit-image, which it imports only to save
    samples and resize, are stubbed when missing. Their layout is (n, 1, x, y, z): our (z, y, x) reversed."""
    for name in ("imageio", "skimage", "skimage.transform"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.SimpleNamespace(resize=None)
    spec = importlib.util.spec_from_file_location("authors_utils", utils)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = types.SimpleNamespace(
        flip_rate=0.4, local_rate=0.5, nonlinear_rate=0.9, paint_rate=0.9, inpaint_rate=0.2, save_samples=None
    )
    patches = np.random.default_rng(0).random((4 * batch, 1, *shape[::-1]), dtype=np.float32)
    random.seed(0)
    np.random.seed(0)
    return module.generate_pair(patches, batch, config, status="train")


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
    parser.add_argument("--reference-samples", type=int, default=40, help="samples timed through the slow loop")
    parser.add_argument("--authors-utils", type=Path, help="pytorch/utils.py of a ModelsGenesis clone: time it too")
    parser.add_argument("--default-heap", action="store_true", help="leave glibc's heap thresholds as they are")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # As every training job does (runtime.training.reproducible), unless asked for the allocator's defaults.
    heap = "glibc defaults" if args.default_heap else f"reuse freed memory: {reuse_freed_memory()}"
    shape = tuple(args.shape)
    patch = np.random.default_rng(0).random(shape, dtype=np.float32)
    rows = []
    T.local_shuffle(patch, T.LocalShuffle(0, 1, (1,) * len(shape)))  # numba's import and cache load, outside timing

    policies = {
        policy: rate(lambda i, p=policy: T.transform(patch, p, T.sample_generator(0, 1, i)), args.samples)
        for policy in ("models_genesis", "released")
    }
    rows += [(f"policy {policy} (draw + apply)", r) for policy, r in policies.items()]

    # The same plans through the reference loop: same outputs, checked, and the speed-up over it.
    mg = [T.draw("models_genesis", shape, T.sample_generator(0, 1, i)) for i in range(args.reference_samples)]
    for plan in mg[:3]:
        assert all(np.array_equal(a, b) for a, b in zip(T.apply(patch, plan), reference_apply(patch, plan)))
    looped = rate(lambda i: reference_apply(patch, mg[i % len(mg)]), args.reference_samples)
    ours = rate(lambda i: T.apply(patch, mg[i % len(mg)]), args.samples)
    shuffles = step_plans("local_shuffle", shape, args.reference_samples)
    looped_step = rate(lambda i: T.local_shuffle_reference(patch, shuffles[i % len(shuffles)][0][1]), len(shuffles))
    ours_step = rate(lambda i: T.local_shuffle(patch, shuffles[i % len(shuffles)][0][1]), args.samples)
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

    rows += [
        ("reference loop: models_genesis (apply)", looped),
        ("reference loop: local_shuffle", looped_step),
    ]
    if args.authors_utils:
        pairs, batch = authors_generator(args.authors_utils, shape, 8), 8
        authors = rate(lambda i: next(pairs), max(1, args.reference_samples // batch)) * batch
        rows.append(("authors' generate_pair (Models Genesis, pytorch/utils.py)", authors))
    print(f"shape {shape}, {args.samples} samples, torch threads {args.threads}, heap: {heap}")
    width = max(len(name) for name, _ in rows)
    for name, r in rows:
        print(f"{name:<{width}}  {r:9.1f} samples/s  {1e3 / r:7.2f} ms/sample")
    print(
        f"speed-up over the reference loop: models_genesis apply {ours / looped:.1f}x, local_shuffle "
        f"{ours_step / looped_step:.1f}x (target: 30x)"
    )
    if args.authors_utils:
        speed_up = policies["models_genesis"] / authors
        print(f"speed-up over the authors' generate_pair: models_genesis policy {speed_up:.1f}x")


if __name__ == "__main__":
    main()
