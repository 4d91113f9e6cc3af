"""The Snakemake workflow end to end on a tiny synthetic configuration, as a user runs it."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO
from semantic_genesis.preprocess_ct import PreprocessedCT
from semantic_genesis.preprocess_cxr import PreprocessedCXR

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]

TINY = {
    "synthetic": {
        "seed": 7,
        "ct": {"patients": 5, "subsets": 3, "matrix": 64, "slice_mm": [5.0], "thick_slice_fraction": 0.0},
        "cxr": {"patients": 8, "follow_ups": [1, 2], "size": 64},
    },
    "preprocess": {
        "ct": {
            "splits": {"train": ["subset0", "subset1"], "val": ["subset2"], "test": []},
            "min_slices": 40,
            "thumbnail_size": [16, 16, 8],
            "chunk": [32, 32, 16],
        },
        "cxr": {"size": 32},
    },
}


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*SNAKEMAKE, "-d", str(workdir), *args], capture_output=True, text=True, cwd=workdir)
    if check and result.returncode:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    table = dry_run_output.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M)}


def write_config(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A workdir in which the tiny workflow has run once (both targets)."""
    root = tmp_path_factory.mktemp("workflow")
    config = write_config(root / "tiny.yaml", TINY)
    snakemake(root, "--configfile", config, "--cores", "2", "preprocess_3d", "preprocess_2d")
    return root


def test_preprocess_targets_build_every_artifact(workdir):
    scans = pd.read_csv(workdir / "results/ct/scans.tsv", sep="\t")
    assert len(scans) == 5 and (scans.status == "ok").all()
    assert dict(scans.groupby("split").size()) == {"train": 4, "val": 1}
    for subset in ("subset0", "subset1", "subset2"):
        with PreprocessedCT(workdir / f"results/ct/preprocessed/{subset}.h5") as store:
            ids = set(scans.id[scans.subset == subset])
            assert set(store.ids) == ids
            for sid in ids:
                volume = store.volume(sid)
                assert volume.min() >= 0 and volume.max() <= 1 and volume.shape[1:] == (64, 64)
                assert store.thumbnail(sid).shape == (8, 16, 16)
    images = pd.read_csv(workdir / "results/cxr/images.tsv", sep="\t")
    assert (images.status == "ok").all() and set(images.split) <= {"train", "val", "test"}
    with PreprocessedCXR(workdir / "results/cxr/images.h5") as store:
        assert len(store) == len(images) and store.image(0).shape == (32, 32)
    for name in ("montage_ct.png", "montage_cxr.png"):
        assert (workdir / "results/synthetic" / name).stat().st_size > 10_000
    logs = list((workdir / "results/logs").rglob("*.log"))
    assert {p.stem for p in logs} >= {"synthetic_ct", "synthetic_cxr", "subset0", "ct_manifest", "preprocess_cxr"}
    assert "usable" in (workdir / "results/logs/preprocess_ct/subset0.log").read_text()
    assert (workdir / "results/benchmarks/preprocess_ct/subset0.tsv").exists()


def test_second_run_does_nothing(workdir):
    result = snakemake(workdir, "--configfile", str(workdir / "tiny.yaml"), "-n", "preprocess_3d", "preprocess_2d")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_the_hu_window_reruns_only_ct_preprocessing(workdir, tmp_path):
    changed = yaml.safe_load(yaml.safe_dump(TINY))
    changed["preprocess"]["ct"]["hu_window"] = [-1000, 400]
    config = write_config(tmp_path / "changed.yaml", changed)
    result = snakemake(workdir, "--configfile", config, "-n", "preprocess_3d", "preprocess_2d")
    assert planned_jobs(result.stdout + result.stderr) == {
        "preprocess_ct": 3,
        "ct_manifest": 1,
        "preprocess_3d": 1,
        "total": 5,
    }


def test_config_typo_stops_before_any_job(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", {"preprocess": {"ct": {"hu_windw": [-1000, 1000]}}})
    result = snakemake(tmp_path, "--configfile", bad, "--cores", "1", "preprocess_3d", check=False)
    assert result.returncode != 0
    assert "unknown key 'preprocess.ct.hu_windw' (did you mean 'hu_window'?)" in result.stderr
    assert not (tmp_path / "results").exists()


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr
