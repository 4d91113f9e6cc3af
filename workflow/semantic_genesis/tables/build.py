"""Result tables and figures from the fine-tuning runs, beside the published numbers.

Input: one `metrics.json` per (task, method, run) written by the fine-tuning stage (value = the test metric as a
fraction in [0, 1]) and its `history.csv`. Output (all written atomically):

- `collect` -> one row per run (value in percent);
- `summarise` -> per (task, label fraction, method): n runs, mean, sample std, a paired test against a reference;
- `build_tables` -> adding_semantics, comparison_3d and results_2d, each as CSV, Markdown and LaTeX (booktabs), plus
  summary.csv with the numbers behind them; tables for label fractions other than 1 get a `_labels<percent>` suffix;
- `plot_adding_semantics`, `plot_finetuning_curves`, `write_report_summary`.

Every cell of ours is "mean ± std" over runs in percent; a missing run is "–", never a number. Published numbers
(semantic_genesis.tables.published) sit in their own "paper" column. When any run in a table is synthetic, the table
says so.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..finetune.grid import run_of
from ..plots import Line2D, MaxNLocator, Patch, plt, save
from ..runtime.files import atomic_path
from ..runtime.provenance import any_synthetic
from ..tasks.overlap import describe_overlap
from ..tasks.taskdata import TASKS
from .published import (
    PUBLISHED_ONLY_2D,
    PUBLISHED_ONLY_3D,
    SEMANTIC_PAIRS,
    SOURCE_2D,
    SOURCE_3D,
    SOURCE_SEMANTICS,
    method_label,
    published,
)

log = logging.getLogger(__name__)
REFERENCE = "semantic_genesis"
TESTS = ("ttest", "wilcoxon")
REQUIRED_KEYS = ("task", "method", "run", "seed", "metric", "value", "synthetic", "label_fraction")
OPTIONAL_KEYS = ("n_train", "n_val", "n_test", "best_epoch", "epochs", "seconds", "pretraining", "pretraining_overlap")
RUN_COLUMNS = [*REQUIRED_KEYS, "value_fraction", *OPTIONAL_KEYS, "path"]
SUMMARY_COLUMNS = [
    "task",
    "label_fraction",
    "method",
    "metric",
    "n",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "synthetic",
    "reference",
    "test",
    "n_pairs",
    "diff",
    "p_value",
    "paper_mean",
    "paper_std",
    "paper_approximate",
]
TASKS_3D = [task for task, spec in TASKS.items() if spec.dims == 3]
TASKS_2D = [task for task, spec in TASKS.items() if spec.dims == 2]
# Display order of our methods; methods not listed come after them, alphabetically.
METHOD_ORDER = (
    "scratch",
    "inpainting",
    "inpainting_semantics",
    "patch_shuffling",
    "patch_shuffling_semantics",
    "models_genesis",
    "self_classification",
    "semantic_genesis",
)
ROWS_ADDING_SEMANTICS = [method for pair in SEMANTIC_PAIRS for method in pair]
ROWS_COMPARISON_3D = [
    "scratch",
    *PUBLISHED_ONLY_3D,
    "inpainting",
    "patch_shuffling",
    "models_genesis",
    "self_classification",
    "semantic_genesis",
]
ROWS_2D = ["scratch", *PUBLISHED_ONLY_2D, *METHOD_ORDER[1:]]
MISSING = "–"
SYNTHETIC_NOTE = (
    "Results on SYNTHETIC data (the embedded demo), not comparable with the paper's numbers: the task data or the "
    "scans the weights were pretrained on are synthetic."
)
MIXED_NOTE = (
    "Some results are on SYNTHETIC data (the embedded demo; cells marked 'synthetic': their task data or the scans "
    "their weights were pretrained on): those are not comparable with the paper's numbers."
)
FORMATS = ("csv", "md", "tex")


# ----------------------------------------------------------------------------------------------------------------------
# Collecting runs


def _read_metrics(path: Path) -> dict | None:
    """One run's record from its metrics.json, checked (None for a run without a test metric); errors name the file."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read metrics: {error}") from error
    if not isinstance(record, dict):
        raise ValueError(f"{path}: metrics must be a JSON object, not {type(record).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ValueError(f"{path}: metrics lack key(s) {', '.join(missing)}")
    task, method, metric = record["task"], record["method"], record["metric"]
    if task not in TASKS:
        raise ValueError(f"{path}: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if not isinstance(method, str) or not method:
        raise ValueError(f"{path}: method must be a non-empty string, not {method!r}")
    if metric != TASKS[task].metric:
        raise ValueError(f"{path}: metric {metric!r} does not match task {task}'s {TASKS[task].metric}")
    for key in ("run", "seed"):
        if isinstance(record[key], bool) or not isinstance(record[key], int):
            raise ValueError(f"{path}: {key} must be an integer, not {record[key]!r}")
    value = record["value"]
    if value is None:
        # The test split could not score the run (e.g. one class only): leave it out rather than invent a number.
        log.warning("%s: no test metric (null value); the run is left out of the tables", path)
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{path}: value must be a finite fraction in [0, 1], not {value!r}")
    if not isinstance(record["synthetic"], bool):
        raise ValueError(f"{path}: synthetic must be true or false, not {record['synthetic']!r}")
    lineage = record.get("data") or []
    if not isinstance(lineage, list) or not all(
        isinstance(r, dict) and isinstance(r.get("synthetic"), bool) for r in lineage
    ):
        raise ValueError(f"{path}: data must be a list of data records, each saying whether it is synthetic")
    fraction = record["label_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ValueError(f"{path}: label_fraction must be in (0, 1], not {fraction!r}")
    row = {key: record[key] for key in REQUIRED_KEYS}
    # Synthetic anywhere along the lineage (the task's data, or the scans the weights were pretrained on) marks the run.
    row["synthetic"] = record["synthetic"] or any_synthetic(lineage)
    row.update(value=100.0 * value, value_fraction=float(value), label_fraction=float(fraction), path=str(path))
    for key in OPTIONAL_KEYS:
        row[key] = record.get(key)
    return row


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in task order (TASKS), label fraction descending, method display order, then run."""
    keys = pd.DataFrame(
        {
            "_task": frame["task"].map(list(TASKS).index),
            "_fraction": -frame["label_fraction"],
            "_method": frame["method"].map(_method_rank),
        },
        index=frame.index,
    )
    extra = ["run"] if "run" in frame else []
    order = keys.join(frame[extra]).sort_values(["_task", "_fraction", "_method", *extra]).index
    return frame.loc[order].reset_index(drop=True)


def collect(metrics_paths: Iterable[Path | str]) -> pd.DataFrame:
    """One row per fine-tuning run from its metrics.json: task, method, run, seed, metric, value (PERCENT = 100 x the
    file's fraction), synthetic, label_fraction, value_fraction, n_train, n_val, n_test, best_epoch, epochs, seconds,
    path.

    Raises ValueError naming the file when one is malformed, lacks a key, or repeats another's (task, method, label
    fraction, run). A run whose value is null (no test metric) is left out with a warning."""
    rows = [row for row in map(_read_metrics, map(Path, metrics_paths)) if row is not None]
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    key = ["task", "method", "label_fraction", "run"]
    repeated = frame[frame.duplicated(key, keep=False)]
    if len(repeated):
        first = repeated.iloc[0]
        same = repeated.loc[(repeated[key] == first[key]).all(axis=1), "path"]
        raise ValueError(f"the same run ({', '.join(f'{k}={first[k]}' for k in key)}) in: {', '.join(same)}")
    frame = frame.astype({"run": "int64", "seed": "int64", "value": "float64", "synthetic": "bool"})
    return _sorted(frame)


# ----------------------------------------------------------------------------------------------------------------------
# Summary and paired tests


def paired_test(values: pd.DataFrame, reference: pd.DataFrame, test: str = "ttest") -> tuple[float, int, float]:
    """Two-sided paired test of `values` against `reference` (both with columns run, value) over the runs they share.

    Runs are matched by their run index because run k of every method fine-tunes with the same seed (same data order,
    same head initialisation, same split): the pairing removes that shared run-to-run variance, which is large next to
    the differences between methods (the paper's stds reach 5 points). Returns (p-value, number of pairs, mean paired
    difference values - reference); the p-value is NaN with fewer than 2 pairs, or where the test is undefined (all
    differences equal for the t-test, all zero for Wilcoxon). test: "ttest" (scipy.stats.ttest_rel) or "wilcoxon"
    (scipy.stats.wilcoxon; distribution-free, but with n pairs its smallest two-sided p is 2 / 2**n, so it needs at
    least 6 runs to reach p < 0.05)."""
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, not {test!r}")
    pairs = values[["run", "value"]].merge(reference[["run", "value"]], on="run", suffixes=("", "_ref")).dropna()
    n = len(pairs)
    diff = float((pairs["value"] - pairs["value_ref"]).mean()) if n else math.nan
    if n < 2:
        return math.nan, n, diff
    x, y = pairs["value"].to_numpy(float), pairs["value_ref"].to_numpy(float)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            result = stats.ttest_rel(x, y) if test == "ttest" else stats.wilcoxon(x, y)
        except ValueError:  # wilcoxon with all differences zero
            return math.nan, n, diff
    return float(result.pvalue), n, diff


def confidence_interval(
    values: Sequence[float], level: float = 0.95, bounds: tuple[float, float] = (0.0, 100.0)
) -> tuple[float, float]:
    """Student-t interval of the mean of `values` (runs taken as independent draws), clipped to the metric's range
    `bounds` (a mean of percentages cannot leave [0, 100]; clipping only drops impossible values); NaN for fewer than
    two values."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(max(bounds[0], values.mean() - half)), float(min(bounds[1], values.mean() + half))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaNs stay NaN and do not count as comparisons)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    steps = (len(order) - np.arange(len(order))) * p[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(steps))
    return adjusted.tolist()


def summarise(frame: pd.DataFrame, reference: str = REFERENCE, test: str = "ttest") -> pd.DataFrame:
    """Per (task, label_fraction, method): n runs, mean and sample std (ddof=1; NaN for one run) of the value in
    percent, the 95% confidence interval of the mean (ci_low, ci_high; Student t over runs), whether any run is
    synthetic, and the paired test against `reference` on the same task and label
    fraction (see paired_test; p_value NaN and n_pairs 0 for the reference itself), diff = mean paired difference
    method - reference, and the published number (paper_mean, paper_std, paper_approximate) where one exists."""
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, not {test!r}")
    rows = []
    for (task, fraction, method), group in frame.groupby(["task", "label_fraction", "method"], sort=False):
        ref = frame[(frame["task"] == task) & (frame["label_fraction"] == fraction) & (frame["method"] == reference)]
        if method == reference:
            p_value, n_pairs, diff = math.nan, 0, math.nan
        else:
            p_value, n_pairs, diff = paired_test(group, ref, test)
        paper = published(method, task)
        rows.append(
            dict(
                task=task,
                label_fraction=fraction,
                method=method,
                metric=TASKS[task].metric,
                n=len(group),
                mean=group["value"].mean(),
                std=group["value"].std(ddof=1),
                **dict(zip(("ci_low", "ci_high"), confidence_interval(group["value"]))),
                synthetic=bool(group["synthetic"].any()),
                reference=reference,
                test=test,
                n_pairs=n_pairs,
                diff=diff,
                p_value=p_value,
                paper_mean=paper.mean if paper else math.nan,
                paper_std=paper.std if paper and paper.std is not None else math.nan,
                paper_approximate=bool(paper and paper.approximate),
            )
        )
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return _sorted(summary) if len(summary) else summary


# ----------------------------------------------------------------------------------------------------------------------
# Tables


def significance_marker(p_value: float) -> str:
    """'**' for p < 0.01, '*' for p < 0.05, '' otherwise (and for NaN)."""
    if p_value is None or not p_value < 0.05:  # NaN compares False
        return ""
    return "**" if p_value < 0.01 else "*"


def _cell(stats_row: Mapping | None, marker: str, mixed: bool, expected: int = 0) -> str:
    """'mean ± std [95% CI]' in percent with a significance marker, 'mean (n=1)' for one run, '–' without runs;
    '(n of N runs)' when fewer than the `expected` runs of the task have a test metric."""
    if stats_row is None or not stats_row["n"]:
        return MISSING
    n = stats_row["n"]
    text = f"{stats_row['mean']:.2f}"
    if n > 1:
        text += f" ± {stats_row['std']:.2f} [{stats_row['ci_low']:.2f}, {stats_row['ci_high']:.2f}]"
    text += marker
    if n < expected:
        text += f" ({n} of {expected} runs)"
    elif n == 1:
        text += " (n=1)"
    if mixed and stats_row["synthetic"]:
        text += " (synthetic)"
    return text


@dataclass
class Table:
    """A table in a format-neutral form: unicode text cells, rendered to CSV, Markdown and LaTeX."""

    name: str
    title: str
    header: list[str]
    rows: list[list[str]]
    keys: list[str]  # method key per row
    data: list[str]  # per row: real / synthetic / mixed / published / none
    notes: list[str] = field(default_factory=list)
    warning: str | None = None  # the synthetic-data line, shown first

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=self.header)
        frame.insert(1, "method_key", self.keys)
        frame["data"] = self.data
        return frame


POLICY_WORDS = {
    "identity": "no transforms",
    "models_genesis": "Models Genesis transforms",
    "released": "released Semantic Genesis transforms",
    "inpainting": "in-painting",
    "patch_shuffling": "patch swaps",
}


def describe_pretraining(record: Mapping) -> str:
    """One run's pretraining in words: data, optimiser with its settings, schedule, transforms (or, for external
    weights, which file with its digest)."""
    if "external" in record:
        ext = record["external"]
        return f"the authors' released {ext.get('format')} weights {ext.get('file')} (sha256 {ext.get('sha256')})"
    data = {"patches": "self-discovered patches", "random_cubes": "random cubes"}.get(record["data"], record["data"])
    optimiser = {"adam": "Adam", "sgd": "SGD"}.get(record["optimizer"], record["optimizer"])
    momentum = f", momentum {record['momentum']:g}" if "momentum" in record else ""
    training = f"lr {record.get('lr', float('nan')):g}{momentum}, batch {record.get('batch_size', '?')}"
    policy = POLICY_WORDS.get(record.get("policy") or "identity", record.get("policy"))
    return f"{data}, {optimiser} ({training}), {record.get('schedule', '?')} schedule, {policy}"


def external_methods(runs: pd.DataFrame) -> set[str]:
    """Methods whose runs started from external weights (their pretraining record names a file)."""
    if "pretraining" not in runs:
        return set()
    return {m for m, r in zip(runs["method"], runs["pretraining"]) if isinstance(r, Mapping) and "external" in r}


def pretraining_note(runs: pd.DataFrame, methods: Iterable[str]) -> str | None:
    """Which data and optimiser each pretrained row's runs used (from their metrics.json), None without any."""
    parts = []
    for method in methods:
        records = runs.loc[runs["method"] == method, "pretraining"] if "pretraining" in runs else []
        described = sorted({describe_pretraining(r) for r in records if isinstance(r, Mapping)})
        if described:
            parts.append(f"{method_label(method)}: {' / '.join(described)}")
    return "Pretraining: " + "; ".join(parts) + "." if parts else None


def overlap_note(runs: pd.DataFrame, tasks: Iterable[str]) -> str | None:
    """How many test cases of each task pretraining used (from their metrics.json), None without any record."""
    parts = []
    for task in tasks:
        records = runs.loc[runs["task"] == task, "pretraining_overlap"] if "pretraining_overlap" in runs else []
        record = next((r for r in records if isinstance(r, Mapping)), None)
        if record is not None:
            parts.append(describe_overlap(task, record))
    return "Test cases in pretraining: " + "; ".join(parts) + "." if parts else None


def _fraction_suffix(fraction: float) -> str:
    return "" if fraction == 1 else "_labels" + f"{100 * fraction:g}".replace(".", "p")


def _table(
    name: str,
    title: str,
    rows: list[str],
    tasks: list[str],
    frame: pd.DataFrame,
    summary: pd.DataFrame,
    fraction: float,
    marker_against: Mapping[str, str],
    test: str,
    published_only: Iterable[str],
    paper_note: str,
    against_text: str,
    labels: Mapping[str, str] | None = None,
) -> Table:
    """Rows = method keys, columns = per task ours (+ the paper's number when all labels were used)."""
    labels = dict(labels or {})
    published_only = set(published_only)
    with_paper = fraction == 1
    runs = frame[(frame["label_fraction"] == fraction) & frame["task"].isin(tasks) & frame["method"].isin(rows)]
    n_synthetic = int(runs["synthetic"].sum())
    mixed = 0 < n_synthetic < len(runs)
    stats_of = {(r.task, r.method): r for r in summary[summary["label_fraction"] == fraction].itertuples(index=False)}
    header = ["Method"]
    for task in tasks:
        header.append(f"{task.upper()} {TASKS[task].metric} (%)")
        if with_paper:
            header.append(f"{task.upper()} paper")
    body, data, used_dagger = [], [], False
    external = external_methods(runs)
    # The task's runs: every run index any method has there; a method short of them misses runs.
    expected = {task: set(runs.loc[runs["task"] == task, "run"]) for task in tasks}
    raw = {}
    for method in (m for m in rows if m in marker_against):
        for task in tasks:
            mine = runs[(runs["task"] == task) & (runs["method"] == method)]
            if len(mine):
                against = runs[(runs["task"] == task) & (runs["method"] == marker_against[method])]
                raw[(method, task)] = paired_test(mine, against, test)[0]
    # One family per table: Holm's correction over every comparison its markers stand for.
    corrected = dict(zip(raw, holm(list(raw.values()))))
    comparisons = sum(not math.isnan(p) for p in raw.values())
    missing = []
    # A row with neither runs nor a published number (a method this config leaves out) would only hold dashes.
    rows = [m for m in rows if (runs["method"] == m).any() or any(published(m, task) for task in tasks)]
    for method in rows:
        has_runs = bool((runs["method"] == method).any())
        only_paper = method in published_only and not has_runs
        used_dagger |= only_paper
        label = labels.get(method, method_label(method)) + ("†" if only_paper else "") + ("‡" * (method in external))
        cells = [label]
        for task in tasks:
            row = stats_of.get((task, method))
            row = None if row is None else row._asdict()
            marker = significance_marker(corrected.get((method, task), math.nan))
            cells.append(MISSING if only_paper else _cell(row, marker, mixed, len(expected[task])))
            if row is not None and not only_paper:
                lacking = sorted(
                    expected[task] - set(runs.loc[(runs["task"] == task) & (runs["method"] == method), "run"])
                )
                if lacking:
                    missing.append(f"{task.upper()} / {method_label(method)}: run {', '.join(map(str, lacking))}")
            if with_paper:
                paper = published(method, task)
                cells.append(paper.text() if paper else MISSING)
        body.append(cells)
        mine = runs[runs["method"] == method]
        data.append(
            "published"
            if only_paper
            else "none"
            if mine.empty
            else "synthetic"
            if mine["synthetic"].all()
            else "mixed"
            if mine["synthetic"].any()
            else "real"
        )
    test_name = "t-test (ttest_rel)" if test == "ttest" else "Wilcoxon signed-rank test"
    counts = runs.groupby(["task", "method"]).size()
    n_text = f"{counts.min()}" if len(counts) and counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
    notes = [
        f"Ours: mean ± sample std (ddof=1) [95% confidence interval of the mean, Student t, clipped to 0-100] over "
        f"{n_text if len(counts) else 'no'} runs, in percent; {MISSING}: no run (ours) or no published number (paper).",
    ]
    notes.append(
        f"* p < 0.05, ** p < 0.01 after Holm's correction for the {comparisons} comparisons of this table: paired "
        f"two-sided {test_name} {against_text} over runs matched by run index (runs share their seed); uncorrected "
        "p-values in summary.csv."
    )
    if missing:
        notes.append(f"Missing runs (failed, or without a test metric): {'; '.join(missing)}.")
    if used_dagger:
        notes.append("†: published numbers only (pretrained model not available to us).")
    if external & set(rows):
        notes.append(
            "‡: external weights (finetune.external), fine-tuned under this protocol; their files and digests are "
            "in the pretraining note."
        )
    notes += [note for note in (pretraining_note(runs, rows), overlap_note(runs, tasks)) if note]
    if with_paper:
        notes.append(paper_note)
    else:
        notes.append(f"Fine-tuned with {100 * fraction:g}% of the training labels; the paper's (all labels) omitted.")
    warning = None
    if n_synthetic:
        warning = MIXED_NOTE if mixed else SYNTHETIC_NOTE
    if fraction != 1:
        title += f" ({100 * fraction:g}% of the training labels)"
    return Table(name + _fraction_suffix(fraction), title, header, body, list(rows), data, notes, warning)


def _extras(frame: pd.DataFrame, tasks: list[str], known: Iterable[str]) -> list[str]:
    """Methods with runs on these tasks that no fixed row lists (e.g. rotation), in display order."""
    known = set(known)
    methods = frame.loc[frame["task"].isin(tasks), "method"].unique()
    return sorted((m for m in methods if m not in known), key=_method_rank)


def make_tables(
    frame: pd.DataFrame, reference: str = REFERENCE, test: str = "ttest", summary: pd.DataFrame | None = None
) -> list[Table]:
    """The three tables for every label fraction in the frame (always those for all labels, fraction 1)."""
    summary = summarise(frame, reference, test) if summary is None else summary
    fractions = sorted({1.0, *frame["label_fraction"].tolist()}, reverse=True)
    semantic_rows = {"inpainting_semantics", "patch_shuffling_semantics"}
    # Further methods (e.g. rotation) go before Semantic Genesis, which stays the last row.
    extra_3d = _extras(frame, TASKS_3D, [*ROWS_COMPARISON_3D, *semantic_rows])
    rows_3d = [*ROWS_COMPARISON_3D[:-1], *extra_3d, ROWS_COMPARISON_3D[-1]]
    rows_2d = ROWS_2D + _extras(frame, TASKS_2D, ROWS_2D)
    versus_reference = lambda rows: {m: reference for m in rows if m != reference}  # noqa: E731
    tables = []
    for fraction in fractions:
        common = dict(frame=frame, summary=summary, fraction=fraction, test=test)
        against_reference = f"against {method_label(reference)}"
        tables.append(
            _table(
                "adding_semantics",
                "Adding semantics to self-supervised pretraining (3D target tasks)",
                ROWS_ADDING_SEMANTICS,
                TASKS_3D,
                marker_against={with_: base for base, with_ in SEMANTIC_PAIRS},
                published_only=(),
                paper_note=f"paper: {SOURCE_3D}; ≈: {SOURCE_SEMANTICS}.",
                against_text="against the same method without semantics",
                labels={"semantic_genesis": "Models Genesis + semantics (Semantic Genesis)"},
                **common,
            )
        )
        tables.append(
            _table(
                "comparison_3d",
                "Comparison with 3D pretrained models and self-supervised methods",
                rows_3d,
                TASKS_3D,
                marker_against=versus_reference(rows_3d),
                published_only=PUBLISHED_ONLY_3D,
                paper_note=f"paper: {SOURCE_3D}.",
                against_text=against_reference,
                **common,
            )
        )
        tables.append(
            _table(
                "results_2d",
                "2D target tasks",
                rows_2d,
                TASKS_2D,
                marker_against=versus_reference(rows_2d),
                published_only=PUBLISHED_ONLY_2D,
                paper_note=f"paper: {SOURCE_2D}; no published Semantic Genesis 2D or PXS numbers.",
                against_text=against_reference,
                **common,
            )
        )
    return tables


def _markdown_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "\\*_|`" else ch for ch in text)


LATEX_REPLACEMENTS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "±": r"$\pm$",
    "–": "--",
    "≈": r"$\approx$",
    "†": r"$^\dagger$",
}


def latex_escape(text: str) -> str:
    """Text safe in LaTeX: special characters escaped, ±, –, ≈, † as LaTeX commands."""
    return "".join(LATEX_REPLACEMENTS.get(ch, ch) for ch in str(text))


def render_markdown(table: Table) -> str:
    lines = [f"### {_markdown_escape(table.title)}", ""]
    if table.warning:
        lines += [f"**{_markdown_escape(table.warning)}**", ""]
    lines.append("| " + " | ".join(_markdown_escape(h) for h in table.header) + " |")
    lines.append("| :-- |" + " --: |" * (len(table.header) - 1))
    lines += ["| " + " | ".join(_markdown_escape(c) for c in row) + " |" for row in table.rows]
    lines.append("")
    lines += [_markdown_escape(note) + "  " for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def render_latex(table: Table) -> str:
    caption = latex_escape(table.title) + "."
    if table.warning:
        caption += r" \textbf{" + latex_escape(table.warning) + "}"
    lines = [
        f"% {table.name}: written by semantic_genesis.tables.build; needs \\usepackage{{booktabs}}",
        r"\begin{table}[htbp]",
        r"\centering",
        r"\caption{" + caption + "}",
        r"\label{tab:" + table.name.replace("_", "-") + "}",
        r"\begin{tabular}{l" + "r" * (len(table.header) - 1) + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in table.header) + r" \\",
        r"\midrule",
        *(" & ".join(latex_escape(c) for c in row) + r" \\" for row in table.rows),
        r"\bottomrule",
        r"\end{tabular}",
        r"\par\smallskip",
        r"{\footnotesize " + r" \\ ".join(latex_escape(note) for note in table.notes) + "}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _write_text(text: str, path: Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_table(table: Table, out_dir: Path | str) -> list[Path]:
    """<name>.csv (cells as text, a method_key and a data column), <name>.md and <name>.tex under out_dir."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / f"{table.name}.csv") as tmp:
        table.frame().to_csv(tmp, index=False)
    return [
        out_dir / f"{table.name}.csv",
        _write_text(render_markdown(table), out_dir / f"{table.name}.md"),
        _write_text(render_latex(table), out_dir / f"{table.name}.tex"),
    ]


def build_tables(
    frame: pd.DataFrame, out_dir: Path | str, reference: str = REFERENCE, test: str = "ttest"
) -> list[Path]:
    """Write adding_semantics, comparison_3d and results_2d as .csv, .md and .tex under out_dir (plus the same with a
    `_labels<percent>` suffix for every other label fraction in the frame) and summary.csv (the numbers behind the
    cells, see summarise). Returns the paths written."""
    out_dir = Path(out_dir)
    summary = summarise(frame, reference, test)
    paths = []
    for table in make_tables(frame, reference, test, summary):
        paths += write_table(table, out_dir)
    with atomic_path(out_dir / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    return [*paths, out_dir / "summary.csv"]


# ----------------------------------------------------------------------------------------------------------------------
# Figures and the text summary


def _synthetic_title(title: str, synthetic: bool) -> str:
    return f"{title}\nSYNTHETIC data (the embedded demo), not comparable with the paper" if synthetic else title


def plot_adding_semantics(summary: pd.DataFrame, out_png: Path | str, label_fraction: float = 1.0) -> Path:
    """One panel per 3D task: for in-painting, patch shuffling and Models Genesis a bar without and with semantics (mean
    over runs, error bar = std), the published value as a black diamond (hollow: read off the paper's figure)."""
    out_png = Path(out_png)
    rows = summary[summary["label_fraction"] == label_fraction]
    rows = rows[rows["method"].isin(ROWS_ADDING_SEMANTICS) & rows["task"].isin(TASKS_3D)]
    synthetic = bool(rows["synthetic"].any())
    fig, axes = plt.subplots(1, len(TASKS_3D), figsize=(3.6 * len(TASKS_3D), 3.8), squeeze=False)
    width = 0.38
    for ax, task in zip(axes[0], TASKS_3D):
        low, high = [], []
        for i, pair in enumerate(SEMANTIC_PAIRS):
            for j, method in enumerate(pair):
                x = i + (j - 0.5) * width
                mine = rows[(rows["task"] == task) & (rows["method"] == method)]
                if len(mine):
                    mean, std = float(mine["mean"].iloc[0]), float(mine["std"].iloc[0])
                    std = 0.0 if math.isnan(std) else std
                    ax.bar(x, mean, width, yerr=std, capsize=3, color="tab:blue" if j else "0.7", edgecolor="0.2")
                    low.append(mean - std)
                    high.append(mean + std)
                paper = published(method, task) if label_fraction == 1 else None
                if paper:
                    face = "none" if paper.approximate else "black"
                    ax.plot(x, paper.mean, "D", color="black", markerfacecolor=face, markersize=6, zorder=3)
                    low.append(paper.mean)
                    high.append(paper.mean)
        if low:
            ax.set_ylim(max(0.0, min(low) - 5), min(100.0, max(high) + 3))
        else:
            ax.set_ylim(0, 100)
            ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_xticks(range(len(SEMANTIC_PAIRS)), [method_label(base) for base, _ in SEMANTIC_PAIRS], fontsize=8)
        ax.set_title(f"{task.upper()} ({TASKS[task].metric})", fontsize=10)
        ax.set_ylabel(f"{TASKS[task].metric} (%)")
    handles = [
        Patch(facecolor="0.7", edgecolor="0.2", label="without semantics"),
        Patch(facecolor="tab:blue", edgecolor="0.2", label="with semantics"),
        Line2D([], [], marker="D", color="black", linestyle="", label="paper"),
        Line2D(
            [], [], marker="D", color="black", markerfacecolor="none", linestyle="", label="paper (read off figure)"
        ),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    title = "Adding semantics" + ("" if label_fraction == 1 else f" ({100 * label_fraction:g}% of the labels)")
    fig.suptitle(_synthetic_title(title, synthetic), fontsize=11)
    return save(fig, out_png, rect=(0, 0.07, 1, 1))


def _is_synthetic_run(history_path: Path) -> bool:
    """Whether the metrics.json next to a history.csv says the run is synthetic (False where there is none)."""
    metrics = history_path.with_name("metrics.json")
    try:
        return bool(json.loads(metrics.read_text()).get("synthetic", False))
    except (OSError, ValueError, AttributeError):
        return False


def _read_history(path: Path) -> pd.DataFrame:
    try:
        history = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read history: {error}") from error
    missing = [c for c in ("epoch", "val_metric", "val_loss") if c not in history]
    if missing:
        raise ValueError(f"{path}: history lacks column(s) {', '.join(missing)}")
    return history


# tab20 colour per method, the same in every figure: a base method light, its "+ semantics" variant dark.
METHOD_COLOURS = {
    "scratch": 14,
    "inpainting": 3,
    "inpainting_semantics": 2,
    "patch_shuffling": 5,
    "patch_shuffling_semantics": 4,
    "models_genesis": 1,
    "semantic_genesis": 0,
    "self_classification": 6,
}
EXTRA_COLOURS = (8, 10, 12, 16, 18)


def plot_finetuning_curves(
    history_paths: Mapping[tuple[str, str, int], Path | str],
    out_png_per_task: Mapping[str, Path | str] | Path | str,
    synthetic: bool | None = None,
) -> list[Path]:
    """Per task a figure of the validation metric (left; as written in history.csv) and the training and validation
    loss (right) per epoch: one colour per method, one thin line per run.

    history_paths: (task, method, run) -> history.csv. out_png_per_task: task -> PNG path, or a folder (then
    <folder>/finetuning_<task>.png for every task in history_paths). A task given a path but without histories still
    gets a figure saying so. synthetic: whether to mark the titles; None reads it from each history's metrics.json."""
    keys = sorted(history_paths, key=lambda k: (list(TASKS).index(k[0]) if k[0] in TASKS else 99, _method_rank(k[1])))
    if isinstance(out_png_per_task, Mapping):
        outputs = {task: Path(path) for task, path in out_png_per_task.items()}
        unplanned = sorted({task for task, _, _ in keys} - set(outputs))
        if unplanned:
            raise ValueError(f"no output path for the curves of task(s) {', '.join(unplanned)}")
    else:
        outputs = {task: Path(out_png_per_task) / f"finetuning_{task}.png" for task, _, _ in keys}
    extras = sorted({method for _, method, _ in keys} - set(METHOD_COLOURS))
    palette = plt.get_cmap("tab20")
    colours = {method: palette(index) for method, index in METHOD_COLOURS.items()}
    colours.update({method: palette(EXTRA_COLOURS[i % len(EXTRA_COLOURS)]) for i, method in enumerate(extras)})
    written = []
    for task, out_png in outputs.items():
        fig, (ax_metric, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
        task_synthetic, shown = False, set()
        for key in (k for k in keys if k[0] == task):
            _, method, run = key
            path = Path(history_paths[key])
            history = _read_history(path)
            task_synthetic |= _is_synthetic_run(path) if synthetic is None else synthetic
            label = None if method in shown else method_label(method)
            shown.add(method)
            colour = colours[method]
            ax_metric.plot(history["epoch"], history["val_metric"], color=colour, lw=0.9, alpha=0.8, label=label)
            ax_loss.plot(history["epoch"], history["val_loss"], color=colour, lw=0.9, alpha=0.8, label=label)
            if "train_loss" in history:
                ax_loss.plot(history["epoch"], history["train_loss"], color=colour, lw=0.6, alpha=0.5, ls="--")
        metric = TASKS[task].metric if task in TASKS else "metric"
        for ax in (ax_metric, ax_loss):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_metric.set(xlabel="epoch", ylabel=f"validation {metric}", title="validation metric")
        ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (solid: validation, dashed: training)")
        if shown:
            ax_metric.legend(fontsize=8)
        else:
            for ax in (ax_metric, ax_loss):
                ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="0.4")
        title = f"Fine-tuning: {TASKS[task].title if task in TASKS else task}"
        fig.suptitle(_synthetic_title(title, task_synthetic), fontsize=11)
        written.append(save(fig, out_png))
    return written


def _p_text(p_value: float, n_pairs: int) -> str:
    return f"p = {p_value:.3g}, {n_pairs} pairs" if not math.isnan(p_value) else f"no test, {n_pairs} pairs"


def write_report_summary(
    summary: pd.DataFrame, out_md: Path | str, frame: pd.DataFrame | None = None, label_fraction: float = 1.0
) -> Path:
    """A short Markdown summary: per task Semantic Genesis (the summary's reference) against the paper and against the
    other methods (difference of means, paired p-value from the summary); with `frame`, also each "+ semantics" method
    against its base (paired test over runs matched by run index)."""
    rows = summary[summary["label_fraction"] == label_fraction]
    reference = str(rows["reference"].iloc[0]) if len(rows) else REFERENCE
    test = str(rows["test"].iloc[0]) if len(rows) else "ttest"
    lines = ["# Fine-tuning results: headline comparisons", ""]
    if rows["synthetic"].any():
        lines += [f"**{SYNTHETIC_NOTE}**", ""]
    lines += [
        f"Mean over runs in percent; label fraction {label_fraction:g}; p: paired two-sided "
        f"{'t-test' if test == 'ttest' else 'Wilcoxon signed-rank test'} over runs matched by run index, uncorrected "
        "for multiple comparisons (the tables' markers are Holm-corrected).",
        "",
    ]
    if rows.empty:
        lines.append("No runs.")
    for task in (t for t in TASKS if t in set(rows["task"])):
        here = rows[rows["task"] == task].set_index("method")
        lines += [f"## {task.upper()} ({TASKS[task].metric})", ""]
        if reference in here.index:
            ref = here.loc[reference]
            text = f"- {method_label(reference)}: {ref['mean']:.2f}"
            text += f" ± {ref['std']:.2f} (n={ref['n']})" if ref["n"] > 1 else " (n=1)"
            paper = published(reference, task)
            if paper and label_fraction == 1:
                text += f"; paper {paper.text()} (ours - paper: {ref['mean'] - paper.mean:+.2f})"
            lines.append(text)
            for method, row in here.iterrows():
                if method == reference:
                    continue
                lines.append(
                    f"- {method_label(reference)} vs {method_label(method)}: {ref['mean'] - row['mean']:+.2f} "
                    f"({_p_text(row['p_value'], int(row['n_pairs']))})"
                )
        else:
            lines.append(f"- no {method_label(reference)} runs")
        if frame is not None:
            runs = frame[(frame["task"] == task) & (frame["label_fraction"] == label_fraction)]
            for base, with_ in SEMANTIC_PAIRS:
                a, b = runs[runs["method"] == with_], runs[runs["method"] == base]
                if len(a) and len(b):
                    p_value, n_pairs, _ = paired_test(a, b, test)
                    lines.append(
                        f"- adding semantics to {method_label(base)}: {a['value'].mean() - b['value'].mean():+.2f} "
                        f"({_p_text(p_value, n_pairs)})"
                    )
        lines.append("")
    return _write_text("\n".join(lines).rstrip() + "\n", Path(out_md))


def write_results(
    metrics_paths: Iterable[Path | str],
    history_paths: Iterable[Path | str],
    out_dir: Path | str,
    curve_pngs: Mapping[str, Path | str],
    label_fraction: float = 1.0,
) -> pd.DataFrame:
    """The tables stage: every table, runs.csv, summary.md, the adding-semantics chart and per-task curves.

    History files (of one label fraction) are keyed by their folder, see finetune.grid.run_of."""
    out_dir = Path(out_dir)
    frame = collect(metrics_paths)
    with atomic_path(out_dir / "runs.csv") as tmp:
        frame.to_csv(tmp, index=False)
    build_tables(frame, out_dir)
    summary = summarise(frame)
    write_report_summary(summary, out_dir / "summary.md", frame=frame, label_fraction=label_fraction)
    plot_adding_semantics(summary, out_dir / "adding_semantics.png", label_fraction=label_fraction)
    histories = {}
    for path in map(Path, history_paths):
        task, method, _, run = run_of(path)
        histories[(task, method, run)] = path
    plot_finetuning_curves(histories, curve_pngs)
    log.info(
        "tables of %d runs (%d tasks, %d methods) in %s",
        len(frame),
        frame.task.nunique(),
        frame.method.nunique(),
        out_dir,
    )
    return frame
