"""The workflow on a real SLURM cluster: a single-node slurmctld + slurmd started on this machine
(tests/slurm_cluster.py), driven through the project's profile profiles/slurm and the executor plugin, against a local
run of the same target.

Needs root (skipped otherwise); installs slurm-wlm and munge with apt-get where they are missing. Select with
`pytest -m slurm`, leave out with `pytest -m "not slurm"`.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO
from slurm_cluster import SlurmCluster
from test_workflow import SNAKEMAKE, TINY, snakemake, write_config

pytestmark = pytest.mark.slurm

METHODS = ["models_genesis", "semantic_genesis"]  # two pretraining jobs are enough to show the GPU stage
CPU_RULES = {"synthetic_ct", "preprocess_ct", "ct_manifest", "random_cubes", "plan", "patches", "transform_gallery"}
GPU_RULES = {"autoencoder", "embed", "pretrain"}
TIMING_COLUMNS = {"seconds", "train_samples_per_s"}  # wall-clock columns of history.csv: differ between any two runs
# Threads of every rule in both runs: torch's CPU results are bitwise reproducible for one thread count only.
MAX_THREADS = min(2, len(os.sched_getaffinity(0)))
# scontrol fields of a job shown in the test's output and in failure messages
SHOWN = "Id Comment Partition JobState Reason NumCPUs TresPerJob SubmitTime StartTime EndTime".split()


@pytest.fixture(scope="module")
def cluster():
    # MinJobAge an hour: the jobs of the start of the workflow run must still be listed when the test reads them.
    with SlurmCluster(min_job_age=3600) as running:
        yield running


def test_sbatch_runs_on_both_partitions(cluster, tmp_path):
    def submit(*args: str) -> str:
        return cluster.sbatch("--wait", "--mem=100", "-D", str(tmp_path), "-o", str(tmp_path / "%j.log"), *args)

    gpu_job = submit("-p", "gpu", "--gpus=1", "--wrap", "echo $CUDA_VISIBLE_DEVICES > gpu.out")
    cpu_job = submit("-p", "cpu", "-c", str(cluster.cpus), "--wrap", "echo $SLURM_CPUS_ON_NODE > cpu.out")
    assert (tmp_path / "gpu.out").read_text().strip() == "0", "one fake GPU, index 0"
    assert (tmp_path / "cpu.out").read_text().strip() == str(cluster.cpus)
    jobs = {job["Id"]: job for job in cluster.jobs()}
    assert jobs[gpu_job]["Partition"] == "gpu" and "gpu:1" in jobs[gpu_job]["TresPerJob"]
    assert jobs[cpu_job]["Partition"] == "cpu" and "gpu" not in jobs[cpu_job].get("TresPerJob", "")
    assert jobs[gpu_job]["JobState"] == jobs[cpu_job]["JobState"] == "COMPLETED"
    # More GPUs than the node has: refused at submission, not left pending.
    refused = cluster.run("sbatch", "-p", "gpu", f"--gpus={cluster.gpus + 1}", "--wrap", "true", check=False)
    assert refused.returncode != 0 and "node configuration is not available" in refused.stderr


def test_profile_run_on_slurm_matches_local_run(runs):
    slurm, local = runs["slurm"].workdir / "results", runs["local"].workdir / "results"
    files = sorted(p.relative_to(local) for p in local.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(slurm) for p in slurm.rglob("*") if p.is_file())
    for method in METHODS:
        folder = Path("ct/pretrain") / method
        history = [pd.read_csv(root / folder / "history.csv") for root in (slurm, local)]
        assert list(history[0].epoch) == [1, 2]
        without_timing = (h.drop(columns=[c for c in TIMING_COLUMNS if c in h]) for h in history)
        pd.testing.assert_frame_equal(*without_timing, check_exact=True)
        for name in ("weights.pt", "encoder.pt"):
            assert_state_dicts_equal(slurm / folder / name, local / folder / name)
    assert_state_dicts_equal(slurm / "ct/discovery/autoencoder/model.pt", local / "ct/discovery/autoencoder/model.pt")
    for name in ("ct/discovery/patches.h5", "ct/discovery/latents.h5", "ct/preprocessed/subset0.h5"):
        assert_h5_equal(slurm / name, local / name)
    for name in ("ct/scans.tsv", "ct/discovery/classes.tsv"):
        assert (slurm / name).read_text() == (local / name).read_text(), name


def test_jobs_went_through_sbatch_to_their_partitions(runs):
    run = runs["slurm"]
    jobs = run.jobs
    assert jobs, f"no SLURM job carries the run's job name {run.uuid}"
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(job["Comment"].removeprefix("rule_").split("_wildcards_")[0], []).append(job)
    local_counts = runs["local"].planned
    expected = {rule: n for rule, n in local_counts.items() if rule in CPU_RULES | GPU_RULES}
    assert set(expected) == CPU_RULES | GPU_RULES, local_counts
    assert {rule: len(found) for rule, found in by_rule.items()} == expected
    for rule, found in by_rule.items():
        for job in found:
            assert job["JobState"] == "COMPLETED", (rule, job["Id"], job["JobState"])
            assert int(job["NumCPUs"]) <= MAX_THREADS, (rule, job["NumCPUs"])
            if rule in GPU_RULES:
                assert job["Partition"] == "gpu" and "gpu:1" in job["TresPerJob"], (rule, job)
            else:
                assert job["Partition"] == "cpu" and "gpu" not in job.get("TresPerJob", ""), (rule, job)
    # preprocess_ct is in the profile's slurm-array-jobs: its subsets went to SLURM as one array job, tasks 1..n
    # (ids <ArrayJobId>_1 .. _n). The plugin gives every task the comment of the first one (its wildcards).
    array = by_rule["preprocess_ct"]
    assert all("ArrayJobId" in job for job in array), f"preprocess_ct did not go as an array job: {array}"
    assert len({job["ArrayJobId"] for job in array}) == 1
    tasks = range(1, expected["preprocess_ct"] + 1)
    assert sorted(job["Id"] for job in array) == sorted(f"{array[0]['ArrayJobId']}_{i}" for i in tasks)
    for rule in set(by_rule) - {"preprocess_ct"}:
        assert all("ArrayJobId" not in job for job in by_rule[rule]), rule


def planned_resources(output: str) -> dict[str, str]:
    """Resources of each rule in a dry run's job listing."""
    found = {}
    for rule, resources in re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", output, re.M):
        found[rule] = dict(item.split("=", 1) for item in resources.split(", "))
    return found


def test_slurm_profile_sends_stages_to_their_partitions_with_the_account_from_the_environment(cluster, tmp_path):
    env = {"SG_SLURM_ACCOUNT": "lab42", "SG_CPU_PARTITION": "short", "SG_GPU_PARTITION": "a100"}
    args = ["--workflow-profile", str(REPO / "profiles" / "slurm"), "-n", "all"]
    resources = planned_resources(dry_run(tmp_path, *args, env=env))
    for rule in ("autoencoder", "embed", "pretrain", "finetune"):
        assert resources[rule]["slurm_partition"] == "a100" and resources[rule]["gpu"] == "1", rule
        assert int(resources[rule]["cpus_per_gpu"]) >= 4
    for rule in ("synthetic_ct", "preprocess_ct", "plan", "patches", "task_data", "tables"):
        assert resources[rule]["slurm_partition"] == "short" and "gpu" not in resources[rule], rule
    assert {r["slurm_account"] for r in resources.values()} == {"lab42"}
    unset = planned_resources(dry_run(tmp_path, *args))
    assert not any("slurm_account" in r or "slurm_partition" in r for r in unset.values())


def dry_run(workdir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Output of `snakemake -n` with the SLURM executor (which needs SLURM's commands: the cluster fixture has them)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SG_"))}
    return snakemake(workdir, *args, env={**clean, **(env or {})}).stdout


# --- the two runs --------------------------------------------------------------------------------------------------


class Run:
    def __init__(self, workdir: Path, output: str, seconds: float):
        self.workdir, self.output, self.seconds = workdir, output, seconds
        self.planned = planned_jobs(self.output)
        self.uuid = (re.search(r"SLURM run ID: (\S+)", self.output) or [None, None])[1]
        self.jobs: list[dict] = []


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a run's output (empty where the run stopped before it)."""
    table = output.split("Job stats:", 1)[-1] if "Job stats:" in output else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M) if m[1] != "total"}


def start_snakemake(workdir: Path, *args: str, env: dict[str, str]) -> tuple[subprocess.Popen, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir.parent / f"{workdir.name}.log", "w") as log:
        process = subprocess.Popen(
            [*SNAKEMAKE, "-d", str(workdir), *args], stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env
        )
    return process, time.monotonic()


def finish_snakemake(started: tuple[subprocess.Popen, float], workdir: Path, diagnose=lambda: "") -> Run:
    """Wait for a run started by start_snakemake; on failure (or 30 min) raise with its output and SLURM logs."""
    process, start = started
    try:
        process.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if process.poll() is None:  # SIGINT: Snakemake cancels its SLURM jobs (scancel) before it exits
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    output = (workdir.parent / f"{workdir.name}.log").read_text(errors="replace")
    run = Run(workdir, output, time.monotonic() - start)
    if process.returncode:
        logs = "\n".join(f"--- {p}:\n{p.read_text(errors='replace')[-3000:]}" for p in slurm_logs(workdir))
        raise AssertionError(
            f"snakemake in {workdir} failed ({process.returncode}):\n{output[-20000:]}\n{logs}\n{diagnose()}"
        )
    return run


def slurm_logs(workdir: Path) -> list[Path]:
    return sorted((workdir / ".snakemake/slurm_logs").rglob("*.log"))


def slurm_profile(cluster: SlurmCluster, folder: Path) -> Path:
    """The project's SLURM profile with what this test cluster needs, as one workflow profile in `folder`.

    It cannot be the project's profile plus a --profile overlay: Snakemake reads both, but of a key that both set the
    workflow profile's value wins as a whole (set-resources is one key), and the test has to change set-resources:
    the profile asks for cpus_per_gpu: 8 and up to 64 GB per job, more than a node with this machine's CPUs and
    memory has, so sbatch refuses ("Requested node configuration is not available"). So the merged profile keeps every
    key and YTE expression of the project's profile, wraps each resource mapping in a helper `fit` (evaluated by YTE,
    so partitions still come from SG_*_PARTITION) that caps cpus_per_task/cpus_per_gpu at the threads the rules get
    here and mem_mb at a quarter of the node's memory, and adds what the project leaves to each site: the status
    command, no account, the job count, and SLURM logs kept for inspection."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    caps = {"cpus_per_task": MAX_THREADS, "cpus_per_gpu": MAX_THREADS, "mem_mb": max(1000, cluster.memory_mb // 4)}

    def capped(resources: dict) -> dict:
        return {k: min(v, caps[k]) if k in caps and isinstance(v, int) else v for k, v in resources.items()}

    def fit(value):
        return f"?fit({value[1:]})" if isinstance(value, str) and value.startswith("?") else capped(value)

    profile.setdefault("__definitions__", []).extend(
        [
            f"test_caps = {caps!r}",
            "def fit(resources): return {k: min(v, test_caps[k]) if k in test_caps and isinstance(v, int) else v "
            "for k, v in resources.items()}",
        ]
    )
    profile["set-resources"] = {rule: fit(value) for rule, value in profile.get("set-resources", {}).items()}
    if "default-resources" in profile:
        profile["default-resources"] = fit(profile["default-resources"])
    profile.update(
        {
            "slurm-status-command": "squeue",  # no slurmdbd here, so no sacct; MinJobAge keeps finished jobs in squeue
            "slurm-no-account": True,
            "slurm-init-seconds-before-status-checks": 2,  # a test, not a cluster to spare: poll early
            "slurm-keep-successful-logs": True,
            "max-threads": MAX_THREADS,
            "jobs": 4,
            "latency-wait": 5,
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """pretrain_3d of a tiny configuration once through SLURM with the project's profile, once locally."""
    root = tmp_path_factory.mktemp("slurm")
    config = copy.deepcopy(TINY)
    config["pretrain"]["methods"] = METHODS
    configfile = write_config(root / "tiny.yaml", config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SG_"))}
    profile = slurm_profile(cluster, root / "profile")
    # The local run goes alongside: the SLURM run mostly waits (job start-up, status polls).
    local_args = ["--cores", "2", "--max-threads", str(MAX_THREADS)]
    local_started = start_snakemake(root / "local", "--configfile", configfile, *local_args, "pretrain_3d", env=env)
    try:
        slurm_env = {**env, "SG_CPU_PARTITION": "cpu", "SG_GPU_PARTITION": "gpu"}
        slurm_args = ["--workflow-profile", str(profile)]
        started = start_snakemake(
            root / "on_slurm", "--configfile", configfile, *slurm_args, "pretrain_3d", env=slurm_env
        )
        slurm = finish_snakemake(started, root / "on_slurm", diagnose=lambda: diagnose(cluster))
        slurm.jobs = [job for job in cluster.jobs() if job["JobName"] == slurm.uuid]
    finally:
        local = finish_snakemake(local_started, root / "local")
    print(f"\nSLURM run {slurm.seconds:.0f} s (a local run alongside); its SLURM jobs:")
    for job in slurm.jobs:
        print(" ", *(f"{k}={job.get(k)}" for k in SHOWN))
    return {"slurm": slurm, "local": local}


def diagnose(cluster: SlurmCluster) -> str:
    """The jobs SLURM knows (pending ones with their reason) and the daemons' logs, for a failure message."""
    jobs = "\n".join(" ".join(f"{k}={job.get(k)}" for k in ("JobName", *SHOWN)) for job in cluster.jobs())
    return f"--- SLURM jobs:\n{jobs}\n{cluster.logs(20)}"


def assert_state_dicts_equal(a: Path, b: Path) -> None:
    import torch

    first, second = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
    if "state_dict" in first:
        first, second = first["state_dict"], second["state_dict"]
    assert first.keys() == second.keys(), a
    for key in first:
        assert torch.equal(first[key], second[key]), f"{a}: {key} differs"


def assert_h5_equal(a: Path, b: Path) -> None:
    import h5py
    import numpy as np

    with h5py.File(a) as first, h5py.File(b) as second:
        names: list[str] = []
        first.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        others: list[str] = []
        second.visititems(lambda name, item: others.append(name) if isinstance(item, h5py.Dataset) else None)
        assert names == others, a
        for name in names:
            assert np.array_equal(first[name][()], second[name][()]), f"{a}: {name} differs"
