"""Benchmark pretraining throughput: the model's training step against the data pipeline that feeds it.

Usage: python benchmarks/pretrain.py [--device auto] [--width 32] [--shape 32 64 64] [--batch 8] [--workers 2]
Prints samples/s of (a) one Semantic Genesis training step (forward, both losses, backward, Adam) of the 3D U-Net plus
classification head at the given width (paper: 32, 44 classes; bfloat16 autocast on a GPU), and (b) the data
pipeline on a temporary patches.h5: lazy HDF5 reads plus the Models Genesis transforms, once in DataLoader workers
(numpy) and once drawn in workers and applied batched on the training device (torch). The pipeline keeps up when its
rate is at least the model's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from semantic_genesis.networks.genesis import GenesisNet, NetworkSettings
from semantic_genesis.pretrain.trainer import EpochBatches, PatchDataset, collate
from semantic_genesis.pretrain.transforms import TransformSettings, apply_batch
from semantic_genesis.runtime.heap import reuse_freed_memory
from semantic_genesis.runtime.training import resolve_device


def model_rate(device: torch.device, width: int, shape: tuple[int, ...], batch: int, steps: int) -> float:
    """Training samples/s of GenesisNet (restoration + 44-class head) at the given width."""
    model = GenesisNet(NetworkSettings(dims=len(shape), base_width=width, num_classes=44)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, *shape, device=device)
    labels = torch.randint(0, 44, (batch,), device=device)
    amp = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            restored, logits = model(x)
        loss = F.mse_loss(restored.float(), x) + 0.01 * F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocation, kernel selection
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def write_patches(path: Path, shape: tuple[int, ...], count: int) -> None:
    """Random float16 patches in the patches.h5 layout."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        for split in ("train", "val"):
            group = h5.create_group(split)
            group.create_dataset("patches", data=rng.random((count, *shape), np.float32).astype(np.float16))
            group.create_dataset("labels", data=np.arange(count) % 44)


def pipeline_rate(path: Path, device: torch.device, batch: int, workers: int, on_device: bool, batches: int) -> float:
    """Samples/s delivered to the device as (input, target) pairs."""
    data = PatchDataset(path, "train", "models_genesis", TransformSettings(), seed=0, draw_only=on_device)
    sampler = EpochBatches(len(data), batch, seed=0, shuffle=True)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
    seen, start = 0, None
    for epoch in range(1, 100):
        sampler.epoch = epoch
        for item in loader:
            if start is None:  # the first batch pays for starting the workers
                start = time.perf_counter()
                continue
            if on_device:
                inputs, _ = apply_batch(item["patch"].to(device), item["plans"])
            else:
                inputs = item["input"].to(device)
                item["target"].to(device)
            seen += len(inputs)
            if seen >= batches * batch:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return seen / (time.perf_counter() - start)
    raise RuntimeError("not enough batches")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--shape", type=int, nargs="+", default=[32, 64, 64], help="patch [z, y, x] (or [y, x])")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=30, help="timed pipeline batches")
    args = parser.parse_args()
    reuse_freed_memory()  # as the training jobs do (runtime.training.reproducible)
    device, shape = resolve_device(args.device), tuple(args.shape)
    print(f"device {device}, torch threads {torch.get_num_threads()}, patch {shape}, batch {args.batch}")
    model = model_rate(device, args.width, shape, args.batch, args.steps)
    print(f"model training step (width {args.width}): {model:8.1f} samples/s")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "patches.h5"
        write_patches(path, shape, max(64, 2 * args.batch))
        for on_device in (False, True):
            where = f"transforms batched on {device}" if on_device else "transforms in workers (numpy)"
            rate = pipeline_rate(path, device, args.batch, args.workers, on_device, args.batches)
            verdict = "keeps up" if rate >= model else "is the bottleneck"
            print(f"data pipeline, {args.workers} workers, {where}: {rate:8.1f} samples/s ({verdict})")


if __name__ == "__main__":
    main()
