"""Benchmark the self-discovery autoencoder: training samples/s of the real trainer at the paper's input size.

Usage: python benchmarks/autoencoder.py [--device auto] [--shape 64 128 128] [--width 32] [--levels 4] [--batch 4]
Trains `train_autoencoder` (the code rule `autoencoder` runs: autocast and loss scaling as configured by `amp`) for a
few epochs on random volumes of the given [z, y, x] shape (paper: 128x128x64 scans, width 32, 4 levels) and prints
the samples/s of its epochs after the first, which pays for allocation and kernel selection.
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import numpy as np

from semantic_genesis.discovery.autoencoder import AutoencoderSettings, train_autoencoder
from semantic_genesis.runtime.training import resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--shape", type=int, nargs="+", default=[64, 128, 128], help="input [z, y, x] (or [y, x])")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--images", type=int, default=16, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--amp", default="auto", help="auto, true or false")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    amp = {"true": True, "false": False}.get(args.amp, args.amp)
    settings = AutoencoderSettings(
        dims=len(args.shape),
        base_width=args.width,
        levels=args.levels,
        batch_size=args.batch,
        max_epochs=args.epochs,
        device=args.device,
        amp=amp,
    )
    rng = np.random.default_rng(0)
    train = rng.random((args.images, *args.shape), np.float32)
    val = rng.random((args.batch, *args.shape), np.float32)
    with tempfile.TemporaryDirectory() as out:
        history = train_autoencoder(train, val, settings, out)
    seconds = history.seconds.to_numpy()[1:] if len(history) > 1 else history.seconds.to_numpy()
    rate = args.images / float(np.mean(seconds))
    shape = "x".join(map(str, args.shape))
    print(
        f"autoencoder training (device {resolve_device(args.device)}, input {shape}, width {args.width}, "
        f"{args.levels} levels, batch {args.batch}, amp {args.amp}): {rate:8.1f} samples/s "
        f"(epochs of {args.images} images incl. validation of {args.batch})"
    )


if __name__ == "__main__":
    main()
