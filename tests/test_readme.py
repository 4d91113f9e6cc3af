"""Every snakemake command the README shows works as written: each is dry-run, with the paper configs' placeholder
paths swapped for small stand-in folders in the real layouts, so the documentation cannot rot."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

DOCUMENTS = [
    REPO / "README.md",
    REPO / "config" / "README.md",
    REPO / "config" / "benchmark.yaml",
    *sorted((REPO / "config").glob("paper_*.yaml")),
]
# Shown as a pattern, not a command to run.
PATTERNS = ("...", "<target>")


def snakemake_commands(text: str) -> list[str]:
    """Commands starting with `snakemake ` in fenced blocks (backslash continuations joined, comments cut), in
    inline code, and after "Use with:" in config comments."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("snakemake "):
                commands.append(line)
    commands += re.findall(r"`(snakemake [^`]+)`", text)
    commands += [c.strip() for c in re.findall(r"Use with: (snakemake .+)", text)]
    return [" ".join(c.split()) for c in commands if not any(p in c for p in PATTERNS)]


def test_the_documents_show_commands():
    found = {str(path.relative_to(REPO)): snakemake_commands(path.read_text()) for path in DOCUMENTS}
    assert len(found["README.md"]) >= 15 and found["config/paper_3d.yaml"] and found["config/paper_2d.yaml"]
    assert found["config/benchmark.yaml"]


def stand_in_roots(root: Path) -> dict[str, str]:
    """Empty files named as in each data set's layout: enough for Snakemake to plan every job."""
    files = [f"ct/subset{i}/1.2.{i}.mhd" for i in range(10)] + [f"ct/subset{i}/1.2.{i}.raw" for i in range(10)]
    files += ["ct/candidates_V2.csv", "cxr/Data_Entry_2017.csv", "cxr/train_val_list.txt", "cxr/test_list.txt"]
    files += ["cxr/images/00000001_000.png", "ncs/index.csv", "lits/volume-0.nii", "lits/segmentation-0.nii"]
    files += ["brats/HGG/s1/s1_flair.nii.gz", "siim/train-rle.csv", "siim/dicom/1.dcm"]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    return {
        "/path/to/LUNA16": "ct",
        "/path/to/ChestX-ray14": "cxr",
        "/path/to/ncs-cubes": "ncs",
        "/path/to/LiTS": "lits",
        "/path/to/BraTS2018": "brats",
        "/path/to/siim-acr": "siim",
    }


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """config/paper_*.yaml with their placeholder paths pointing at stand-in folders."""
    root = tmp_path_factory.mktemp("readme")
    placeholders = stand_in_roots(root)
    swapped = {}
    for path in sorted((REPO / "config").glob("paper_*.yaml")):
        text = path.read_text()
        for placeholder, folder in placeholders.items():
            text = text.replace(placeholder, str(root / folder))
        assert "/path/to" not in text, f"{path.name} has a placeholder the test does not know"
        yaml.safe_load(text)
        (root / path.name).write_text(text)
        swapped[f"config/{path.name}"] = str(root / path.name)
    return root, swapped


ALL = sorted({c for path in DOCUMENTS for c in snakemake_commands(path.read_text())})


@pytest.mark.parametrize("command", ALL)
def test_documented_command_dry_runs_as_written(command, configs, tmp_path):
    root, swapped = configs
    words = [swapped.get(word, word) for word in shlex.split(command)]
    # Run from the repository root as the README says, with results in a scratch folder; -n goes first so that
    # no option that takes several values can swallow it.
    arguments = [sys.executable, "-m", "snakemake", "-n", "-d", str(tmp_path), *words[1:]]
    env = {**os.environ, "SG_SLURM_ACCOUNT": "", "SG_CPU_PARTITION": "", "SG_GPU_PARTITION": ""}
    result = subprocess.run(arguments, capture_output=True, text=True, cwd=REPO, env=env)
    output = result.stdout + result.stderr
    if "--report" in words:
        # A report needs finished jobs; as written it must still parse and reach the workflow.
        assert "unrecognized arguments" not in output and "No such file" not in output, output
        return
    assert result.returncode == 0, f"{command}\n{output}"
    assert "Nothing to be done" in output or "Job stats" in output, output
