"""Benchmark 3D preprocessing against SimpleITK's bare read of the same file, and its peak memory.

Usage: python benchmarks/preprocess_ct.py [--matrix 512] [--repeats 5] [--compression none]
Prints seconds per scan for: the read alone, h5py's write of the same array alone (the floor of any lossless
uncompressed output), preprocess_scan (read, reorient, window, thumbnail), and the whole
per-scan work of the preprocess_ct rule (that plus the chunked HDF5 write). Each task runs in a fresh process, first
once (the first scan of a job pays for fresh memory pages) and then `repeats` times (the steady cost of every further
scan of a subset); peak memory is the process's peak RSS above its post-import baseline, also as a multiple of the
scan's own size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk
import torch
from peak_memory import reset_peak, rss_bytes

from semantic_genesis.preprocess.ct import CTSettings, preprocess_scan, preprocess_subset
from semantic_genesis.synthetic.phantom import PhantomSettings, draw_patient, render_ct


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


def run_task(task: str, path: str, settings: CTSettings, out: str, repeats: int) -> dict:
    """Run one task repeats + 1 times in this fresh process: seconds of the first and the later runs, peak RSS."""
    torch.set_num_threads(1)
    scan = sitk.GetArrayFromImage(sitk.ReadImage(path)) if task == "write" else None
    baseline = reset_peak()
    seconds = []
    for repeat in range(repeats + 1):
        # A fresh output name each time: replacing the last run's file would time the kernel freeing its pages.
        h5 = Path(out) / f"bench{repeat}.h5"
        start = time.perf_counter()
        if task == "read":
            image = sitk.ReadImage(path)  # keep a reference: the array view below does not own its memory
            sitk.GetArrayViewFromImage(image).sum(dtype=np.int64)  # touch every voxel once
            del image
        elif task == "write":
            with h5py.File(h5, "w") as file:
                file.create_dataset("scan", data=scan)
        elif task == "preprocess":
            preprocess_scan(path, settings)
        else:
            preprocess_subset([path], "bench", "train", settings, h5, Path(out) / "bench.tsv")
        seconds.append(time.perf_counter() - start)
        h5.unlink(missing_ok=True)
    return {
        "first": seconds[0],
        "steady": statistics.median(seconds[1:]),
        "peak": rss_bytes() - baseline,
    }


def measure(task: str, path: Path, settings: CTSettings, out: Path, repeats: int) -> dict:
    """run_task in a fresh process, so that one task's memory cannot hide another's."""
    child = [
        sys.executable,
        __file__,
        "--task",
        task,
        "--scan",
        str(path),
        "--out",
        str(out),
        "--repeats",
        str(repeats),
    ]
    done = subprocess.run(
        [*child, "--settings", json.dumps(asdict(settings))], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compression", choices=["none", "lzf", "gzip"], default="none")
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--scan", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.task:  # child process of measure()
        settings = CTSettings(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.settings).items()}
        )
        print(json.dumps(run_task(args.task, args.scan, settings, args.out, args.repeats)))
        return
    settings = CTSettings(thumbnail_size=(128, 128, 64), compression=args.compression)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = make_scan(folder, args.matrix)
        size = sitk.ReadImage(str(path)).GetSize()
        scan_bytes = int(np.prod(size)) * 2
        print(
            f"scan: {'x'.join(map(str, size))} int16 = {scan_bytes / 2**20:.0f} MiB (.mhd/.raw); "
            f"thumbnail {settings.thumbnail_size}; compression {args.compression}; "
            f"steady = median of {args.repeats} scans after the first in one process"
        )
        print(f"{'task':<44}{'first s':>8}{'steady s':>9}{'x read':>8}{'peak MiB':>10}{'x scan':>8}")
        read_s = None
        for task, label in (
            ("read", "SimpleITK read alone"),
            ("write", "HDF5 write alone (h5py, the scan's bytes)"),
            ("preprocess", "preprocess_scan (read+orient+window+thumb)"),
            ("subset", "preprocess_ct rule work (+ HDF5 write)"),
        ):
            r = measure(task, path, settings, folder, args.repeats)
            read_s = read_s or r["steady"]
            print(
                f"{label:<44}{r['first']:>8.3f}{r['steady']:>9.3f}{r['steady'] / read_s:>8.2f}"
                f"{r['peak'] / 2**20:>10.0f}{r['peak'] / scan_bytes:>8.2f}"
            )


if __name__ == "__main__":
    main()
