"""The fine-tuning grid, task x method x label fraction x run: where each run lives, and reading that back."""

from __future__ import annotations

from pathlib import Path

ROOT = "results/finetune"


def labels_tag(fraction: float) -> str:
    """The folder of a label fraction: 1.0 -> 'labels100', 0.125 -> 'labels12.5'."""
    return f"labels{100 * fraction:g}"


def fraction_of(tag: str) -> float:
    """The label fraction of a folder name made by labels_tag: 'labels12.5' -> 0.125."""
    return float(tag.removeprefix("labels")) / 100


def run_folder(task: str, method: str, fraction: float, run: int) -> str:
    """results/finetune/<task>/<method>/labels<percent>/run<r>."""
    return f"{ROOT}/{task}/{method}/{labels_tag(fraction)}/run{run}"


def run_of(path: Path | str) -> tuple[str, str, str, int]:
    """(task, method, labels tag, run) of a file inside a run folder."""
    run_dir = Path(path).parent
    labels, method, task = run_dir.parent.name, run_dir.parent.parent.name, run_dir.parent.parent.parent.name
    if not run_dir.name.startswith("run") or not labels.startswith("labels"):
        raise ValueError(f"{path} is not in a run folder <task>/<method>/labels<percent>/run<r>/")
    return task, method, labels, int(run_dir.name.removeprefix("run"))
