"""Benchmark patch extraction: throughput and peak memory for a data set and one twice its size.

Usage: python benchmarks/patches.py [--scans 12] [--matrix 256] [--slices 160] [--classes 10]
Writes random LUNA16-like scans through the real preprocessing, plans C classes over all training scans (K = every
training scan, multi-resolution on), and runs extract_patches in a fresh process per data-set size, printing
patches/s and the peak RSS above the process's baseline. Memory should stay flat when the data set doubles (the
original code preallocates every cube: ~117 GiB at the paper's settings).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from peak_memory import reset_peak, rss_bytes

from semantic_genesis.discovery.inputs import ct_scans, scan_shapes
from semantic_genesis.discovery.patches import extract_patches
from semantic_genesis.discovery.plan import DiscoverySettings, plan_classes, read_plan, write_plan
from semantic_genesis.preprocess.ct import CTSettings, PreprocessedCT, preprocess_subset

SETTINGS = dict(crop_size_xyz=(64, 64, 32), margin_lo=(0.1, 0.1, 0.1), margin_hi=(0.1, 0.1, 0.1), seed=0)


def make_data(folder: Path, scans: int, matrix: int, slices: int) -> list[str]:
    """`scans` random int16 volumes preprocessed into one subset file per split; returns the HDF5 paths."""
    rng = np.random.default_rng(0)
    files = []
    for split, count in (("train", scans), ("val", max(2, scans // 4))):
        paths = []
        for i in range(count):
            image = sitk.GetImageFromArray(rng.integers(-1000, 1000, (slices, matrix, matrix), dtype=np.int16))
            path = folder / "raw" / split / f"{split}{i:04d}.mhd"
            path.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image, str(path))
            paths.append(str(path))
        settings = CTSettings(min_slices=32, thumbnail_size=(16, 16, 8))
        preprocess_subset(paths, split, split, settings, folder / f"{split}.h5", folder / f"{split}.tsv")
        files.append(str(folder / f"{split}.h5"))
    return files


def plan(files: list[str], classes: int, out_tsv: Path) -> int:
    """A paper-mode plan with K = every training scan; returns the number of training rows."""
    open_scan = ct_scans(files)
    ids = scan_ids(files)
    splits = ["train" if sid.startswith("train") else "val" for sid in ids]
    k = splits.count("train")
    settings = DiscoverySettings(classes=classes, k=k, val_neighbours=2, **SETTINGS)
    latents = np.random.default_rng(1).normal(size=(len(ids), 8))
    table = plan_classes(
        latents,
        ids,
        splits,
        settings,
        np.random.default_rng(0),
        lambda sid: lambda start: True,
        scan_shapes(open_scan, ids),
    )
    write_plan(table, out_tsv)
    return int((table.split == "train").sum())


def scan_ids(files: list[str]) -> list[str]:
    """Every scan id in the subset files."""
    ids = []
    for f in files:
        with PreprocessedCT(f) as store:
            ids += store.ids
    return ids


def run_child(files: list[str], plan_tsv: str, out: str) -> dict:
    """In a fresh process: extract the planned patches, timing it and measuring peak RSS above the baseline."""
    baseline = reset_peak()
    start = time.perf_counter()
    settings = DiscoverySettings(classes=1, k=1, val_neighbours=1, **SETTINGS)
    extract_patches(read_plan(plan_tsv), ct_scans(files), out, settings, True, 0, {})
    return {"seconds": time.perf_counter() - start, "peak": rss_bytes() - baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=12)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--slices", type=int, default=160)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        files, plan_tsv, out = args.child
        print(json.dumps(run_child(files.split(","), plan_tsv, out)))
        return
    print(
        f"scans {args.matrix}x{args.matrix}x{args.slices} int16; crops 64x64x32 float16; C = {args.classes}, "
        "K = every training scan, multi-resolution on"
    )
    print(f"{'train scans':>12}{'patches':>9}{'patches/s':>11}{'peak MiB':>10}{'data MiB':>10}")
    for scans in (args.scans, 2 * args.scans):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            files = make_data(folder, scans, args.matrix, args.slices)
            rows = plan(files, args.classes, folder / "plan.tsv")
            child = [
                sys.executable,
                __file__,
                "--child",
                ",".join(files),
                str(folder / "plan.tsv"),
                str(folder / "p.h5"),
            ]
            result = json.loads(
                subprocess.run(child, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            )
            patches = 3 * rows + 2 * args.classes
            data = sum(Path(f).stat().st_size for f in files) / 2**20
            rate, peak = patches / result["seconds"], result["peak"] / 2**20
            print(f"{scans:>12}{patches:>9}{rate:>11.0f}{peak:>10.0f}{data:>10.0f}")


if __name__ == "__main__":
    main()
