"""Tables over the runs of several results folders (runs made on different machines compare as if made together)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..finetune.grid import fraction_of, run_of
from ..runtime.files import atomic_path
from ..tasks.taskdata import TASKS
from .build import write_results
from .label_efficiency import write_label_efficiency


def gather_results(folders: Sequence[Path | str], out_dir: Path | str) -> pd.DataFrame:
    """The tables rule's outputs over the fine-tuning runs of several results folders, the label-efficiency table and
    figures when the runs span several label fractions, and sources.csv (runs per folder).

    Each folder is a workflow's results/ (or any folder holding finetune/<task>/<method>/labels<percent>/run<r>/); a run
    found in two folders is an error naming both files."""
    out_dir = Path(out_dir)
    metrics, counts = [], []
    for folder in map(Path, folders):
        found = sorted(folder.glob("finetune/*/*/labels*/run*/metrics.json"))
        if not found:
            raise FileNotFoundError(
                f"{folder}: no fine-tuning runs (finetune/<task>/<method>/labels<percent>/run<r>/metrics.json)"
            )
        metrics += found
        counts.append({"folder": str(folder.resolve()), "runs": len(found)})
    keys = {path: run_of(path) for path in metrics}
    fractions = sorted({fraction_of(tag) for _, _, tag, _ in keys.values()})
    fullest = max(fractions)
    histories = [
        path.with_name("history.csv")
        for path, (_, _, tag, _) in keys.items()
        if fraction_of(tag) == fullest and path.with_name("history.csv").exists()
    ]
    order = list(TASKS)
    tasks = sorted({task for task, *_ in keys.values()}, key=lambda t: order.index(t) if t in order else len(order))
    frame = write_results(
        metrics, histories, out_dir, {task: out_dir / f"curves_{task}.png" for task in tasks}, fullest
    )
    if len(fractions) > 1:
        figures = {task: out_dir / f"label_efficiency_{task}.png" for task in tasks}
        write_label_efficiency(metrics, out_dir / "label_efficiency.csv", out_dir / "label_efficiency.md", figures)
    with atomic_path(out_dir / "sources.csv") as tmp:
        pd.DataFrame(counts).to_csv(tmp, index=False)
    return frame
