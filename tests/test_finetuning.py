"""Fine-tuning: every task kind end to end, learning on easy tasks, pretrained weights used, paired label subsets,
reproducibility, clear errors and the degenerate splits."""

import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from semantic_genesis.config import InfeasibleError
from semantic_genesis.finetune import trainer as finetuning
from semantic_genesis.finetune.trainer import FinetuneSettings, build_model, finetune, label_subset
from semantic_genesis.networks.genesis import GenesisNet, NetworkSettings, load_pretrained, save_pretrained
from semantic_genesis.tasks.taskdata import TASKS, TaskData, TaskWriter

SHAPE_3D, SHAPE_2D = (8, 16, 16), (32, 32)
FAST = dict(base_width=4, head_width=16, batch_size=8, num_threads=1, device="cpu")
SIZES = {"train": 40, "val": 12, "test": 24}
DXC_SIZES = {"train": 64, "val": 16, "test": 32}
ARTIFACTS = ("metrics.json", "predictions.h5", "history.csv", "curves.png")


def _ball(shape, rng, radius):
    """Boolean ball of the given radius at a random centre that keeps it inside the shape."""
    grids = np.indices(shape)
    centre = [rng.uniform(radius, n - radius) if n > 2 * radius else n / 2 for n in shape]
    return sum(((g - c) / radius) ** 2 for g, c in zip(grids, centre)) <= 1


def _background(shape, rng):
    return np.clip(0.3 + rng.normal(0, 0.05, shape), 0, 1)


def write_task(path, task, sizes=SIZES, seed=0, synthetic=True):
    """A tiny synthetic task file of the kind of `task` (see the module docstring of each case below); synthetic:
    what the file says of its data (False stands in for a task read from real data)."""
    rng = np.random.default_rng(seed)
    spec = TASKS[task]
    shape = SHAPE_3D if spec.dims == 3 else SHAPE_2D
    with TaskWriter(path, task, shape, synthetic=synthetic, source="test") as writer:
        for split, n in sizes.items():
            for i in range(n):
                image = _background(shape, rng)
                if task == "ncc":  # a bright blob present (label 1) or not
                    target = [i % 2]
                    if target[0]:
                        image[_ball(shape, rng, 2.5)] = 0.9
                elif task == "dxc":  # labels 0 and 1: brighter left / top half; 2: a bright disk; the rest random
                    target = rng.integers(0, 2, 14)
                    target[13] = 0 if split == "test" else target[13]  # a label with one class in the test split
                    half = shape[0] // 2
                    image[:, :half] += 0.3 * target[0]
                    image[:half] += 0.3 * target[1]
                    if target[2]:
                        image[_ball(shape, rng, 7)] = 1.0
                    image = np.clip(image, 0, 1)
                else:  # segmentation: a bright ball and its mask
                    target = _ball(shape, rng, rng.uniform(2.5, 4.5) if spec.dims == 3 else rng.uniform(4, 8))
                    image[target] = np.clip(0.85 + rng.normal(0, 0.05, int(target.sum())), 0, 1)
                writer.add(split, image, np.asarray(target, np.uint8), f"{split}{i}")
    return path


def write_pretrained(folder, dims, base_width=4, seed=123, method="models_genesis", data=()):
    torch.manual_seed(seed)
    model = GenesisNet(NetworkSettings(dims=dims, base_width=base_width))
    # Move the batch-norm statistics away from their defaults, so that loading them is visible too.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
    save_pretrained(model, folder, extra={"method": method, "data": list(data)})
    return folder


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    # Eleven of DXC's labels are noise, so it needs a few more samples to show the three learnable ones.
    sizes = {task: DXC_SIZES if task == "dxc" else SIZES for task in ("ncc", "ncs", "dxc", "pxs")}
    return {task: write_task(root / f"{task}.h5", task, sizes[task]) for task in sizes}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    return {dims: write_pretrained(root / f"{dims}d", dims) for dims in (2, 3)}


def settings(task, **changes):
    return FinetuneSettings(task=task, **{**FAST, **changes})


def read_metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def check_artifacts(folder, result, task, n_test):
    for name in ARTIFACTS:
        assert (folder / name).stat().st_size > 0
    assert read_metrics(folder) == json.loads(json.dumps(result))
    spec = TASKS[task]
    common = {"task", "method", "run", "seed", "metric", "value", "scores", "synthetic", "label_fraction", "n_train"}
    common |= {"n_val", "n_test", "best_epoch", "epochs", "seconds", "pretrained", "settings"}
    assert common <= set(result)
    assert result["metric"] == spec.metric and result["synthetic"] is True and result["n_test"] == n_test
    assert 0 <= result["value"] <= 1 and result["settings"]["task"] == task
    if spec.kind == "classification":
        assert set(result["scores"]["auc_per_label"]) == set(spec.label_names)
        assert result["value"] == result["scores"]["auc"]
    else:
        assert {"iou", "dice", "iou_per_case_mean"} <= set(result["scores"])
        assert result["value"] == result["scores"]["iou"]
    history = pd.read_csv(folder / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_metric", "lr", "seconds"]
    assert len(history) == result["epochs"]
    with h5py.File(folder / "predictions.h5") as h5:
        assert h5.attrs["task"] == task and h5.attrs["method"] == result["method"] and h5.attrs["run"] == result["run"]
        assert h5["scores"].dtype == np.float16 and len(h5["ids"]) == n_test
        target_shape = (len(spec.label_names),) if spec.kind == "classification" else h5["targets"].shape[1:]
        assert h5["scores"].shape == (n_test, *target_shape) == h5["targets"].shape
        scores = h5["scores"][()]
        assert np.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1
    return history


def test_3d_classification_learns_from_scratch(tasks, tmp_path):
    # Batch-norm running statistics lag the first epochs on so few batches: give validation a dozen to settle.
    result = finetune(tasks["ncc"], None, settings("ncc", max_epochs=12, lr=3e-3), tmp_path)
    history = check_artifacts(tmp_path, result, "ncc", SIZES["test"])
    assert result["method"] == "scratch" and result["pretrained"] is None
    assert result["value"] > 0.8, result
    assert history.val_metric.notna().all() and 1 <= result["best_epoch"] <= 12


def test_3d_segmentation_learns_from_a_pretrained_unet(tasks, pretrained, tmp_path):
    run = settings("ncs", method="models_genesis", max_epochs=12, lr=1e-2)
    result = finetune(tasks["ncs"], pretrained[3], run, tmp_path)
    check_artifacts(tmp_path, result, "ncs", SIZES["test"])
    assert result["pretrained"] == str(pretrained[3])
    assert result["value"] > 0.3 and result["scores"]["dice"] > result["value"], result
    assert 0 < result["scores"]["iou_per_case_mean"] <= 1


def test_2d_multilabel_classification_learns_the_learnable_labels(tasks, pretrained, tmp_path):
    run = settings("dxc", method="models_genesis", max_epochs=20, lr=3e-3)
    result = finetune(tasks["dxc"], pretrained[2], run, tmp_path)
    check_artifacts(tmp_path, result, "dxc", DXC_SIZES["test"])
    per_label = result["scores"]["auc_per_label"]
    # Hernia has no positive test case: its AUC is undefined, listed, and left out of the mean.
    assert per_label["Hernia"] is None and result["scores"]["auc_undefined_labels"] == ["Hernia"]
    defined = [v for v in per_label.values() if v is not None]
    assert len(defined) == 13 and result["value"] == pytest.approx(np.mean(defined))
    learnable = [per_label[name] for name in ("Atelectasis", "Cardiomegaly", "Effusion")]
    assert np.mean(learnable) > 0.8, per_label


def test_2d_segmentation_learns_from_scratch(tasks, tmp_path):
    result = finetune(tasks["pxs"], None, settings("pxs", max_epochs=15, lr=1e-2), tmp_path)
    check_artifacts(tmp_path, result, "pxs", SIZES["test"])
    assert result["n_train"] == SIZES["train"] and result["value"] > 0.3, result


@pytest.mark.parametrize("task", ["ncc", "ncs"])
def test_fine_tuning_starts_from_the_pretrained_weights(task, tasks, pretrained, tmp_path):
    part = "encoder" if TASKS[task].kind == "classification" else "unet"
    reference = load_pretrained(pretrained[3], part).state_dict()
    model = build_model(settings(task, method="models_genesis"), pretrained[3])
    start = (model.encoder if part == "encoder" else model).state_dict()
    assert start.keys() == reference.keys() and all(torch.equal(start[k], reference[k]) for k in reference)
    # With no epoch to train, the tested network is that starting point: the predictions show it.
    result = finetune(tasks[task], pretrained[3], settings(task, method="models_genesis", max_epochs=0), tmp_path)
    assert result["epochs"] == 0 and result["best_epoch"] == 0
    model.eval()
    with TaskData(tasks[task]) as data, torch.no_grad():
        output = model(torch.from_numpy(data.images("test")[()].astype(np.float32))[:, None])
    expected = torch.sigmoid(output) if part == "encoder" else output[:, 0]
    with h5py.File(tmp_path / "predictions.h5") as h5:
        np.testing.assert_allclose(h5["scores"][()].astype(np.float32), expected.numpy(), atol=2e-3)


def test_label_subset_is_paired_across_runs_and_methods(tasks, pretrained, tmp_path, monkeypatch):
    picks = label_subset(40, 0.25, label_seed=0)
    assert len(picks) == 10 and np.array_equal(picks, np.sort(picks)) and len(set(picks)) == 10
    assert np.array_equal(picks, label_subset(40, 0.25, label_seed=0))
    assert not np.array_equal(picks, label_subset(40, 0.25, label_seed=1))
    assert set(picks) <= set(label_subset(40, 0.5, label_seed=0))  # smaller fractions nest in larger ones
    assert len(label_subset(40, 0.001, 0)) == 1 and len(label_subset(40, 1.0, 0)) == 40
    seen = []
    original = finetuning.SplitReader.__init__

    def spy(self, data, split, rows=None):
        original(self, data, split, rows)
        if split == "train":
            seen.append(list(self.ids))

    monkeypatch.setattr(finetuning.SplitReader, "__init__", spy)
    for method, folder, run in (("scratch", None, 0), ("scratch", None, 1), ("models_genesis", pretrained[3], 2)):
        run_settings = settings("ncc", method=method, run=run, max_epochs=1, label_fraction=0.25)
        result = finetune(tasks["ncc"], folder, run_settings, tmp_path / f"{method}{run}")
        assert result["n_train"] == 10 and result["label_fraction"] == 0.25
    assert len(seen) == 3 and seen[0] == seen[1] == seen[2] == [f"train{i}" for i in picks]


def test_same_settings_give_identical_results_and_runs_differ(tasks, tmp_path, monkeypatch):
    run = settings("ncs", max_epochs=2, lr=3e-3, base_width=2)
    first = finetune(tasks["ncs"], None, run, tmp_path / "a")
    # Reading batch by batch from the file instead of from memory changes nothing either.
    monkeypatch.setattr(finetuning, "MAX_IN_MEMORY_BYTES", 0)
    again = finetune(tasks["ncs"], None, run, tmp_path / "b")
    other = finetune(tasks["ncs"], None, settings("ncs", max_epochs=2, lr=3e-3, base_width=2, run=1), tmp_path / "c")
    assert first.pop("seconds") > 0 and again.pop("seconds") > 0
    assert first == again
    history_a, history_b = (pd.read_csv(tmp_path / x / "history.csv").drop(columns="seconds") for x in "ab")
    pd.testing.assert_frame_equal(history_a, history_b)
    assert (first["seed"], other["seed"]) == (0, 1) and other["scores"] != first["scores"]


def test_dimension_mismatch_and_method_without_folder_are_clear_errors(tasks, pretrained, tmp_path):
    with pytest.raises(ValueError, match="2D network, but task ncc is 3D"):
        finetune(tasks["ncc"], pretrained[2], settings("ncc", method="models_genesis"), tmp_path)
    with pytest.raises(ValueError, match="needs a pretrained folder"):
        finetune(tasks["ncc"], None, settings("ncc", method="models_genesis"), tmp_path)
    with pytest.raises(ValueError, match="holds task 'ncc'"):
        finetune(tasks["ncc"], None, settings("ncs"), tmp_path)
    with pytest.raises(ValueError, match="task must be one of"):
        FinetuneSettings(task="luna")
    assert not (tmp_path / "metrics.json").exists()


def test_empty_validation_split_monitors_the_training_loss(tmp_path, caplog):
    path = write_task(tmp_path / "ncc.h5", "ncc", sizes={"train": 16, "val": 0, "test": 8})
    with caplog.at_level("WARNING", logger="semantic_genesis"):
        result = finetune(path, None, settings("ncc", max_epochs=2, base_width=2), tmp_path / "out")
    assert "no validation samples" in caplog.text
    history = check_artifacts(tmp_path / "out", result, "ncc", 8)
    assert result["n_val"] == 0 and result["monitored"] == "train_loss" and result["best_epoch"] >= 1
    assert history.val_loss.isna().all() and history.train_loss.notna().all()


def test_settings_from_dict_ignores_unknown_keys_and_maps_the_config_seed():
    run = FinetuneSettings.from_dict({"task": "ncs", "lr": 0.01, "runs": 3, "tasks": ["ncs"], "seed": 5, "run": 2})
    assert run.lr == 0.01 and run.base_seed == 5 and run.seed == 7
    assert math.isclose(FinetuneSettings.from_dict({"task": "dxc", "label_fraction": 0.1}).label_fraction, 0.1)
    with pytest.raises(ValueError, match="label_fraction"):
        FinetuneSettings(task="dxc", label_fraction=0)


SYNTHETIC_SCANS = {"name": "ct", "dataset": "LUNA16", "root": "results/synthetic/luna16", "synthetic": True}
REAL_TASK = {"name": "ncs", "dataset": "nodule cubes", "root": "/data/ncs", "synthetic": False, "manifest_sha256": "ab"}


def test_a_real_task_on_weights_pretrained_on_synthetic_scans_is_synthetic(tmp_path):
    """Provenance follows the lineage: the task data's records and those the pretrained weights carry."""
    real = write_task(tmp_path / "ncs.h5", "ncs", sizes={"train": 8, "val": 4, "test": 4}, synthetic=False)
    run = settings("ncs", max_epochs=1, base_width=2)
    scratch = finetune(real, None, run, tmp_path / "scratch", sources=[REAL_TASK])
    assert scratch["synthetic"] is False and scratch["data"] == [REAL_TASK]
    weights = write_pretrained(tmp_path / "pretrained", 3, base_width=2, data=[SYNTHETIC_SCANS])
    mixed = finetune(
        real,
        weights,
        settings("ncs", method="models_genesis", max_epochs=1, base_width=2),
        tmp_path / "mg",
        [REAL_TASK],
    )
    assert mixed["synthetic"] is True and mixed["data"] == [REAL_TASK, SYNTHETIC_SCANS]
    assert read_metrics(tmp_path / "mg") == json.loads(json.dumps(mixed))


def test_a_rerun_after_a_change_equals_a_fresh_run(tmp_path):
    """Fine-tuning keeps no state between runs: a rerun into the same folder after its data changed (same shapes)
    equals a fresh run on the new data."""
    sizes = {"train": 8, "val": 4, "test": 4}
    run = settings("ncs", max_epochs=2, base_width=2)
    finetune(write_task(tmp_path / "old.h5", "ncs", sizes, seed=0), None, run, tmp_path / "same")
    assert {p.name for p in (tmp_path / "same").iterdir()} == set(ARTIFACTS)
    new = write_task(tmp_path / "new.h5", "ncs", sizes, seed=1)
    again, fresh = (finetune(new, None, run, tmp_path / name) for name in ("same", "fresh"))
    assert again.pop("seconds") > 0 and fresh.pop("seconds") > 0
    assert again == fresh
    for name in ("history.csv",):
        pd.testing.assert_frame_equal(
            pd.read_csv(tmp_path / "same" / name).drop(columns="seconds"),
            pd.read_csv(tmp_path / "fresh" / name).drop(columns="seconds"),
        )
    with h5py.File(tmp_path / "same" / "predictions.h5") as a, h5py.File(tmp_path / "fresh" / "predictions.h5") as b:
        assert np.array_equal(a["scores"][()], b["scores"][()])


def test_a_batch_larger_than_the_labelled_training_samples_fails_before_training(tmp_path):
    path = write_task(tmp_path / "ncc.h5", "ncc", sizes={"train": 16, "val": 4, "test": 4})
    with pytest.raises(InfeasibleError) as info:
        finetune(path, None, settings("ncc", batch_size=8, label_fraction=0.25, base_width=2), tmp_path / "out")
    message = str(info.value)
    assert "finetune.ncc.batch_size = 8 exceeds the 4 labelled training samples" in message
    assert "finetune.label_fraction = 0.25 of 16" in message and "lower finetune.ncc.batch_size to 4" in message
    assert not (tmp_path / "out").exists()


def test_reproducible_sets_and_restores_the_deterministic_flags():
    from semantic_genesis.runtime.training import reproducible

    def flags() -> tuple[bool, bool]:
        return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()

    before = flags()
    threads = torch.get_num_threads()
    with reproducible(1, deterministic=True):
        assert flags() == (True, True)
        assert torch.get_num_threads() == 1
    assert (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    ) == before
    assert torch.get_num_threads() == threads
