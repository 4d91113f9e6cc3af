"""Label efficiency: the labels each pretrained method needs to reach scratch with all labels, figures and table."""

from __future__ import annotations

import math

import pandas as pd
from test_tables import write_run

from semantic_genesis.tables import build as tables
from semantic_genesis.tables.label_efficiency import efficiency, run_range, write_label_efficiency

FRACTIONS = (0.25, 0.5, 1.0)
# Per method: the mean test IoU at each fraction; runs spread it by -1, 0, +1 points.
MEANS = {
    "scratch": (0.40, 0.50, 0.60),
    "semantic_genesis": (0.55, 0.62, 0.70),  # reaches scratch's 60 % at half the labels
    "models_genesis": (0.30, 0.45, 0.58),  # never does
    "inpainting": (0.60, 0.61, 0.62),  # already with a quarter (exactly 60 %: reaching counts)
}
TRAIN = 40


def write_grid(root, means=MEANS, task="ncs"):
    paths = []
    for method, values in means.items():
        for fraction, mean in zip(FRACTIONS, values):
            for run, spread in enumerate((-0.01, 0.0, 0.01)):
                n_train = round(fraction * TRAIN)
                paths.append(
                    write_run(root, task, method, run, mean + spread, label_fraction=fraction, n_train=n_train)
                )
    return paths


def test_labels_needed_to_match_scratch_with_all_labels(tmp_path):
    table = efficiency(tables.collect(write_grid(tmp_path))).set_index("method")
    assert list(table.index) == ["inpainting", "models_genesis", "semantic_genesis"]  # display order, no scratch
    assert (table["target"] - 60).abs().max() < 1e-9 and (table["target_labels"] == TRAIN).all()
    assert table.loc["semantic_genesis", "fraction_needed"] == 0.5
    assert table.loc["semantic_genesis", "labels_needed"] == 20 and table.loc["semantic_genesis", "label_share"] == 0.5
    assert table.loc["inpainting", "fraction_needed"] == 0.25 and table.loc["inpainting", "labels_needed"] == 10
    assert math.isnan(table.loc["models_genesis", "fraction_needed"])
    assert table.loc["models_genesis", "fractions_tested"] == "0.25 0.5 1" and (table["runs"] == 3).all()


def test_figures_and_tables_are_written_and_a_task_without_scratch_says_so(tmp_path):
    paths = write_grid(tmp_path / "runs")
    paths += write_grid(tmp_path / "runs", {"semantic_genesis": (0.5, 0.6, 0.7)}, task="lcs")
    out = tmp_path / "out"
    pngs = {task: out / f"label_efficiency_{task}.png" for task in ("ncs", "lcs", "bms")}
    table = write_label_efficiency(paths, out / "label_efficiency.csv", out / "label_efficiency.md", pngs)
    assert all(png.stat().st_size > 0 for png in pngs.values())  # bms: a figure saying it has no runs
    pd.testing.assert_frame_equal(pd.read_csv(out / "label_efficiency.csv"), table, check_dtype=False)
    text = (out / "label_efficiency.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| Semantic Genesis"))
    assert row == "| Semantic Genesis | 50% (20 of 40 labels) | – |"
    assert "| Models Genesis | not reached (tested 25%, 50%, 100%) |" in text
    assert "NCS IoU 60.00% at 100% of the labels" in text


def test_run_range_names_one_count_or_the_range():
    assert run_range(pd.Series([4, 4, 4])) == "4"
    assert run_range(pd.Series([3, 4])) == "3-4"
    assert run_range(pd.Series([], dtype=int)) == "0"
