"""Benchmark 3D preprocessing against SimpleITK's bare read of the same file, and its peak memory.

Usage: python benchmarks/preprocess_ct.py [--matrix 512] [--repeats 3] [--compression lzf]
Prints seconds per scan for: the read alone, preprocess_scan (read, reorient, window, thumbnail), and the whole
per-scan work of the preprocess_ct rule (that plus the chunked HDF5 write), and the peak memory of each in a fresh
process, as a multiple of the scan's own size.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from semantic_genesis.phantom import PhantomSettings, draw_patient, render_ct
from semantic_genesis.preprocess_ct import CTSettings, preprocess_scan, preprocess_subset


def make_scan(folder: Path, matrix: int) -> Path:
    """A synthetic chest CT at LUNA16-like size, written as .mhd/.raw."""
    p = draw_patient(np.random.default_rng(7), PhantomSettings(matrix=matrix, slice_mm=(1.25,), thick_slice_fraction=0))
    hu, _ = render_ct(p)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(p.spacing_xyz)
    image.SetOrigin(p.origin_xyz)
    path = folder / "scan.mhd"
    sitk.WriteImage(image, str(path))
    return path


def _run(task: str, path: str, settings: CTSettings, out: str, queue: mp.Queue) -> None:
    """In a fresh process: time one task and report its peak RSS above the post-import baseline."""
    import torch

    torch.set_num_threads(1)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if task == "read":
        sitk.GetArrayViewFromImage(sitk.ReadImage(path)).sum(dtype=np.int64)  # touch every voxel once
    elif task == "preprocess":
        preprocess_scan(path, settings)
    else:
        preprocess_subset([path], "bench", "train", settings, Path(out) / "bench.h5", Path(out) / "bench.tsv")
    seconds = time.perf_counter() - start
    queue.put((seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) * 1024))


def measure(task: str, path: Path, settings: CTSettings, out: Path, repeats: int) -> tuple[float, float]:
    """Median seconds and max peak bytes over `repeats` fresh processes."""
    ctx = mp.get_context("spawn")
    results = []
    for _ in range(repeats):
        queue = ctx.Queue()
        proc = ctx.Process(target=_run, args=(task, str(path), settings, str(out), queue))
        proc.start()
        results.append(queue.get())
        proc.join()
    return statistics.median(r[0] for r in results), max(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compression", choices=["none", "lzf", "gzip"], default="lzf")
    args = parser.parse_args()
    settings = CTSettings(thumbnail_size=(128, 128, 64), compression=args.compression)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = make_scan(folder, args.matrix)
        size = sitk.ReadImage(str(path)).GetSize()
        scan_bytes = int(np.prod(size)) * 2
        print(
            f"scan: {'x'.join(map(str, size))} int16 = {scan_bytes / 2**20:.0f} MiB (.mhd/.raw); "
            f"thumbnail {settings.thumbnail_size}; compression {args.compression}; median of {args.repeats}"
        )
        print(f"{'task':<44}{'s/scan':>8}{'x read':>8}{'peak MiB':>10}{'x scan':>8}")
        read_s = None
        for task, label in (
            ("read", "SimpleITK read alone"),
            ("preprocess", "preprocess_scan (read+orient+window+thumb)"),
            ("subset", "preprocess_ct rule work (+ HDF5 write)"),
        ):
            seconds, peak = measure(task, path, settings, folder, args.repeats)
            read_s = read_s or seconds
            print(f"{label:<44}{seconds:>8.3f}{seconds / read_s:>8.2f}{peak / 2**20:>10.0f}{peak / scan_bytes:>8.2f}")


if __name__ == "__main__":
    main()
