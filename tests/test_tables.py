"""Result tables from hand-written fine-tuning outputs: statistics, paired tests, table contents, escaping, figures."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from semantic_genesis.finetune.grid import labels_tag
from semantic_genesis.tables import build as tables
from semantic_genesis.tables import published as pub

# Test metric (fraction) per (task, method) for runs 0, 1, 2; "bms" has no self_classification runs.
VALUES = {
    ("ncc", "scratch"): [0.90, 0.93, 0.91],
    ("ncc", "models_genesis"): [0.95, 0.97, 0.96],
    ("ncc", "semantic_genesis"): [0.97, 0.98, 0.985],
    ("ncc", "self_classification"): [0.94, 0.99, 0.93],
    ("ncc", "inpainting"): [0.92, 0.94, 0.925],
    ("ncc", "inpainting_semantics"): [0.95, 0.965, 0.955],
    ("bms", "scratch"): [0.55, 0.60, 0.58],
    ("bms", "models_genesis"): [0.65, 0.66, 0.64],
    ("bms", "semantic_genesis"): [0.67, 0.69, 0.68],
    ("dxc", "scratch"): [0.70, 0.71, 0.69],
    ("dxc", "semantic_genesis"): [0.74, 0.75, 0.76],
}


def write_run(root: Path, task, method, run, value, synthetic=False, label_fraction=1.0, **extra) -> Path:
    folder = root / task / method / labels_tag(label_fraction) / f"run{run}"
    folder.mkdir(parents=True, exist_ok=True)
    record = dict(
        task=task,
        method=method,
        run=run,
        seed=run,
        metric=tables.TASKS[task].metric,
        value=value,
        scores={"test": value},
        synthetic=synthetic,
        label_fraction=label_fraction,
        n_train=20,
        n_test=10,
        best_epoch=3,
        epochs=5,
        seconds=1.5,
    )
    record.update(extra)
    (folder / "metrics.json").write_text(json.dumps(record))
    epochs = np.arange(5)
    pd.DataFrame(
        dict(
            epoch=epochs,
            train_loss=1 / (epochs + 1),
            val_loss=1.2 / (epochs + 1),
            val_metric=value * (1 - 0.1 / (epochs + 1)),
            lr=1e-3,
            seconds=0.3,
        )
    ).to_csv(folder / "history.csv", index=False)
    return folder / "metrics.json"


def write_runs(root: Path, values=VALUES, synthetic=False, label_fraction=1.0) -> list[Path]:
    return [
        write_run(root, task, method, run, value, synthetic, label_fraction)
        for (task, method), runs in values.items()
        for run, value in enumerate(runs)
    ]


@pytest.fixture
def paths(tmp_path) -> list[Path]:
    return write_runs(tmp_path / "runs")


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def row_of(table_path: Path, key: str) -> pd.Series:
    frame = pd.read_csv(table_path, keep_default_na=False)
    return frame.set_index("method_key").loc[key]


def test_collect_reads_runs_in_percent(paths):
    frame = tables.collect(paths)
    assert len(frame) == sum(len(v) for v in VALUES.values())
    row = frame[(frame["task"] == "ncc") & (frame["method"] == "semantic_genesis") & (frame["run"] == 2)].iloc[0]
    assert row["value"] == pytest.approx(98.5)
    assert row["value_fraction"] == pytest.approx(0.985)
    assert row["metric"] == "AUC" and row["label_fraction"] == 1.0 and not row["synthetic"]
    assert row["n_test"] == 10 and row["path"].endswith("metrics.json")
    # Task order follows TASKS (ncc before bms before dxc), whatever the file order.
    assert list(dict.fromkeys(frame["task"])) == ["ncc", "bms", "dxc"]


GOOD = dict(task="ncc", method="scratch", run=0, seed=0, metric="AUC", value=0.9, synthetic=False, label_fraction=1)


def record(**changes) -> str:
    return json.dumps({key: value for key, value in {**GOOD, **changes}.items() if value is not None})


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot read metrics"),
        ("[1, 2]", "JSON object"),
        (record(seed=None, synthetic=None), "seed, synthetic"),
        (record(label_fraction=None), "label_fraction"),
        (record(metric="IoU"), "metric 'IoU'"),
        (record(value=93.0), "fraction in [0, 1]"),
        (record(task="xyz"), "unknown task"),
        (record(run="0"), "run must be an integer"),
        (record(synthetic="yes"), "synthetic must be"),
        (record(label_fraction=0), "label_fraction must be"),
    ],
)
def test_collect_names_a_malformed_file(paths, tmp_path, content, message):
    bad = tmp_path / "bad" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        tables.collect([*paths, bad])
    assert str(bad) in str(error.value)


def test_collect_rejects_a_repeated_run(paths, tmp_path):
    again = write_run(tmp_path / "again", "ncc", "scratch", 1, 0.5)
    with pytest.raises(ValueError, match="the same run") as error:
        tables.collect([*paths, again])
    assert str(again) in str(error.value)


def test_summary_statistics_and_paired_test(paths):
    shuffled = list(paths)
    random.Random(3).shuffle(shuffled)
    summary = tables.summarise(tables.collect(shuffled)).set_index(["task", "method"])
    for (task, method), values in VALUES.items():
        percent = 100 * np.array(values)
        row = summary.loc[(task, method)]
        assert row["n"] == 3
        assert row["mean"] == pytest.approx(percent.mean())
        assert row["std"] == pytest.approx(percent.std(ddof=1))
        if method == "semantic_genesis":
            assert np.isnan(row["p_value"]) and row["n_pairs"] == 0
            continue
        reference = 100 * np.array(VALUES[(task, "semantic_genesis")])
        assert row["n_pairs"] == 3
        assert row["p_value"] == pytest.approx(stats.ttest_rel(percent, reference).pvalue)
        assert row["diff"] == pytest.approx((percent - reference).mean())
    assert summary.loc[("ncc", "semantic_genesis"), "paper_mean"] == 98.46
    assert summary.loc[("ncc", "inpainting_semantics"), "paper_approximate"]
    assert np.isnan(summary.loc[("dxc", "semantic_genesis"), "paper_mean"])  # never invented


def test_pairs_are_matched_by_run_index_not_file_order(tmp_path):
    # Runs written in a different order per method, and one run of models_genesis missing: 2 pairs (runs 0 and 2).
    root = tmp_path / "runs"
    reference = {2: 0.90, 0: 0.80, 1: 0.85}
    other = {2: 0.88, 0: 0.70}
    paths = [write_run(root, "lcs", "semantic_genesis", run, value) for run, value in reference.items()]
    paths += [write_run(root, "lcs", "models_genesis", run, value) for run, value in other.items()]
    summary = tables.summarise(tables.collect(paths[::-1])).set_index("method")
    row = summary.loc["models_genesis"]
    assert row["n_pairs"] == 2
    expected = stats.ttest_rel([70.0, 88.0], [80.0, 90.0]).pvalue
    assert row["p_value"] == pytest.approx(expected)
    wilcoxon = tables.summarise(tables.collect(paths), test="wilcoxon").set_index("method")
    assert wilcoxon.loc["models_genesis", "p_value"] == pytest.approx(stats.wilcoxon([70.0, 88.0], [80.0, 90.0]).pvalue)
    with pytest.raises(ValueError, match="test must be"):
        tables.summarise(tables.collect(paths), test="anova")


def test_single_run_and_single_pair_give_nan(tmp_path):
    root = tmp_path / "runs"
    paths = [write_run(root, "ncs", "semantic_genesis", 0, 0.7), write_run(root, "ncs", "scratch", 0, 0.6)]
    summary = tables.summarise(tables.collect(paths)).set_index("method")
    assert np.isnan(summary.loc["scratch", "std"]) and np.isnan(summary.loc["scratch", "p_value"])
    assert summary.loc["scratch", "n_pairs"] == 1
    written = tables.build_tables(tables.collect(paths), tmp_path / "out")
    assert "60.00 (n=1)" in read(next(p for p in written if p.name == "comparison_3d.md"))


def test_tables_written_with_cells_markers_and_paper_numbers(paths, tmp_path):
    frame = tables.collect(paths)
    out = tmp_path / "tables"
    written = tables.build_tables(frame, out)
    names = {p.name for p in written}
    for stem in ("adding_semantics", "comparison_3d", "results_2d"):
        assert {f"{stem}.csv", f"{stem}.md", f"{stem}.tex"} <= names
    assert "summary.csv" in names and all(p.stat().st_size for p in written)
    assert not list(out.glob(".*partial*"))  # nothing half-written left behind

    summary = tables.summarise(frame).set_index(["task", "method"])
    row = row_of(out / "comparison_3d.csv", "models_genesis")
    stat = summary.loc[("ncc", "models_genesis")]
    values = 100 * np.array(VALUES[("ncc", "models_genesis")])
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert (stat["ci_low"], stat["ci_high"]) == pytest.approx((low, high))
    assert row["NCC AUC (%)"].startswith(f"{stat['mean']:.2f} ± {stat['std']:.2f} [{low:.2f}, {high:.2f}]")
    assert row["NCC paper"] == "98.07 ± 0.59"
    # The reference itself carries no marker, and its paper number sits beside it.
    reference = row_of(out / "comparison_3d.csv", "semantic_genesis")
    assert reference["NCC AUC (%)"].startswith("97.83 ± 0.76 [") and reference["NCC paper"] == "98.46 ± 0.30"
    assert not reference["NCC AUC (%)"].endswith("*")
    # A method without runs on a task shows "–", never a number; its paper number is still there.
    sc = row_of(out / "comparison_3d.csv", "self_classification")
    assert sc["BMS IoU (%)"] == tables.MISSING and sc["BMS paper"] == "64.02 ± 0.98"
    assert row_of(out / "comparison_3d.csv", "patch_shuffling")["NCC AUC (%)"] == tables.MISSING
    assert row_of(out / "comparison_3d.csv", "scratch")["data"] == "real"


def test_confidence_interval_is_students_and_stays_in_the_metrics_range():
    values = [2.0, 9.0, 4.0]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert low < 0 and tables.confidence_interval(values) == pytest.approx((0.0, high))
    assert tables.confidence_interval([97.0, 99.5, 99.9])[1] == 100.0
    assert all(math.isnan(v) for v in tables.confidence_interval([50.0]))


def test_holm_matches_its_definition():
    p = [0.01, 0.04, math.nan, 0.03, 0.005]
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, running maximum, capped at 1; NaN is no comparison.
    expected = [0.03, 0.06, math.nan, 0.06, 0.02]
    np.testing.assert_allclose(tables.holm(p), expected)
    assert tables.holm([]) == [] and tables.holm([0.6, 0.7]) == [1.0, 1.0]


def test_a_marker_that_survives_no_correction_is_dropped(tmp_path):
    """Uncorrected p < 0.05 for one of several comparisons is no finding once the table's family is counted."""
    root = tmp_path / "runs"
    values = {("ncc", "semantic_genesis"): [0.90, 0.91, 0.92, 0.93]}
    values[("ncc", "scratch")] = [0.88, 0.90, 0.905, 0.92]  # a small, fairly consistent gap
    for method in ("models_genesis", "inpainting", "patch_shuffling", "self_classification"):
        values[("ncc", method)] = [0.95, 0.85, 0.97, 0.86]  # noise
    frame = tables.collect(write_runs(root, values))
    raw = tables.summarise(frame).set_index("method").loc["scratch", "p_value"]
    assert 0.01 < raw < 0.05 and raw * 5 > 0.05
    tables.build_tables(frame, tmp_path / "out")
    assert not row_of(tmp_path / "out" / "comparison_3d.csv", "scratch")["NCC AUC (%)"].endswith("*")
    assert "Holm's correction for the 5 comparisons" in read(tmp_path / "out" / "comparison_3d.md")


def test_missing_runs_are_reported_not_dropped(tmp_path):
    root = tmp_path / "runs"
    values = {("ncs", "semantic_genesis"): [0.7, 0.72, 0.71], ("ncs", "scratch"): [0.6, 0.62]}
    tables.build_tables(tables.collect(write_runs(root, values)), tmp_path / "out")
    assert row_of(tmp_path / "out" / "comparison_3d.csv", "scratch")["NCS IoU (%)"].endswith("(2 of 3 runs)")
    assert "Missing runs (failed, or without a test metric): NCS / Random init: run 2." in read(
        tmp_path / "out" / "comparison_3d.md"
    ).replace("\\", "")


def test_significance_markers_follow_p_values(tmp_path):
    # Clear, consistent differences give p < 0.01 (**); noisy ones none.
    root = tmp_path / "runs"
    values = {
        ("ncc", "semantic_genesis"): [0.90, 0.92, 0.94, 0.96],
        ("ncc", "scratch"): [0.80, 0.821, 0.839, 0.861],
        ("ncc", "models_genesis"): [0.99, 0.85, 0.97, 0.90],
    }
    frame = tables.collect(write_runs(root, values))
    tables.build_tables(frame, tmp_path / "out")
    summary = tables.summarise(frame).set_index("method")
    assert summary.loc["scratch", "p_value"] < 0.01 and summary.loc["models_genesis", "p_value"] > 0.05
    assert row_of(tmp_path / "out" / "comparison_3d.csv", "scratch")["NCC AUC (%)"].endswith("**")
    assert not row_of(tmp_path / "out" / "comparison_3d.csv", "models_genesis")["NCC AUC (%)"].endswith("*")
    assert "\\*\\*" in read(tmp_path / "out" / "comparison_3d.md")  # escaped in Markdown


def test_adding_semantics_rows_and_markers_against_the_base(paths, tmp_path):
    frame = tables.collect(paths)
    tables.build_tables(frame, tmp_path)
    table = pd.read_csv(tmp_path / "adding_semantics.csv", keep_default_na=False).set_index("method_key")
    assert list(table.index) == [
        "inpainting",
        "inpainting_semantics",
        "patch_shuffling",
        "patch_shuffling_semantics",
        "models_genesis",
        "semantic_genesis",
    ]
    assert table.loc["semantic_genesis", "Method"] == "Models Genesis + semantics (Semantic Genesis)"
    assert table.loc["inpainting_semantics", "NCC paper"] == "≈97.3"
    assert table.loc["semantic_genesis", "LCS paper"] == "86.53 ± 1.30"
    # The "+ semantics" marker compares with the base method over matched runs.
    # Markers stand for Holm-corrected p-values over the table's comparisons (a reference loop over them).
    family = {}
    for base, with_ in pub.SEMANTIC_PAIRS:
        for task in tables.TASKS_3D:
            if (task, with_) in VALUES and (task, base) in VALUES:
                a, b = (100 * np.array(VALUES[(task, m)]) for m in (with_, base))
                family[(with_, task)] = stats.ttest_rel(a, b).pvalue
    corrected = dict(zip(family, tables.holm(list(family.values()))))
    for (method, task), p_value in corrected.items():
        cell = table.loc[method, f"{task.upper()} {tables.TASKS[task].metric} (%)"]
        assert cell.endswith(tables.significance_marker(p_value) or "]"), (method, task, cell)
    cell = table.loc["inpainting_semantics", "NCC AUC (%)"]
    assert cell.startswith("95.67 ± ") and f"{len(family)} comparisons" in read(tmp_path / "adding_semantics.md")
    assert table.loc["patch_shuffling_semantics", "NCS IoU (%)"] == tables.MISSING
    assert "without semantics" in read(tmp_path / "adding_semantics.md")


def test_published_only_rows_are_marked_and_only_published(paths, tmp_path):
    tables.build_tables(tables.collect(paths), tmp_path)
    table = pd.read_csv(tmp_path / "comparison_3d.csv", keep_default_na=False).set_index("method_key")
    assert list(table.index) == tables.ROWS_COMPARISON_3D
    for key in pub.PUBLISHED_ONLY_3D:
        row = table.loc[key]
        assert row["Method"] == pub.METHOD_LABELS[key] + "†" and row["data"] == "published"
        for task in tables.TASKS_3D:
            assert row[f"{task.upper()} {tables.TASKS[task].metric} (%)"] == tables.MISSING
            mean, std = pub.PUBLISHED_3D[key][task]
            assert row[f"{task.upper()} paper"] == f"{mean:.2f} ± {std:.2f}"
    assert "published numbers only" in read(tmp_path / "comparison_3d.md")
    assert r"$^\dagger$" in read(tmp_path / "comparison_3d.tex")
    # 2D: the published baselines of Models Genesis for DXC only; nothing for PXS or Semantic Genesis 2D.
    table_2d = pd.read_csv(tmp_path / "results_2d.csv", keep_default_na=False).set_index("method_key")
    assert table_2d.loc["imagenet", "DXC paper"] == "75.55 ± 0.48" and table_2d.loc["imagenet", "PXS paper"] == "–"
    assert (
        table_2d.loc["scratch", "DXC paper"] == "69.15 ± 0.77"
        and table_2d.loc["scratch", "DXC AUC (%)"] == "70.00 ± 1.00 [67.52, 72.48]*"
    )
    assert table_2d.loc["semantic_genesis", "DXC paper"] == "–"
    # A method with neither runs nor published numbers in a table (left out by the config) gets no row of dashes.
    assert "inpainting" not in table_2d.index and "inpainting" in table.index
    assert (table_2d[["PXS IoU (%)", "PXS paper"]] == "–").all().all()


@pytest.mark.parametrize("synthetic", [True, False])
def test_synthetic_label_only_for_synthetic_runs(tmp_path, synthetic):
    frame = tables.collect(write_runs(tmp_path / "runs", synthetic=synthetic))
    written = tables.build_tables(frame, tmp_path / "out")
    for path in written:
        if path.name == "summary.csv":
            continue
        text = read(path)
        assert ("synthetic" in text.lower()) == synthetic, path.name
        if synthetic and path.suffix in (".md", ".tex"):
            assert "Results on SYNTHETIC data (the embedded demo), not comparable with the paper's numbers" in text
    if synthetic:
        assert row_of(tmp_path / "out" / "comparison_3d.csv", "scratch")["data"] == "synthetic"


def test_mixed_synthetic_runs_are_marked_per_cell(paths, tmp_path):
    frame = tables.collect([*paths, write_run(tmp_path / "syn", "ncc", "patch_shuffling", 0, 0.9, synthetic=True)])
    tables.build_tables(frame, tmp_path / "out")
    row = row_of(tmp_path / "out" / "comparison_3d.csv", "patch_shuffling")
    # One run where the task's other methods have three: the cell says so.
    assert row["NCC AUC (%)"] == "90.00 (1 of 3 runs) (synthetic)" and row["data"] == "synthetic"
    assert "Some results are on SYNTHETIC data" in read(tmp_path / "out" / "comparison_3d.md")
    assert "synthetic" not in read(tmp_path / "out" / "results_2d.md").lower()  # the 2D runs are all real


def test_real_task_results_from_synthetic_pretraining_are_captioned_synthetic(paths, tmp_path):
    """The caption follows the whole lineage: real task data, weights pretrained on synthetic scans."""
    lineage = [
        {"name": "ncc", "root": "/data/luna16", "synthetic": False},
        {"name": "ct", "root": "results/synthetic/luna16", "synthetic": True},
    ]
    mixed = write_run(tmp_path / "mixed", "ncc", "patch_shuffling", 0, 0.9, synthetic=False, data=lineage)
    frame = tables.collect([*paths, mixed])
    assert frame.set_index("method").loc["patch_shuffling", "synthetic"]
    tables.build_tables(frame, tmp_path / "out")
    assert row_of(tmp_path / "out" / "comparison_3d.csv", "patch_shuffling")["data"] == "synthetic"
    assert "scans their weights were pretrained on" in read(tmp_path / "out" / "comparison_3d.md")
    bad = write_run(tmp_path / "bad", "ncc", "rotation", 0, 0.9, data=[{"name": "ct"}])
    with pytest.raises(ValueError, match="bad.*data must be a list of data records"):
        tables.collect([bad])


def test_latex_is_escaped_and_balanced(paths, tmp_path):
    extra = [write_run(tmp_path / "x", "ncc", "my_method", run, 0.9 + run / 100) for run in range(3)]
    tables.build_tables(tables.collect([*paths, *extra]), tmp_path / "out")
    tex = read(tmp_path / "out" / "comparison_3d.tex")
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert r"my\_method" in body and r"(\%)" in body
    assert not re.search(r"(?<!\\)[_%#]", body), "unescaped special character"
    assert "±" not in body and "–" not in body and r"$\pm$" in body
    for env in ("table", "tabular"):
        assert body.count(rf"\begin{{{env}}}") == body.count(rf"\end{{{env}}}") == 1
    assert body.index(r"\toprule") < body.index(r"\midrule") < body.index(r"\bottomrule")
    assert body.count("{") == body.count("}") + body.count(r"\}") - body.count(r"\{")
    # Every body row has as many cells as the column specification.
    columns = len(re.search(r"\\begin\{tabular\}\{([lr]+)\}", body).group(1))
    rows = body[body.index(r"\toprule") : body.index(r"\bottomrule")].split(r"\\")[:-1]
    assert rows and all(len(re.split(r"(?<!\\)&", row)) == columns for row in rows)
    # The extra method gets a row before Semantic Genesis in every format.
    keys = list(pd.read_csv(tmp_path / "out" / "comparison_3d.csv")["method_key"])
    assert keys[-2:] == ["my_method", "semantic_genesis"]
    assert "my\\_method" in read(tmp_path / "out" / "comparison_3d.md")


def test_label_fractions_get_their_own_tables(paths, tmp_path):
    quarter = write_runs(tmp_path / "quarter", {("ncc", "scratch"): [0.8, 0.82]}, label_fraction=0.25)
    written = tables.build_tables(tables.collect([*paths, *quarter]), tmp_path / "out")
    names = {p.name for p in written}
    assert {"comparison_3d_labels25.md", "comparison_3d_labels25.tex", "comparison_3d_labels25.csv"} <= names
    text = read(tmp_path / "out" / "comparison_3d_labels25.md")
    assert "25% of the training labels" in text and "98.46" not in text  # the paper's all-label numbers left out
    assert (
        row_of(tmp_path / "out" / "comparison_3d_labels25.csv", "scratch")["NCC AUC (%)"]
        == "81.00 ± 1.41 [68.29, 93.71]"
    )
    # The all-label table is unchanged by the other fraction.
    assert row_of(tmp_path / "out" / "comparison_3d.csv", "scratch")["NCC AUC (%)"].startswith("91.33 ± ")


def test_empty_frame_gives_tables_of_dashes(tmp_path):
    written = tables.build_tables(tables.collect([]), tmp_path)
    table = pd.read_csv(tmp_path / "comparison_3d.csv", keep_default_na=False).set_index("method_key")
    assert (table.loc["semantic_genesis", ["NCC AUC (%)", "BMS IoU (%)"]] == "–").all()
    assert table.loc["semantic_genesis", "NCC paper"] == "98.46 ± 0.30"
    assert len(written) == 10


# The spec's section 7, cell by cell: (mean, std) per method for NCC AUC, NCS IoU, LCS IoU, BMS IoU.
SPEC_3D = """
scratch             94.25 5.07 74.05 1.97 79.76 5.42 59.87 4.04
niftynet            94.14 4.57 52.98 2.05 83.23 1.05 60.78 1.60
medicalnet          95.80 0.51 75.68 0.32 85.52 0.58 66.09 1.35
inflated_3d         98.26 0.27 71.58 0.55 70.65 4.26 67.83 0.75
inpainting          95.12 1.74 76.02 0.55 81.36 4.83 61.38 3.84
patch_shuffling     94.90 1.18 75.55 0.82 82.82 2.35 59.05 2.83
rotation            94.42 1.78 76.13 0.61 83.15 1.41 60.53 5.22
rubiks_cube         96.24 1.27 72.87 0.16 75.59 0.20 62.75 1.93
models_genesis      98.07 0.59 77.41 0.40 85.10 2.15 67.96 1.29
self_classification 97.49 0.45 76.93 0.87 84.14 1.78 64.02 0.98
semantic_genesis    98.46 0.30 77.33 0.52 86.53 1.30 68.82 0.38
"""
SPEC_SEMANTICS = {  # read off the "adding semantics" bars: NCC, LCS, BMS, NCS
    "inpainting_semantics": {"ncc": 97.3, "lcs": 84.4, "bms": 68.2, "ncs": 77.5},
    "patch_shuffling_semantics": {"ncc": 96.6, "lcs": 85.0, "bms": 67.8, "ncs": 76.9},
}
SPEC_2D = {"scratch": (69.15, 0.77), "imagenet": (75.55, 0.48), "genesis_ct_2d": (74.99, 0.36),
           "genesis_xray_2d": (75.48, 0.13)}  # fmt: skip


def test_every_published_number_is_the_specs():
    cells = 0
    for line in SPEC_3D.strip().splitlines():
        method, *values = line.split()
        for i, task in enumerate(tables.TASKS_3D):
            number = pub.published(method, task)
            assert (number.mean, number.std) == (float(values[2 * i]), float(values[2 * i + 1])), (method, task)
            assert not number.approximate
            cells += 1
    assert cells == 44 and len(pub.PUBLISHED_3D) == 11
    for method, tasks in SPEC_SEMANTICS.items():
        for task, mean in tasks.items():
            number = pub.published(method, task)
            assert (number.mean, number.std, number.approximate) == (mean, None, True)
    assert pub.published("patch_shuffling_semantics", "lcs").text() == "≈85.0"
    for method, (mean, std) in SPEC_2D.items():
        assert (pub.published(method, "dxc").mean, pub.published(method, "dxc").std) == (mean, std)
    assert pub.published("genesis_xray_2d", "dxc").text() == "75.48 ± 0.13"
    assert pub.published("semantic_genesis", "dxc") is None and pub.published("scratch", "pxs") is None
    assert set(pub.PUBLISHED_ONLY) == {"niftynet", "medicalnet", "inflated_3d", "imagenet", "genesis_ct_2d",
                                       "genesis_xray_2d"}  # fmt: skip
    assert all(key in pub.METHOD_LABELS for key in [*pub.PUBLISHED_3D, *pub.ADDING_SEMANTICS, *pub.PUBLISHED_2D])


def test_each_table_says_how_each_row_was_pretrained(tmp_path):
    mg = {"data": "random_cubes", "optimizer": "sgd", "lr": 1.0, "momentum": 0.9, "batch_size": 6,
          "schedule": "step", "policy": "models_genesis"}  # fmt: skip
    sg = {"data": "patches", "optimizer": "adam", "lr": 0.001, "batch_size": 8, "schedule": "plateau",
          "policy": "models_genesis"}  # fmt: skip
    runs = [write_run(tmp_path, "ncc", "models_genesis", r, 0.9, pretraining=mg) for r in range(2)]
    runs += [write_run(tmp_path, "ncc", "semantic_genesis", r, 0.9, pretraining=sg) for r in range(2)]
    runs += [write_run(tmp_path, "ncc", "scratch", r, 0.9, pretraining=None) for r in range(2)]
    tables.build_tables(tables.collect(runs), tmp_path / "out")
    text = read(tmp_path / "out" / "comparison_3d.md")
    assert (
        "Pretraining: Models Genesis: random cubes, SGD (lr 1, momentum 0.9, batch 6), step schedule, Models Genesis "
        "transforms; Semantic Genesis: self-discovered patches, Adam (lr 0.001, batch 8), plateau schedule, "
        "Models Genesis transforms."
    ) in text
    assert "Random init:" not in text


def is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_are_written(tmp_path):
    paths = write_runs(tmp_path / "runs", synthetic=True)
    paths.append(write_run(tmp_path / "runs", "ncc", "rotation", 0, 0.9))  # a method without a fixed colour
    summary = tables.summarise(tables.collect(paths))
    png = tables.plot_adding_semantics(summary, tmp_path / "figs" / "adding_semantics.png")
    assert is_png(png)
    histories = {}
    for path in paths:
        record = json.loads(path.read_text())
        histories[(record["task"], record["method"], record["run"])] = path.with_name("history.csv")
    written = tables.plot_finetuning_curves(histories, tmp_path / "curves")
    assert {p.name for p in written} == {"finetuning_ncc.png", "finetuning_bms.png", "finetuning_dxc.png"}
    assert all(is_png(p) for p in written)
    # A mapping of outputs: a task without histories still gets a figure; a task without an output is an error.
    only = tables.plot_finetuning_curves(
        {k: v for k, v in histories.items() if k[0] == "ncc"},
        {"ncc": tmp_path / "a.png", "lcs": tmp_path / "b.png"},
    )
    assert [p.name for p in only] == ["a.png", "b.png"] and all(is_png(p) for p in only)
    with pytest.raises(ValueError, match="bms"):
        tables.plot_finetuning_curves(histories, {"ncc": tmp_path / "c.png"})


def test_history_without_columns_is_named(tmp_path):
    bad = tmp_path / "history.csv"
    bad.write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(ValueError, match="val_metric") as error:
        tables.plot_finetuning_curves({("ncc", "scratch", 0): bad}, tmp_path)
    assert str(bad) in str(error.value)


def test_report_summary(paths, tmp_path):
    frame = tables.collect(paths)
    summary = tables.summarise(frame)
    out = tables.write_report_summary(summary, tmp_path / "summary.md", frame=frame)
    text = read(out)
    row = summary.set_index(["task", "method"]).loc[("ncc", "models_genesis")]
    assert f"Semantic Genesis vs Models Genesis: +1.83 (p = {row['p_value']:.3g}, 3 pairs)" in text
    assert "paper 98.46 ± 0.30 (ours - paper: -0.63)" in text
    assert "adding semantics to In-painting: +2.83" in text
    assert "## BMS (IoU)" in text and "synthetic" not in text.lower()


def test_another_reference_is_named(paths, tmp_path):
    frame = tables.collect(paths)
    summary = tables.summarise(frame, reference="models_genesis").set_index(["task", "method"])
    assert summary.loc[("ncc", "models_genesis"), "n_pairs"] == 0
    expected = stats.ttest_rel(
        100 * np.array(VALUES[("ncc", "scratch")]), 100 * np.array(VALUES[("ncc", "models_genesis")])
    ).pvalue
    assert summary.loc[("ncc", "scratch"), "p_value"] == pytest.approx(expected)
    tables.build_tables(frame, tmp_path, reference="models_genesis")
    assert "against Models Genesis" in read(tmp_path / "comparison_3d.md")


def test_each_table_says_how_many_test_cases_pretraining_used(tmp_path):
    ncs = {"checked": True, "test_cases": 5, "in_pretraining": 2, "examples": ["a", "b"], "manifest": "scans.tsv"}
    lcs = {"checked": False, "reason": "LiTS 2017 abdominal CT is not part of LUNA16"}
    runs = [write_run(tmp_path, "ncs", m, r, 0.5, pretraining_overlap=ncs) for m in ("scratch", "models_genesis")
            for r in range(2)]  # fmt: skip
    runs += [write_run(tmp_path, "lcs", "scratch", r, 0.5, pretraining_overlap=lcs) for r in range(2)]
    tables.build_tables(tables.collect(runs), tmp_path / "out")
    assert (
        "Test cases in pretraining: NCS: 2 of 5 test cases come from scans or images pretraining used; "
        "LCS: not checked (LiTS 2017 abdominal CT is not part of LUNA16)."
    ) in read(tmp_path / "out" / "comparison_3d.md")


def test_tables_gathered_over_results_folders_of_two_machines(tmp_path, capsys):
    """Runs 0-1 made on one machine and run 2 on another make one table, as if made together."""
    from semantic_genesis.__main__ import main

    def results_folder(name: str, runs: range) -> Path:
        for (task, method), values in VALUES.items():
            for run in runs:
                write_run(tmp_path / name / "finetune", task, method, run, values[run])
        return tmp_path / name

    a, b = results_folder("machine_a", range(2)), results_folder("machine_b", range(2, 3))
    assert main(["tables", str(a), str(b), "--out", str(tmp_path / "gathered")]) == 0
    together = tables.collect(write_runs(tmp_path / "together"))
    tables.build_tables(together, tmp_path / "reference")
    for name in ("comparison_3d.csv", "adding_semantics.csv", "results_2d.csv"):
        assert read(tmp_path / "gathered" / name) == read(tmp_path / "reference" / name)
    sources = pd.read_csv(tmp_path / "gathered" / "sources.csv")
    assert sources["runs"].tolist() == [2 * len(VALUES), len(VALUES)]
    assert (tmp_path / "gathered" / "curves_ncc.png").stat().st_size
    assert not (tmp_path / "gathered" / "label_efficiency.csv").exists()  # one label fraction: nothing to draw
    # The same run in two folders, and a folder without runs, are errors naming the files or the folder.
    assert main(["tables", str(a), str(a), "--out", str(tmp_path / "twice")]) == 1
    assert "the same run" in capsys.readouterr().err
    assert main(["tables", str(tmp_path / "gathered"), "--out", str(tmp_path / "none")]) == 1
    assert "no fine-tuning runs" in capsys.readouterr().err
    # A second folder with a quarter of the labels adds the label-efficiency table and figures.
    for (task, method), values in VALUES.items():
        for run, value in enumerate(values):
            write_run(tmp_path / "quarter" / "finetune", task, method, run, value - 0.05, label_fraction=0.25)
    assert main(["tables", str(a), str(b), str(tmp_path / "quarter"), "--out", str(tmp_path / "both")]) == 0
    assert (tmp_path / "both" / "comparison_3d_labels25.csv").exists()
    assert (tmp_path / "both" / "label_efficiency_ncc.png").stat().st_size
    assert "Labels needed" in read(tmp_path / "both" / "label_efficiency.md")
