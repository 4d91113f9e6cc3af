"""Does every stage's memory stay flat as the data set grows? Peak RSS and time of each rule at N and 2N samples.

Usage: python benchmarks/scale.py [--kind cxr|ct] [--n 1000] [--size 224] [--matrix 512] [--cores 2] [--keep DIR]

Runs the real workflow (this checkout's Snakefile) twice from empty results folders on synthetic data, once with N
radiographs (about N / 2 patients, 1-3 images each) or N CT scans and once with 2N, through self-discovery, the
patches and the kind's task data (DXC for cxr, NCC for ct), every training stage cut to one epoch. It then reads each
rule's Snakemake benchmark file (`results/benchmarks/`: max_rss, s; a rule with several jobs shows the largest RSS
and the summed time) and prints one table: memory must not grow with N (within 10 %), time at most linearly. The
synthetic generators themselves are listed but are not pipeline stages.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from job_times import job_table, per_rule

REPO = Path(__file__).resolve().parents[1]
TARGETS = {
    "cxr": ["results/cxr/discovery/patches.h5", "results/tasks/dxc/data.h5"],
    "ct": ["results/ct/discovery/patches.h5", "results/tasks/ncc/data.h5"],
}
GENERATORS = ("synthetic_ct", "synthetic_cxr", "montage_ct", "montage_cxr")


def config_for(kind: str, n: int, size: int, matrix: int) -> dict:
    """A configuration with about n samples of one kind and one-epoch training."""
    one_epoch = {"max_epochs": 1}
    config: dict = {
        "discovery": {"ct": {"autoencoder": one_epoch}, "cxr": {"autoencoder": one_epoch}},
        "finetune": {"tasks": ["dxc" if kind == "cxr" else "ncc"]},
    }
    if kind == "cxr":
        # follow_ups [1, 3] gives two images per patient on average.
        config["synthetic"] = {"cxr": {"patients": max(1, n // 2), "size": max(size, 256)}}
        config["preprocess"] = {"cxr": {"size": size}}
        config["discovery"]["cxr"] |= {"input_size": 64, "k": 20, "classes": 10}
    else:
        config["synthetic"] = {"ct": {"patients": n, "matrix": matrix}}
    return config


def run(kind: str, n: int, size: int, matrix: int, cores: int, workdir: Path) -> pd.DataFrame:
    """The workflow up to the kind's patches and task data in workdir; one row per rule: max_rss MiB, seconds."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "scale.yaml"
    path.write_text(yaml.safe_dump(config_for(kind, n, size, matrix)))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    command += ["--cores", str(cores), *TARGETS[kind], "--configfile", str(path)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the workflow failed at n = {n}:\n{done.stderr[-4000:]}")
    return per_rule(job_table(workdir / "results"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(TARGETS), default="cxr")
    parser.add_argument("--n", type=int, default=1000, help="radiographs (cxr) or scans (ct) of the smaller run")
    parser.add_argument("--size", type=int, default=224, help="preprocessed radiograph side")
    parser.add_argument("--matrix", type=int, default=512, help="synthetic CT in-plane matrix")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep both workdirs under this folder")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="sg-scale-"))
    tables = {}
    for n in (args.n, 2 * args.n):
        tables[n] = run(args.kind, n, args.size, args.matrix, args.cores, base / f"n{n}")
    small, large = tables[args.n], tables[2 * args.n]
    joined = small.merge(large, left_index=True, right_index=True, how="outer", suffixes=("_n", "_2n"))
    joined["rss_ratio"] = joined.max_rss_2n / joined.max_rss_n
    joined["time_ratio"] = joined.s_2n / joined.s_n
    print(f"{args.kind}: N = {args.n} vs 2N = {2 * args.n}; peak RSS in MiB (largest job), time in s (all jobs)")
    print("| rule | peak RSS N | peak RSS 2N | ratio | time N | time 2N | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for rule, row in joined.iterrows():
        tag = " (generator)" if rule in GENERATORS else ""
        print(
            f"| {rule}{tag} | {row.max_rss_n:.0f} | {row.max_rss_2n:.0f} | {row.rss_ratio:.2f} "
            f"| {row.s_n:.1f} | {row.s_2n:.1f} | {row.time_ratio:.2f} |"
        )
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
