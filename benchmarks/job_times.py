"""Where a workflow run's time went: job count, summed job time and largest peak RSS per rule, from Snakemake's
benchmark files.

Usage: python benchmarks/job_times.py [RESULTS]   (default results/; reads RESULTS/benchmarks/**/*.tsv)

Fine-tuning is also split by task. Job time is the sum of the jobs' wall-clock seconds (Snakemake's `s`), so with
jobs running side by side it exceeds the run's wall-clock time; the run's own wall time is what `time` measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def job_table(results: Path) -> pd.DataFrame:
    """One row per job: rule, its first wildcard folder (task for fine-tuning; '' for a single-job rule), s, max_rss."""
    root = results / "benchmarks"
    rows = []
    for tsv in sorted(root.rglob("*.tsv")):
        parts = tsv.relative_to(root).parts
        frame = pd.read_csv(tsv, sep="\t")
        rows.append(
            {
                "rule": parts[0].removesuffix(".tsv"),
                "group": parts[1].removesuffix(".tsv") if len(parts) > 2 else "",
                "s": float(frame.s.sum()),
                "max_rss": float(frame.max_rss.max()),
            }
        )
    if not rows:
        raise SystemExit(f"no Snakemake benchmark files under {root}")
    return pd.DataFrame(rows)


def per_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    """Peak RSS in MiB (largest job), summed seconds and job count per rule."""
    return jobs.groupby("rule").agg(max_rss=("max_rss", "max"), s=("s", "sum"), jobs=("s", "size"))


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    jobs = job_table(results)
    rules = per_rule(jobs).sort_values("s", ascending=False)
    total, peak = jobs.s.sum() / 60, jobs.max_rss.max()
    print(f"{results}: {len(jobs)} jobs, {total:.1f} job-minutes, largest peak RSS {peak:.0f} MiB")
    print("| rule | jobs | job-minutes | largest peak RSS (MiB) |")
    print("| --- | --- | --- | --- |")
    for rule, row in rules.iterrows():
        print(f"| {rule} | {row.jobs:.0f} | {row.s / 60:.1f} | {row.max_rss:.0f} |")
    tuning = jobs[jobs.rule == "finetune"]
    if len(tuning):
        tasks = tuning.groupby("group").s.agg(["size", "sum", "mean"]).sort_values("sum", ascending=False)
        print("| fine-tuning task | jobs | job-minutes | seconds per job |")
        print("| --- | --- | --- | --- |")
        for task, row in tasks.iterrows():
            print(f"| {task} | {row['size']:.0f} | {row['sum'] / 60:.1f} | {row['mean']:.0f} |")


if __name__ == "__main__":
    main()
