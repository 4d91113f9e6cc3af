"""Label efficiency: each method's test metric against the share of training labels it was fine-tuned with, and how
many labels each pretrained method needs to match scratch trained with all of them (the question self-supervised
pretraining exists to answer)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..plots import plt, save
from ..runtime.files import atomic_path
from ..tasks.taskdata import TASKS
from .build import METHOD_COLOURS, MISSING, SYNTHETIC_NOTE, _method_rank, _synthetic_title, _write_text, collect
from .published import method_label

log = logging.getLogger(__name__)
BASELINE = "scratch"
COLUMNS = [
    "task",
    "metric",
    "method",
    "target",
    "target_fraction",
    "target_labels",
    "fraction_needed",
    "labels_needed",
    "label_share",
    "fractions_tested",
    "runs",
    "synthetic",
]


def curves(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method, label_fraction): runs, mean and sample std of the metric in percent, mean labelled samples."""
    grouped = frame.groupby(["task", "method", "label_fraction"], sort=False)
    out = grouped["value"].agg(runs="count", mean="mean", std=lambda v: v.std(ddof=1)).reset_index()
    out["labels"] = grouped["n_train"].mean().to_numpy()
    out["synthetic"] = grouped["synthetic"].any().to_numpy()
    return out.sort_values(["task", "method", "label_fraction"], ignore_index=True)


def efficiency(frame: pd.DataFrame) -> pd.DataFrame:
    """Per task and pretrained method: the smallest label fraction at which its mean reaches scratch's mean at the
    largest fraction scratch was run with (target), and the labelled samples that is; NaN where no fraction tested
    reaches it (or scratch has no runs on the task)."""
    points = curves(frame)
    rows = []
    for task, here in points.groupby("task", sort=False):
        scratch = here[here["method"] == BASELINE]
        full = scratch.loc[scratch["label_fraction"].idxmax()] if len(scratch) else None
        for method in sorted(set(here["method"]) - {BASELINE}, key=_method_rank):
            mine = here[here["method"] == method].sort_values("label_fraction")
            reached = mine[mine["mean"] >= full["mean"]] if full is not None else mine.iloc[:0]
            first = reached.iloc[0] if len(reached) else None
            rows.append(
                dict(
                    task=task,
                    metric=TASKS[task].metric if task in TASKS else "",
                    method=method,
                    target=full["mean"] if full is not None else math.nan,
                    target_fraction=full["label_fraction"] if full is not None else math.nan,
                    target_labels=full["labels"] if full is not None else math.nan,
                    fraction_needed=first["label_fraction"] if first is not None else math.nan,
                    labels_needed=first["labels"] if first is not None else math.nan,
                    label_share=(first["labels"] / full["labels"]) if first is not None else math.nan,
                    fractions_tested=" ".join(f"{f:g}" for f in mine["label_fraction"]),
                    runs=int(mine["runs"].min()),
                    synthetic=bool(mine["synthetic"].any() or (full is not None and full["synthetic"])),
                )
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def _needed_text(row: Mapping) -> str:
    """'25% (40 of 160 labels)', 'not reached (tested 25%, 100%)' or '–' (no scratch runs to match)."""
    if math.isnan(row["target"]):
        return MISSING
    if math.isnan(row["fraction_needed"]):
        tested = ", ".join(f"{100 * float(f):g}%" for f in row["fractions_tested"].split())
        return f"not reached (tested {tested})"
    return f"{100 * row['fraction_needed']:g}% ({row['labels_needed']:.0f} of {row['target_labels']:.0f} labels)"


def render_markdown(table: pd.DataFrame) -> str:
    """Rows = methods, columns = tasks: the labels needed to match scratch with all labels."""
    order = list(TASKS)
    tasks = sorted(set(table["task"]), key=lambda t: order.index(t) if t in order else len(order))
    methods = sorted(set(table["method"]), key=_method_rank)
    lines = ["### Labels needed to match training from scratch with all labels", ""]
    if table["synthetic"].any():
        lines += [f"**{SYNTHETIC_NOTE}**", ""]
    lines += ["| Method | " + " | ".join(f"{t.upper()}" for t in tasks) + " |"]
    lines += ["| :-- | " + " | ".join("--:" for _ in tasks) + " |"]
    for method in methods:
        cells = []
        for task in tasks:
            row = table[(table["task"] == task) & (table["method"] == method)]
            cells.append(_needed_text(row.iloc[0]) if len(row) else MISSING)
        lines.append(f"| {method_label(method)} | " + " | ".join(cells) + " |")
    targets = table.drop_duplicates("task").set_index("task").loc[tasks].reset_index()
    described = "; ".join(
        f"{r.task.upper()} {r.metric} {r.target:.2f}% at {100 * r.target_fraction:g}% of the labels"
        for r in targets.itertuples()
        if not math.isnan(r.target)
    )
    lines += [
        "",
        "Each cell: the smallest label fraction tested at which the method's mean over runs reaches scratch's mean "
        f"with the most labels ({described or 'no scratch runs'}), and the labelled training samples that is. Means "
        f"over {run_range(table['runs'])} runs; no test of the difference: read the figures' "
        "spread.",
    ]
    return "\n".join(lines) + "\n"


def plot_task(points: pd.DataFrame, task: str, out_png: Path | str) -> Path:
    """Metric against label fraction for one task: a line per method (mean over runs, band = sample std), scratch's
    value with the most labels as a dashed line."""
    here = points[points["task"] == task]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if here.empty:
        ax.text(0.5, 0.5, f"no runs for {task}", ha="center", va="center", transform=ax.transAxes)
    palette = plt.get_cmap("tab20")
    for method in sorted(set(here["method"]), key=_method_rank):
        mine = here[here["method"] == method].sort_values("label_fraction")
        colour = palette(METHOD_COLOURS.get(method, 19))
        x, mean, std = 100 * mine["label_fraction"], mine["mean"], mine["std"].fillna(0)
        ax.plot(
            x, mean, marker="o", color=colour, label=method_label(method), linewidth=2 if method == BASELINE else 1.4
        )
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, linewidth=0)
        if method == BASELINE:
            ax.axhline(mean.iloc[-1], color=colour, linestyle="--", linewidth=1)
    fractions = sorted(set(100 * here["label_fraction"]))
    if fractions:
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
    metric = TASKS[task].metric if task in TASKS else "metric"
    ax.set(xlabel="training labels used (%)", ylabel=f"test {metric} (%)")
    ax.grid(alpha=0.3)
    if len(here):
        ax.legend(fontsize=8, loc="lower right")
    title = f"{task.upper()}: label efficiency (mean ± std over {run_range(here['runs'])} runs)"
    ax.set_title(_synthetic_title(title, bool(here["synthetic"].any())), fontsize=10)
    return save(fig, out_png)


def run_range(runs: pd.Series) -> str:
    """How many runs the points rest on: '4', or '3-4' when some cells lost a run; '0' with none."""
    if runs.empty:
        return "0"
    lo, hi = int(runs.min()), int(runs.max())
    return str(hi) if lo == hi else f"{lo}-{hi}"


def write_label_efficiency(
    metrics_paths: Iterable[Path | str], out_csv: Path | str, out_md: Path | str, out_pngs: Mapping[str, Path | str]
) -> pd.DataFrame:
    """The label_efficiency stage: the table (CSV with the numbers, Markdown for reading) and one figure per task."""
    frame = collect(metrics_paths)
    if frame["n_train"].isna().any():
        raise ValueError("every run's metrics.json needs n_train (the labelled samples it used)")
    table = efficiency(frame)
    with atomic_path(Path(out_csv)) as tmp:
        table.to_csv(tmp, index=False)
    _write_text(render_markdown(table), Path(out_md))
    points = curves(frame)
    for task, png in out_pngs.items():
        plot_task(points, task, png)
    fractions = np.unique(frame["label_fraction"])
    log.info("label efficiency of %d runs over fractions %s", len(frame), ", ".join(f"{f:g}" for f in fractions))
    return table
