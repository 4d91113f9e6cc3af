"""The Snakemake workflow end to end on a tiny synthetic configuration, as a user runs it."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml
from conftest import REPO

from semantic_genesis.methods import METHODS
from semantic_genesis.networks.genesis import load_pretrained
from semantic_genesis.preprocess.ct import PreprocessedCT
from semantic_genesis.preprocess.cxr import PreprocessedCXR

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]

# The tiny synthetic configuration (also CI's and benchmarks/gpu_check.sh's).
TINY = yaml.safe_load((REPO / ".test" / "config" / "config.yaml").read_text())
TARGETS = ("preprocess_3d", "preprocess_2d", "discovery_3d", "discovery_2d", "pretrain_3d", "pretrain_2d", "all")
TASKS_3D, TASKS_2D, RUNS = ("ncc", "ncs", "lcs", "bms"), ("dxc", "pxs"), 2
FINETUNED = ("models_genesis", "semantic_genesis")  # pretraining methods the tiny config fine-tunes
INITS = len(FINETUNED) + 1  # and scratch


def snakemake(
    workdir: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Snakemake on the project's Snakefile in workdir (env: the whole environment, default this process's)."""
    result = subprocess.run(
        [*SNAKEMAKE, "-d", str(workdir), *args], capture_output=True, text=True, cwd=workdir, env=env
    )
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
    snakemake(root, "--configfile", config, "--cores", "2", *TARGETS)
    return root


def test_preprocess_targets_build_every_artifact(workdir):
    scans = pd.read_csv(workdir / "results/ct/scans.tsv", sep="\t")
    assert len(scans) == 6 and (scans.status == "ok").all()
    assert dict(scans.groupby("split").size()) == {"train": 4, "val": 1, "test": 1}
    for subset in ("subset0", "subset1", "subset2", "subset3"):
        with PreprocessedCT(workdir / f"results/ct/preprocessed/{subset}.h5") as store:
            ids = set(scans.id[scans.subset == subset])
            assert set(store.ids) == ids
            for sid in ids:
                volume = store.volume(sid)
                assert volume.min() >= 0 and volume.max() <= 1 and volume.shape[1:] == (128, 128)
                assert store.thumbnail(sid).shape == (8, 16, 16)
    images = pd.read_csv(workdir / "results/cxr/images.tsv", sep="\t")
    assert (images.status == "ok").all() and set(images.split) <= {"train", "val", "test"}
    with PreprocessedCXR(workdir / "results/cxr/images.h5") as store:
        assert len(store) == len(images) and store.image(0).shape == (64, 64)
    for name in ("montage_ct.png", "montage_cxr.png"):
        assert (workdir / "results/synthetic" / name).stat().st_size > 10_000
    logs = list((workdir / "results/logs").rglob("*.log"))
    assert {p.stem for p in logs} >= {"synthetic_ct", "synthetic_cxr", "subset0", "ct_manifest", "0", "cxr_manifest"}
    assert "usable" in (workdir / "results/logs/preprocess_ct/subset0.log").read_text()
    assert (workdir / "results/benchmarks/preprocess_ct/subset0.tsv").exists()


def test_job_times_sums_the_benchmark_files(workdir):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "job_times.py"), str(workdir / "results")],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1] for line in done.stdout.splitlines()[3:]}
    assert rows["preprocess_ct"] == "4" and rows["ct_manifest"] == "1" and rows["synthetic_ct"] == "1"
    seconds = sum(pd.read_csv(p, sep="\t").s.sum() for p in (workdir / "results/benchmarks").rglob("*.tsv"))
    assert f"{seconds / 60:.1f} job-minutes" in done.stdout.splitlines()[0]


def test_second_run_does_nothing(workdir):
    result = snakemake(workdir, "--configfile", str(workdir / "tiny.yaml"), "-n", *TARGETS)
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_the_hu_window_reruns_only_ct_preprocessing(workdir, tmp_path):
    changed = yaml.safe_load(yaml.safe_dump(TINY))
    changed["preprocess"]["ct"]["hu_window"] = [-1000, 400]
    config = write_config(tmp_path / "changed.yaml", changed)
    result = snakemake(workdir, "--configfile", config, "-n", *TARGETS)
    planned = planned_jobs(result.stdout + result.stderr)
    assert planned["preprocess_ct"] == 4 and planned["ct_manifest"] == 1 and planned["autoencoder"] == 1
    assert "synthetic_ct" not in planned and "preprocess_cxr" not in planned


def test_discovery_builds_pseudo_labelled_patches(workdir):
    import h5py

    plan = pd.read_csv(workdir / "results/ct/discovery/classes.tsv", sep="\t", dtype={"reference": str})
    assert sorted(plan["class"].unique()) == [0, 1] and plan.reference.nunique() == 1  # paper mode
    assert set(plan.neighbour[plan.split == "train"]).isdisjoint(plan.neighbour[plan.split == "val"])
    with h5py.File(workdir / "results/ct/discovery/patches.h5") as h5:
        assert h5["train/patches"].shape == (2 * 2 * 3, 8, 16, 16)  # classes x k x (1 + 2 multi-resolution)
        assert h5["val/patches"].shape == (2 * 1, 8, 16, 16)
        assert sorted(set(h5["train/labels"][()])) == [0, 1]
    with h5py.File(workdir / "results/cxr/discovery/patches.h5") as h5:
        assert h5["train/patches"].shape == (2 * 3, 32, 32) and h5["val/patches"].shape == (2 * 1, 32, 32)
    names = ["model.pt", "history.csv", "loss.png", "reconstructions.png"]
    for kind in ("ct", "cxr"):
        for name in [f"autoencoder/{n}" for n in names] + ["latents.h5", "latents.png", "patches.png"]:
            assert (workdir / f"results/{kind}/discovery" / name).exists(), (kind, name)


def test_changing_the_class_count_reruns_only_plan_and_patches(workdir, tmp_path):
    changed = yaml.safe_load(yaml.safe_dump(TINY))
    changed["discovery"]["ct"]["classes"] = 3
    config = write_config(tmp_path / "changed.yaml", changed)
    result = snakemake(workdir, "--configfile", config, "-n", *TARGETS)
    planned = planned_jobs(result.stdout + result.stderr)
    # models_genesis trains on random cubes here, which do not depend on the classes: it is not redone.
    pretraining = {"pretrain": len(METHODS) - 1, "transform_gallery": 1, "pretrain_3d": 1}
    # Every 3D fine-tuning run from those weights follows; scratch runs, task data and 2D do not.
    downstream = {"finetune": len(TASKS_3D) * (len(FINETUNED) - 1) * RUNS, "tables": 1, "all": 1}
    assert planned == {
        "plan": 1,
        "patches": 1,
        "discovery_3d": 1,
        **pretraining,
        **downstream,
        "total": planned["total"],
    }
    assert planned["total"] == sum(v for k, v in planned.items() if k != "total")


def test_finished_runs_leave_no_checkpoint(workdir):
    # A rerun that Snakemake starts after any change must train afresh, so nothing remains to be resumed.
    assert not list((workdir / "results").rglob("checkpoint.pt"))
    assert not list((workdir / "results").rglob(".*partial*"))


def test_pretraining_builds_every_method_of_both_kinds(workdir):
    for kind, dims in (("ct", 3), ("cxr", 2)):
        folder = workdir / f"results/{kind}/pretrain"
        assert (folder / "transforms.png").stat().st_size > 10_000
        for method in METHODS:
            history = pd.read_csv(folder / method / "history.csv")
            assert list(history.epoch) == [1, 2] and history.val_loss.notna().all()
            architecture = json.loads((folder / method / "architecture.json").read_text())
            assert architecture["dims"] == dims and architecture["extra"]["method"] == method
            encoder = load_pretrained(folder / method, part="encoder")
            assert encoder.out_channels == (16 if dims == 3 else 8) * 2
            assert (workdir / f"results/logs/pretrain/{kind}/{method}.log").read_text().count("epoch") >= 2
            random = kind == "ct" and method == "models_genesis"  # the tiny config's override
            settings = architecture["extra"]["settings"]
            assert (settings["data"], settings["optimizer"]) == (
                ("random_cubes", "sgd") if random else ("patches", "adam")
            )
            assert architecture["extra"]["patches"].endswith("random_cubes.h5" if random else "patches.h5")
    with h5py.File(workdir / "results/ct/pretrain/random_cubes.h5") as h5:
        assert h5["train/patches"].shape[1:] == tuple(reversed(TINY["discovery"]["ct"]["crop_size"]))
        assert 0 < len(h5["train/patches"]) <= 4 * len(set(h5["train/meta/id"].asstr()[()]))
        assert (h5["train/labels"][()] == -1).all()


def test_a_pretraining_job_with_two_gpus_trains_on_two_processes(workdir, tmp_path):
    # Two visible devices (none is a real GPU here): the local profile allows gpu=2, the job claims both and trains
    # as two torchrun processes, which fall back to gloo on the CPU. A copy, so the other tests keep their workdir.
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True)
    target = "results/ct/pretrain/models_genesis/weights.pt"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}
    arguments = [target, "--configfile", str(copy / "tiny.yaml"), "--cores", "2", "--forcerun", "pretrain"]
    snakemake(copy, *arguments, "--set-resources", "pretrain:gpu=2", env=env)
    log = (copy / "results/logs/pretrain/ct/models_genesis.log").read_text()
    assert "using GPU 0, 1" in log and "2 processes sharing batches" in log
    assert "BUT PYTORCH SEES NO CUDA DEVICE" in log  # the devices are fake: said loudly, not hidden
    assert log.count(f"epoch {TINY['pretrain']['ct']['max_epochs']}/") == 1  # rank 0 alone logs
    assert "resuming" not in log and not (copy / target).with_name("checkpoint.pt").exists()
    history = pd.read_csv(copy / "results/ct/pretrain/models_genesis/history.csv")
    assert len(history) == TINY["pretrain"]["ct"]["max_epochs"]


def test_a_pretraining_setting_reruns_only_that_pretraining(workdir, tmp_path):
    changed = yaml.safe_load(yaml.safe_dump(TINY))
    changed["pretrain"]["ct"]["lr"] = 0.002
    config = write_config(tmp_path / "changed.yaml", changed)
    result = snakemake(workdir, "--configfile", config, "-n", *TARGETS)
    planned = planned_jobs(result.stdout + result.stderr)
    finetuning = len(TASKS_3D) * len(FINETUNED) * RUNS
    # models_genesis keeps the lr of its method_overrides: one pretraining fewer.
    expected = {"pretrain": len(METHODS) - 1, "pretrain_3d": 1, "finetune": finetuning - len(TASKS_3D) * RUNS}
    expected |= {"tables": 1, "all": 1}
    assert planned == {**expected, "total": sum(expected.values())}
    # Worker processes choose hardware, not results: changing them reruns nothing.
    changed["pretrain"]["ct"]["lr"] = TINY["pretrain"]["ct"].get("lr", 0.001)
    changed["pretrain"]["workers"] = 1
    result = snakemake(workdir, "--configfile", write_config(tmp_path / "workers.yaml", changed), "-n", *TARGETS)
    assert "Nothing to be done" in result.stdout + result.stderr


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
    snakefmt = [sys.executable, "-m", "snakefmt", "--check", "-l", "120", "Snakefile", "rules"]
    result = subprocess.run(snakefmt, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, f"snakefmt would reformat (run make lint):\n{result.stderr}"


def test_the_workflow_runs_as_a_module_from_another_folder(tmp_path):
    """The README's module snippet, as written, in a folder of its own: only the changed keys in its config."""
    readme = (REPO / "README.md").read_text()
    snippet = readme.split("**As a module of your own workflow**", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "Snakefile").write_text(snippet.replace("/path/to/semantic-genesis", str(REPO)))
    (tmp_path / "config").mkdir()
    write_config(tmp_path / "config" / "config.yaml", TINY)
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "preprocess_2d"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    with PreprocessedCXR(tmp_path / "results/cxr/images.h5") as store:
        assert len(store) > 0 and store.image(0).shape == (64, 64)
    assert (tmp_path / "results/logs/preprocess_cxr/0.log").exists() and not (REPO / "results" / "cxr").exists()


def test_real_data_folders_with_bad_files(tmp_path):
    """User data in LUNA16/ChestX-ray14 layout: good files are processed, bad ones excluded and named in the logs."""
    import shutil

    import numpy as np
    from conftest import DATA, chest_like, write_png, write_volume

    ct = tmp_path / "ct"
    for subset in ("subset0", "subset1"):
        (ct / subset).mkdir(parents=True)
    shutil.copy(DATA / "CTChest4.nrrd", ct / "subset0" / "CTChest4.nrrd")
    write_volume(ct / "subset0" / "trunc.mhd", chest_like((30, 48, 48)))
    (ct / "subset0" / "trunc.raw").write_bytes(b"\0" * 64)
    write_volume(ct / "subset1" / "thin.nii.gz", chest_like((8, 48, 48)))
    # A header whose data lies in another folder: that file is an input of the subset's job.
    write_volume(ct / "raw" / "apart.mhd", chest_like((30, 48, 48)))
    header = (ct / "raw" / "apart.mhd").read_text().replace("= apart.raw", "= ../raw/apart.raw")
    (ct / "subset1" / "apart.mhd").write_text(header)
    (ct / "raw" / "apart.mhd").unlink()
    cxr = tmp_path / "cxr"
    write_png(cxr / "images" / "00000001_000.png", np.linspace(20, 200, 80 * 80).reshape(80, 80).astype(np.uint8))
    shutil.copy(DATA / "RG1_UNCR.dcm", cxr / "images" / "00000002_000.dcm")
    (cxr / "images" / "00000003_000.png").write_bytes(b"\x89PNG broken")
    rows = [f"0000000{i}_000.{'dcm' if i == 2 else 'png'},No Finding,0,{i},50,M,PA,80,80,0.2,0.2," for i in (1, 2, 3)]
    (cxr / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n" + "\n".join(rows) + "\n"
    )
    (cxr / "train_val_list.txt").write_text("00000001_000.png\n00000002_000.dcm\n00000003_000.png\n")
    (cxr / "test_list.txt").write_text("")
    config = {
        "data": {"ct_root": str(ct), "cxr_root": str(cxr)},
        "preprocess": {
            "ct": {
                "splits": {"train": ["subset0"], "val": ["subset1", "subset5"], "test": []},
                "min_slices": 20,
                "thumbnail_size": [16, 16, 8],
                "chunk": [32, 32, 16],
            },
            "cxr": {"size": 32, "val_fraction": 0.0},
        },
    }
    result = snakemake(
        tmp_path,
        "--configfile",
        write_config(tmp_path / "c.yaml", config),
        "--cores",
        "2",
        "preprocess_3d",
        "preprocess_2d",
    )
    assert "configured CT subset 'subset5' has no data" in result.stderr
    scans = pd.read_csv(tmp_path / "results/ct/scans.tsv", sep="\t", keep_default_na=False).set_index("id")
    assert scans.status.to_dict() == {"CTChest4": "ok", "trunc": "excluded", "apart": "ok", "thin": "tasks_only"}
    assert scans.loc["CTChest4", "shape"] == "128x128x34"
    assert "truncated" in scans.loc["trunc", "reason"] and "8 slices" in scans.loc["thin", "reason"]
    log = (tmp_path / "results/logs/preprocess_ct/subset0.log").read_text()
    assert "excluded" in log and "trunc.raw" in log
    images = pd.read_csv(tmp_path / "results/cxr/images.tsv", sep="\t", keep_default_na=False)
    assert images.status.tolist() == ["ok", "ok", "excluded"]
    assert not (tmp_path / "results/synthetic").exists(), "no synthetic data when real data is configured"
    raw = bytearray((ct / "raw" / "apart.raw").read_bytes())
    raw[100] ^= 1  # the data file changes (one voxel by 1 HU), its header does not: that subset reruns
    (ct / "raw" / "apart.raw").write_bytes(raw)
    dry = snakemake(tmp_path, "preprocess_3d", "--configfile", str(tmp_path / "c.yaml"), "-n").stdout
    assert planned_jobs(dry).get("preprocess_ct") == 1 and "subset=subset1" in dry
    # Only one training scan survives: the default discovery.ct.k = 8 fails within seconds of the manifest, before
    # the autoencoder trains, naming the key, the numbers and the fix.
    result = snakemake(tmp_path, "--configfile", str(tmp_path / "c.yaml"), "--cores", "2", "discovery_3d", check=False)
    assert result.returncode != 0
    assert "discovery.ct.k = 8: self-discovery needs 8 usable train scans, only 1 are usable" in result.stderr
    assert "discovery.ct.val_neighbours = 3" in result.stderr and "scans.tsv" in result.stderr
    log = (tmp_path / "results/logs/autoencoder/ct.log").read_text()
    assert "discovery.ct.k = 8" in log and "epoch" not in log, "the autoencoder stops before training"
    assert not (tmp_path / "results/ct/discovery/autoencoder/model.pt").exists()
    # Synthetic nodule cubes need the synthetic phantoms, which real CT replaces: asking for NCS says what to set.
    config["finetune"] = {"tasks": ["ncs"]}
    result = snakemake(
        tmp_path, "--configfile", write_config(tmp_path / "ncs.yaml", config), "-n", "finetune_3d", check=False
    )
    assert result.returncode != 0 and "data.ncs_root is not set" in result.stdout + result.stderr


def test_strict_mode_fails_the_run_without_artifacts(tmp_path):
    from conftest import chest_like, write_volume

    ct = tmp_path / "ct"
    write_volume(ct / "subset0" / "good.nrrd", chest_like((30, 48, 48)))
    write_volume(ct / "subset0" / "thin.nrrd", chest_like((8, 48, 48)))  # kept for the tasks: not a failure
    (write_volume(ct / "subset0" / "trunc.mhd", chest_like((30, 48, 48))).with_suffix(".raw")).write_bytes(b"\0" * 99)
    config = {
        "data": {"ct_root": str(ct)},
        "preprocess": {
            "strict": True,
            "ct": {
                "splits": {"train": ["subset0"], "val": [], "test": []},
                "min_slices": 20,
                "thumbnail_size": [8, 8, 8],
                "chunk": [16, 16, 8],
            },
        },
    }
    result = snakemake(
        tmp_path,
        "--configfile",
        write_config(tmp_path / "c.yaml", config),
        "--cores",
        "1",
        "preprocess_3d",
        check=False,
    )
    assert result.returncode != 0
    assert "trunc.mhd: " in result.stderr and "(preprocess.strict is true)" in result.stderr
    assert not list((tmp_path / "results/ct").rglob("*.h5")) and not (tmp_path / "results/ct/scans.tsv").exists()


def test_finetuning_covers_every_task_method_and_run(workdir):
    for task in (*TASKS_3D, *TASKS_2D):
        runs = sorted((workdir / f"results/finetune/{task}").glob("*/labels100/run*/metrics.json"))
        assert len(runs) == INITS * RUNS, task
        for path in runs:
            metrics = json.loads(path.read_text())
            assert metrics["task"] == task and metrics["synthetic"] is True
            assert metrics["value"] is None or 0 <= metrics["value"] <= 1
            assert (path.parent / "predictions.h5").exists() and (path.parent / "curves.png").exists()
        seeds = {json.loads(p.read_text())["seed"] for p in runs}
        assert seeds == set(range(RUNS)), "runs differ by their seed"
        assert (workdir / f"results/tasks/{task}/montage.png").stat().st_size > 5_000


def test_tables_report_synthetic_results_beside_the_paper(workdir):
    tables = workdir / "results/tables"
    comparison = (tables / "comparison_3d.md").read_text()
    assert "SYNTHETIC" in comparison and "98.46" in comparison  # the paper's Semantic Genesis NCC AUC
    assert "NiftyNet" in comparison and "†" in comparison  # published-only rows, marked
    assert "Models Genesis: random cubes, SGD (lr 0.01, momentum 0.9, batch 2)" in comparison
    assert "Semantic Genesis: self-discovered patches, Adam (lr 0.001, batch 2)" in comparison
    frame = pd.read_csv(tables / "comparison_3d.csv")
    assert len(frame) >= INITS
    assert "\\begin{tabular}" in (tables / "adding_semantics.tex").read_text()
    runs = pd.read_csv(tables / "runs.csv")
    assert set(runs.task) <= {*TASKS_3D, *TASKS_2D} and runs.value.between(0, 100).all()
    for name in ["adding_semantics.png", *(f"curves_{t}.png" for t in (*TASKS_3D, *TASKS_2D))]:
        assert (tables / name).stat().st_size > 10_000, name


def test_a_finetuning_setting_reruns_only_finetuning_and_tables(workdir, tmp_path):
    changed = yaml.safe_load(yaml.safe_dump(TINY))
    changed["finetune"]["ncc"]["lr"] = 0.002
    result = snakemake(workdir, "--configfile", write_config(tmp_path / "changed.yaml", changed), "-n", *TARGETS)
    expected = {"finetune": INITS * RUNS, "tables": 1, "all": 1}
    assert planned_jobs(result.stdout + result.stderr) == {**expected, "total": sum(expected.values())}


def test_label_fractions_add_their_runs_and_the_label_efficiency_figures(workdir, tmp_path):
    """A second label fraction adds only its own runs (the full-label runs are kept) and the label-efficiency stage."""
    results = tmp_path / "work"
    for name in ("results", ".snakemake"):  # the finished runs and Snakemake's record of how they were made
        shutil.copytree(
            workdir / name, results / name, symlinks=True, ignore=shutil.ignore_patterns("locks", "incomplete")
        )
    changed = yaml.safe_load(yaml.safe_dump(TINY))
    changed["finetune"].update(label_fractions=[0.5, 1.0], tasks=["ncs"])
    config = write_config(tmp_path / "fractions.yaml", changed)
    planned = planned_jobs(snakemake(results, "-n", "label_efficiency", "--configfile", config).stdout)
    assert planned == {"finetune": INITS * RUNS, "label_efficiency": 1, "total": INITS * RUNS + 1}
    snakemake(results, "--cores", "2", "label_efficiency", "--configfile", config)
    half = json.loads((results / "results/finetune/ncs/scratch/labels50/run0/metrics.json").read_text())
    full = json.loads((results / "results/finetune/ncs/scratch/labels100/run0/metrics.json").read_text())
    assert half["label_fraction"] == 0.5 and half["n_train"] == round(full["n_train"] / 2)
    table = pd.read_csv(results / "results/tables/label_efficiency.csv")
    assert set(table["method"]) == set(FINETUNED) and set(table["task"]) == {"ncs"}
    assert (table["target_labels"] == full["n_train"]).all()
    assert (results / "results/tables/label_efficiency_ncs.png").stat().st_size > 10_000
    assert "SYNTHETIC" in (results / "results/tables/label_efficiency.md").read_text()


def test_report_gathers_every_stage(workdir):
    snakemake(workdir, "--configfile", str(workdir / "tiny.yaml"), "--report", "report.zip")
    import zipfile

    names = zipfile.ZipFile(workdir / "report.zip").namelist()
    for expected in ("comparison_3d", "adding_semantics.png", "transforms.png", "patches.png", "montage.png"):
        assert any(expected in name for name in names), expected


def test_every_artifact_records_its_data_sources(workdir):
    from semantic_genesis.runtime.provenance import file_digest

    manifests = {"ct": workdir / "results/ct/scans.tsv", "cxr": workdir / "results/cxr/images.tsv"}
    for kind, manifest in manifests.items():
        architecture = json.loads((workdir / f"results/{kind}/pretrain/semantic_genesis/architecture.json").read_text())
        (record,) = architecture["extra"]["data"]
        assert record["name"] == kind and record["synthetic"] is True
        assert record["root"].startswith("results/synthetic/") and record["manifest_sha256"] == file_digest(manifest)
    metrics = json.loads((workdir / "results/finetune/ncs/semantic_genesis/labels100/run0/metrics.json").read_text())
    task, scans = metrics["data"]
    assert task["name"] == "ncs" and task["manifest_sha256"] == file_digest(workdir / "results/tasks/ncs/index.tsv")
    assert scans["name"] == "ct" and metrics["synthetic"] is True
    scratch = json.loads((workdir / "results/finetune/ncs/scratch/labels100/run0/metrics.json").read_text())
    assert [r["name"] for r in scratch["data"]] == ["ncs"]


def workflow_copy(root: Path) -> Path:
    """A copy of the workflow's files (Snakefile, rules, package, config, profiles), to edit its code."""
    copy = root / "workflow-copy"
    copy.mkdir()
    for name in ("Snakefile", "rules", "workflow", "config", "profiles", "envs", "report"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, copy / name)
    return copy


def test_editing_a_module_reruns_the_rules_that_import_it_and_only_those(workdir, tmp_path):
    copy = workflow_copy(tmp_path)
    snakefile = str(copy / "Snakefile")
    # Targets before --configfile, which takes every following word.
    arguments = [sys.executable, "-m", "snakemake", "-s", snakefile, "-d", str(workdir), "-n", *TARGETS]
    arguments += ["--configfile", str(workdir / "tiny.yaml")]

    def planned():
        result = subprocess.run(arguments, capture_output=True, text=True, cwd=workdir)
        assert result.returncode == 0, result.stdout + result.stderr
        output = result.stdout + result.stderr
        return {} if "Nothing to be done" in output else planned_jobs(output)

    assert planned() == {}, "the copy's code is the same code"
    package = copy / "workflow" / "semantic_genesis"
    # pretrain/distributed.py is imported by pretrain/trainer.py, which the pretrain rule's script imports.
    with open(package / "pretrain" / "distributed.py", "a") as handle:
        handle.write("# an edit\n")
    jobs = planned()
    assert jobs["pretrain"] == 2 * len(METHODS) and jobs["finetune"] == len(FINETUNED) * RUNS * 6
    assert jobs["transform_gallery"] == 2  # its function lives in pretrain/trainer.py too
    assert not {"autoencoder", "embed", "plan", "patches", "preprocess_ct", "task_data"} & set(jobs)
    (package / "pretrain" / "distributed.py").write_text(
        (REPO / "workflow/semantic_genesis/pretrain/distributed.py").read_text()
    )
    with open(package / "tasks" / "pxs.py", "a") as handle:
        handle.write("# an edit no pretraining job imports\n")
    jobs = planned()
    assert "pretrain" not in jobs and "autoencoder" not in jobs and jobs["task_data"] == 6


@pytest.fixture(scope="module")
def user_roots(workdir, tmp_path_factory):
    """Data folders in the public layouts, outside any workflow folder: copies of the synthetic sets."""
    root = tmp_path_factory.mktemp("user-data")
    names = {"ct": "luna16", "cxr": "chestxray14", "ncs": "ncs", "lits": "lits", "brats": "brats", "siim": "siim"}
    for key, folder in names.items():
        shutil.copytree(workdir / "results/synthetic" / folder, root / key)
    return root


def real_config(user_roots: Path, **data) -> dict:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["data"] = {f"{key}_root": str(user_roots / key) for key in ("ct", "cxr", "ncs", "lits", "brats", "siim")}
    config["data"].update(data)
    return config


def snapshot(folder: Path) -> dict:
    """Every file under a folder with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def planned_paths(dry_run_output: str) -> list[str]:
    """Every output, log and benchmark path of every job a dry run plans."""
    paths = []
    for match in re.finditer(r"^\s+(output|log|benchmark): (.+)$", dry_run_output, flags=re.M):
        paths += match[2].split(", ")
    return paths


def test_real_data_roots_are_never_written(user_roots, tmp_path):
    config = write_config(tmp_path / "real.yaml", real_config(user_roots))
    before = snapshot(user_roots)
    for target in (*TARGETS, "finetune_3d", "finetune_2d", "tables"):
        result = snakemake(tmp_path, "--configfile", config, "-n", target)
        output = result.stdout + result.stderr
        paths = planned_paths(output)
        assert paths, target
        outside = [p for p in paths if not p.startswith("results/") or "results/synthetic" in p]
        assert not outside, (target, outside)
        assert not re.search(r"^rule (synthetic|montage)_", output, flags=re.M), target
    # A real run: preprocessing of both kinds and every task's data file.
    tasks = [f"results/tasks/{task}/data.h5" for task in (*TASKS_3D, *TASKS_2D)]
    snakemake(tmp_path, "--configfile", config, "--cores", "2", "preprocess_3d", "preprocess_2d", *tasks)
    assert snapshot(user_roots) == before, "the data roots were modified"
    assert not (tmp_path / "results/synthetic").exists()
    from semantic_genesis.tasks.taskdata import TaskData

    for task in (*TASKS_3D, *TASKS_2D):
        with TaskData(tmp_path / f"results/tasks/{task}/data.h5") as data:
            assert data.synthetic is False, task


def test_a_missing_root_or_file_is_named_before_any_job(user_roots, tmp_path):
    def dry_run(config, target):
        result = snakemake(
            tmp_path, "--configfile", write_config(tmp_path / "c.yaml", config), "-n", target, check=False
        )
        return result.returncode, result.stdout + result.stderr

    # LUNA16's candidate list is a separate download: without it, NCC says which key to set, and plans no phantoms.
    ct = tmp_path / "ct"
    shutil.copytree(user_roots / "ct", ct, ignore=shutil.ignore_patterns("candidates_V2.csv"))
    config = real_config(user_roots, ct_root=str(ct))
    config["finetune"]["tasks"] = ["ncc"]
    code, output = dry_run(config, "finetune_3d")
    assert code != 0 and "data.ct_root" in output and "candidates_V2.csv is missing" in output
    assert "rule task_data (ncc)" in output and "synthetic_ct" not in output
    config["data"]["ncc_candidates"] = str(user_roots / "ct" / "candidates_V2.csv")
    code, output = dry_run(config, "finetune_3d")
    assert code == 0, output
    config = real_config(user_roots, ct_root=str(tmp_path / "luna16-typo"))
    code, output = dry_run(config, "preprocess_2d")
    assert code != 0 and f"data.ct_root: the folder {tmp_path / 'luna16-typo'} does not exist" in output
    # A mistyped radiograph root is an error, not a folder to fill with synthetic radiographs.
    config = real_config(user_roots, cxr_root=str(tmp_path / "chestxray14-typo"))
    code, output = dry_run(config, "preprocess_2d")
    assert code != 0 and f"data.cxr_root: the folder {tmp_path / 'chestxray14-typo'} does not exist" in output
    assert not (tmp_path / "chestxray14-typo").exists()
    # A task root without what its reader needs.
    empty = tmp_path / "lits"
    empty.mkdir()
    config = real_config(user_roots, lits_root=str(empty))
    config["finetune"]["tasks"] = ["lcs"]
    code, output = dry_run(config, "finetune_3d")
    assert code != 0 and "data.lits_root" in output and "volume-*.nii* is missing" in output
    # BMS fold files that are not there stop the run before any job, naming the key.
    config = real_config(user_roots)
    config["finetune"]["tasks"] = ["bms"]
    folds = [str(tmp_path / name) for name in ("fold_1.csv", "fold_3.csv")]
    config.setdefault("tasks", {}).setdefault("bms", {})["folds"] = folds
    code, output = dry_run(config, "finetune_3d")
    assert code != 0 and f"tasks.bms.folds: {tmp_path / 'fold_1.csv'} does not exist" in output
    for name in ("fold_1.csv", "fold_3.csv"):
        (tmp_path / name).write_text("Brats18_A_1\n")
    code, output = dry_run(config, "finetune_3d")
    assert code == 0, output


def test_ncs_test_scans_can_be_kept_out_of_pretraining(tmp_path):
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["preprocess"]["exclude_target_test_from_pretraining"] = True
    path = write_config(tmp_path / "excluded.yaml", config)
    snakemake(tmp_path, "results/ct/scans.tsv", "--configfile", path, "--cores", "2")
    ncs = pd.read_csv(tmp_path / "results/synthetic/ncs/index.csv", dtype=str)
    held = set(ncs.seriesuid[ncs.split == "test"])
    scans = pd.read_csv(tmp_path / "results/ct/scans.tsv", sep="\t", keep_default_na=False).set_index("id")
    assert held and scans.status[list(held)].eq("tasks_only").all()
    assert scans.reason[list(held)].str.contains("NCS test cube").all()
    assert scans.status.drop(index=list(held)).isin(["ok", "excluded"]).all()
    assert (
        "scans named as target-task test cases kept out of pretraining"
        in (tmp_path / "results/logs/ct_manifest.log").read_text()
    )


def test_external_weights_fine_tune_beside_ours_and_reach_the_tables(tmp_path):
    from test_external_weights import their_checkpoint

    from semantic_genesis.networks.external import import_weights
    from semantic_genesis.runtime.provenance import file_digest

    released = tmp_path / "downloads" / "semantic_genesis_chest_ct.pt"
    released.parent.mkdir()
    their_checkpoint(released, w=2, head=True)
    their_checkpoint(tmp_path / "mg.pt", w=2)
    imported = import_weights(tmp_path / "mg.pt", tmp_path / "mg", "auto")
    before = snapshot(tmp_path / "downloads") | snapshot(imported)
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["finetune"] |= {"tasks": ["ncs"], "methods": ["scratch"], "runs": 2}
    config["finetune"]["external"] = {"authors_sg": str(released), "authors_mg": str(imported)}
    snakemake(tmp_path, "tables", "--configfile", write_config(tmp_path / "external.yaml", config), "--cores", "2")
    assert snapshot(tmp_path / "downloads") | snapshot(imported) == before, "the user's files were modified"
    architecture = json.loads((tmp_path / "results/external/authors_sg/architecture.json").read_text())
    assert architecture["extra"]["external"]["format"] == "semantic_genesis"  # told by its keys
    for name in ("authors_sg", "authors_mg"):
        metrics = json.loads((tmp_path / f"results/finetune/ncs/{name}/labels100/run1/metrics.json").read_text())
        assert metrics["method"] == name and "external" in metrics["pretraining"]
    table = (tmp_path / "results/tables/comparison_3d.md").read_text()
    assert "authors\\_sg‡" in table and "authors\\_mg‡" in table and "‡: external weights" in table
    assert file_digest(released) in table and file_digest(tmp_path / "mg.pt") in table
    runs = pd.read_csv(tmp_path / "results/tables/runs.csv")
    assert sorted(runs.method.unique()) == ["authors_mg", "authors_sg", "scratch"]
    config["finetune"]["external"] = {"scratch": str(released)}
    result = snakemake(
        tmp_path, "-n", "tables", "--configfile", write_config(tmp_path / "bad.yaml", config), check=False
    )
    assert result.returncode != 0 and "finetune.external.scratch" in result.stdout + result.stderr
