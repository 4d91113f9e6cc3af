"""The local profile caps the gpu resource at this machine's GPUs, and concurrent jobs claim different GPUs (the
SLURM profile is tested on a real SLURM in test_slurm.py)."""

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from semantic_genesis.runtime import gpus
from semantic_genesis.runtime.gpus import claim_gpus

REPO = Path(__file__).resolve().parents[1]


def run_snakemake(workdir, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )


@pytest.mark.parametrize(("visible", "expected"), [("0,1", 2), ("", 0), ("3", 1)])
def test_default_profile_caps_gpu_jobs_at_the_visible_gpus(tmp_path, visible, expected):
    shutil.copytree(REPO / "profiles" / "default", tmp_path / "profiles" / "default")
    (tmp_path / "Snakefile").write_text(
        'rule a:\n    output: "gpu.txt"\n    resources: gpu=4\n    shell: "echo {resources.gpu} > {output}"\n'
    )
    run_snakemake(tmp_path, env={"CUDA_VISIBLE_DEVICES": visible})
    assert int((tmp_path / "gpu.txt").read_text()) == expected


@pytest.fixture
def no_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_devices_chosen_by_slurm_are_kept(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    with claim_gpus(1) as chosen:
        assert chosen == ["2"] and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,5"


def test_no_gpu_asked_hides_the_gpus(no_visible_devices):
    with claim_gpus(0) as chosen:
        assert chosen == [] and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_concurrent_jobs_take_different_gpus(no_visible_devices, monkeypatch, tmp_path):
    monkeypatch.setattr(gpus, "machine_gpu_count", lambda: 3)
    with claim_gpus(2, tmp_path) as first:
        assert first == ["0", "1"] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # the next job is another process
        with claim_gpus(1, tmp_path) as second:
            assert second == ["2"] and os.environ["CUDA_VISIBLE_DEVICES"] == "2"


def test_a_job_waits_until_enough_gpus_are_free(no_visible_devices, monkeypatch, tmp_path):
    monkeypatch.setattr(gpus, "machine_gpu_count", lambda: 2)
    other_job = contextlib.ExitStack()
    assert other_job.enter_context(claim_gpus(1, tmp_path)) == ["0"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    waits = []

    def sleep(seconds):  # the other job ends while this one waits
        waits.append(seconds)
        other_job.close()
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    monkeypatch.setattr(gpus.time, "sleep", sleep)
    with claim_gpus(2, tmp_path) as chosen:
        assert chosen == ["0", "1"] and len(waits) == 1


def test_a_machine_without_gpus_runs_gpu_jobs_on_the_cpu(no_visible_devices, monkeypatch, tmp_path):
    monkeypatch.setattr(gpus, "machine_gpu_count", lambda: 0)
    with claim_gpus(2, tmp_path) as chosen:
        assert chosen == [] and os.environ["CUDA_VISIBLE_DEVICES"] == ""
