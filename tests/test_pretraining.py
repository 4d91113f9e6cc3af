"""Pretraining: every method end to end, falling losses, exported weights, lazy data, fixed validation, resume."""

import json
import pickle

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import Interrupted, interrupt_after

from semantic_genesis.methods import METHODS
from semantic_genesis.networks.genesis import Encoder3D, load_pretrained
from semantic_genesis.pretrain import transforms as T
from semantic_genesis.pretrain.trainer import (
    PatchDataset,
    Pretrainer,
    PretrainSettings,
    collate,
    pretrain,
    restoration_loss,
    transform_gallery,
)
from semantic_genesis.pretrain.transforms import TransformSettings
from semantic_genesis.runtime import training

SHAPE_3D = (8, 16, 16)
FAST = dict(base_width=2, head_width=16, batch_size=4, lr=0.01, num_threads=1, workers=0, device="cpu")
# Fewer shuffle windows keep tiny patches recognisable and the tests quick; the contract is the same.
TRANSFORMS = {"shuffle_windows": 200}


def write_patches(path, shape=SHAPE_3D, classes=3, per_class=6, val_per_class=2, seed=0):
    """A patches.h5 in the layout of patches.extract_patches: each class a distinct smooth pattern plus noise."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    patterns = [0.5 + 0.4 * np.sin((c + 1) * np.pi * grids[-1]) * np.cos((c + 1) * np.pi * grids[-2]) for c in range(3)]
    with h5py.File(path, "w") as h5:
        h5.attrs.update(seed=seed, config="{}")
        for split, n in (("train", per_class), ("val", val_per_class)):
            labels = np.repeat(np.arange(classes), n)
            noise = rng.normal(0, 0.05, (len(labels), *shape))
            patches = np.clip(np.stack([patterns[c % 3] for c in labels]) + noise, 0, 1)
            group = h5.create_group(split)
            group.create_dataset("patches", data=patches.astype(np.float16), chunks=(1, *shape))
            group.create_dataset("labels", data=labels.astype(np.int64))
    return path


@pytest.fixture(scope="module")
def patches_3d(tmp_path_factory):
    return write_patches(tmp_path_factory.mktemp("p3") / "patches.h5")


def settings(method="semantic_genesis", **changes):
    return PretrainSettings(method=method, dims=3, transforms=TRANSFORMS, **{**FAST, **changes})


def weights(folder):
    return torch.load(folder / "weights.pt", weights_only=True)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_falls_and_exports(method, patches_3d, tmp_path):
    history = pretrain(patches_3d, settings(method, max_epochs=4), tmp_path)
    assert list(history.epoch) == [1, 2, 3, 4]
    assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]
    spec = METHODS[method]
    assert history.train_rec.notna().all() == spec.restoration and history.val_acc.notna().all() == spec.classification
    for name in ("weights.pt", "encoder.pt", "architecture.json", "history.csv", "curves.png", "examples.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert not (tmp_path / "checkpoint.pt").exists(), "a finished run leaves nothing to resume"
    encoder = load_pretrained(tmp_path, part="encoder")
    bottleneck, skips = encoder(torch.rand(2, 1, *SHAPE_3D))
    assert bottleneck.shape == (2, encoder.out_channels, 1, 2, 2) and len(skips) == 3
    # Plain state dicts: a freshly built encoder takes encoder.pt with no key surgery.
    Encoder3D(base_width=2).load_state_dict(torch.load(tmp_path / "encoder.pt", weights_only=True))
    full = load_pretrained(tmp_path, part="full")
    restored, logits = full(torch.rand(2, 1, *SHAPE_3D))
    assert (restored is not None) == spec.restoration and (logits is not None) == spec.classification
    if logits is not None:
        assert logits.shape == (2, 3)
    assert pd.read_csv(tmp_path / "history.csv").shape[0] == 4
    # The model package: what the weights are and were trained on.
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"] == method and config["input"]["patch_size"] == list(SHAPE_3D)
    assert config["training"]["best_epoch"] in (1, 2, 3, 4) and config["data"] == []
    card = (tmp_path / "README.md").read_text()
    assert f"# {method} pretrained 3D" in card and f"best epoch {config['training']['best_epoch']}" in card


def test_classification_learns_the_discovered_classes(patches_3d, tmp_path):
    run = settings("self_classification", max_epochs=10, lambda_cls=1.0, lr=0.003, base_width=4)
    history = pretrain(patches_3d, run, tmp_path)
    assert history.val_acc.max() == 1.0 and history.val_cls.min() < 0.5 * history.val_cls.iloc[0]


def test_two_dimensional_pretraining(tmp_path):
    path = write_patches(tmp_path / "patches.h5", shape=(32, 32))
    history = pretrain(path, PretrainSettings(dims=2, transforms=TRANSFORMS, max_epochs=2, **FAST), tmp_path / "out")
    assert len(history) == 2 and history.val_loss.notna().all()
    encoder = load_pretrained(tmp_path / "out", part="encoder")
    assert encoder(torch.rand(2, 1, 32, 32))[0].shape == (2, encoder.out_channels, 1, 1)
    unet = load_pretrained(tmp_path / "out", part="unet")
    assert unet(torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)


def assert_same_run(a, b):
    """Two output folders with bitwise equal weights and equal histories (but for wall-clock columns)."""
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    clock = ["seconds", "train_samples_per_s"]
    pd.testing.assert_frame_equal(
        pd.read_csv(a / "history.csv").drop(columns=clock), pd.read_csv(b / "history.csv").drop(columns=clock)
    )


def interrupted_run(monkeypatch, patches, run, out, epochs=2):
    """A run killed after epoch `epochs`: its checkpoint, and no final artifacts."""
    with monkeypatch.context() as patch:
        interrupt_after(patch, epochs)
        with pytest.raises(Interrupted):
            pretrain(patches, run, out)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["state"]["epoch"] == epochs
    assert not (out / "weights.pt").exists()


def test_resumed_run_equals_uninterrupted_run(patches_3d, tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO")
    pretrain(patches_3d, settings(max_epochs=3), tmp_path / "whole")
    interrupted_run(monkeypatch, patches_3d, settings(max_epochs=3), tmp_path / "split")
    pretrain(patches_3d, settings(max_epochs=3), tmp_path / "split")
    assert "resuming from" in caplog.text
    assert_same_run(tmp_path / "whole", tmp_path / "split")
    assert not (tmp_path / "split" / "checkpoint.pt").exists()


def rewritten(path, out):
    """patches.h5 copied with other patch contents in the same shapes, labels and attributes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(path.read_bytes())
    with h5py.File(out, "r+") as h5:
        h5["train/patches"][0] = 1 - h5["train/patches"][0]
    return out


@pytest.mark.parametrize("change", ["contents", "setting", "code"])
def test_a_rerun_after_a_change_equals_a_fresh_run(change, patches_3d, tmp_path, monkeypatch, caplog):
    """What a workflow rerun does (restart_stale) after a change, whether the earlier run finished or was killed."""
    run, patches = settings(max_epochs=3), patches_3d
    pretrain(patches, run, tmp_path / "finished")
    old = weights(tmp_path / "finished")
    interrupted_run(monkeypatch, patches, run, tmp_path / "interrupted")
    if change == "contents":
        patches = rewritten(patches_3d, tmp_path / "new" / "patches.h5")
    elif change == "setting":
        run = settings(max_epochs=3, lr=0.005)
    else:
        monkeypatch.setattr(training, "module_code_digest", lambda module: "edited")
    for name in ("fresh", "finished", "interrupted"):
        pretrain(patches, run, tmp_path / name, restart_stale=True)
    assert_same_run(tmp_path / "fresh", tmp_path / "finished")
    assert_same_run(tmp_path / "fresh", tmp_path / "interrupted")
    assert "starting afresh" in caplog.text  # the killed run's checkpoint was set aside, not resumed
    new = weights(tmp_path / "fresh")
    # Other contents or settings give other weights (an edit of the code here is only a changed digest).
    assert any(not torch.equal(old[k], new[k]) for k in old) == (change != "code")


def test_workers_do_not_change_the_result(patches_3d, tmp_path):
    pretrain(patches_3d, settings(max_epochs=1), tmp_path / "main")
    pretrain(patches_3d, settings(max_epochs=1, workers=2), tmp_path / "workers")
    main, workers = weights(tmp_path / "main"), weights(tmp_path / "workers")
    assert all(torch.equal(main[k], workers[k]) for k in main)


def test_stale_checkpoint_is_an_error_unless_restarting(patches_3d, tmp_path, monkeypatch):
    interrupted_run(monkeypatch, patches_3d, settings(max_epochs=3), tmp_path)
    with pytest.raises(ValueError, match="other settings.*lr"):
        pretrain(patches_3d, settings(max_epochs=3, lr=0.002), tmp_path)
    with pytest.raises(ValueError, match="other input data"):
        pretrain(rewritten(patches_3d, tmp_path / "new" / "patches.h5"), settings(max_epochs=3), tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(training, "module_code_digest", lambda module: "edited")
        with pytest.raises(ValueError, match="other code"):
            pretrain(patches_3d, settings(max_epochs=3), tmp_path)
    history = pretrain(patches_3d, settings(max_epochs=1, lr=0.002), tmp_path, restart_stale=True)
    assert history.lr.iloc[0] == 0.002 and len(history) == 1


def test_validation_transforms_are_fixed_and_training_ones_change(patches_3d):
    data = PatchDataset(patches_3d, "val", "models_genesis", TransformSettings(), seed=0, draw_only=False)
    first, again = data[(0, 1)], data[(0, 1)]
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    other_epochs = [data[(epoch, 1)][0] for epoch in range(1, 6)]
    assert any(not np.array_equal(first[0], x) for x in other_epochs)


def test_dataset_reads_lazily_and_pickles_without_its_handle(patches_3d):
    data = PatchDataset(patches_3d, "train", "identity", TransformSettings(), seed=0, draw_only=False)
    assert data._h5 is None
    item = data[(1, 4)]
    with h5py.File(patches_3d) as h5:
        np.testing.assert_array_equal(item[0], h5["train/patches"][4].astype(np.float32))
    assert item[2] == h5py.File(patches_3d)["train/labels"][4]
    assert data._h5 is not None and pickle.loads(pickle.dumps(data))._h5 is None


def test_augmenting_on_the_device_path_trains(patches_3d, tmp_path):
    history = pretrain(patches_3d, settings(max_epochs=2, augment="device"), tmp_path)
    assert history.train_loss.notna().all() and np.isfinite(history.val_loss).all()


def test_unknown_method_and_policy_are_named(patches_3d):
    with pytest.raises(ValueError, match="method must be one of"):
        PretrainSettings(method="semantic_genesys")
    with pytest.raises(ValueError, match="restoration_policy"):
        PretrainSettings(restoration_policy="paper")


def test_transform_gallery_shows_every_transform(patches_3d, tmp_path):
    out = tmp_path / "gallery.png"
    transform_gallery(patches_3d, out, "models_genesis", TRANSFORMS)
    assert out.stat().st_size > 10_000


def test_masked_loss_is_the_mse_over_the_in_painted_voxels_only():
    restored, target = torch.rand(2, 1, 4, 6, 6), torch.rand(2, 1, 4, 6, 6)
    mask = torch.zeros(2, 1, 4, 6, 6, dtype=torch.bool)
    mask[0, :, 1:3, 2:5, 0:2] = True
    mask[1, :, 0, 0, 0] = True
    squared = (restored - target) ** 2
    assert torch.allclose(restoration_loss(restored, target, mask), squared[mask].mean())
    assert torch.allclose(restoration_loss(restored, target, None), squared.mean())


@pytest.mark.parametrize("augment", ["workers", "device"])
def test_inpainting_loss_covers_the_in_painted_blocks_unless_full(patches_3d, augment, tmp_path):
    for loss in ("masked", "full"):
        run = Pretrainer(patches_3d, settings("inpainting", inpainting_loss=loss, augment=augment))
        batch = collate([run.data["val"][(0, i)] for i in range(4)])
        _, rec, _, _, restored = run.losses(batch, run.model)
        _, targets, _ = run.inputs(batch)
        masks = np.stack([T.restoration_mask(plan, targets.shape[2:]) for plan in batch["plans"]])[:, None]
        squared = (restored.detach().float() - targets) ** 2
        want = squared[torch.from_numpy(masks)].mean() if loss == "masked" else squared.mean()
        assert masks.any(axis=(1, 2, 3, 4)).all() and not masks.all()
        torch.testing.assert_close(rec, want)
    history = pretrain(patches_3d, settings("inpainting", max_epochs=1, augment=augment), tmp_path)
    assert np.isfinite(history.train_rec).all() and np.isfinite(history.val_rec).all()
    with pytest.raises(ValueError, match="inpainting_loss"):
        settings("inpainting", inpainting_loss="blocks")


def test_self_classification_sees_the_patch_or_the_transformed_patch():
    assert settings("self_classification").policy == "identity"
    transformed = settings("self_classification", self_classification_input="transformed")
    assert transformed.policy == "models_genesis"
    assert (
        settings("self_classification", self_classification_input="transformed", restoration_policy="released").policy
        == "released"
    )
    assert settings("semantic_genesis", self_classification_input="transformed").policy == "models_genesis"
