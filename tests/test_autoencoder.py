"""Self-discovery autoencoder: shapes, training, resumption, early stopping, embedding and plots."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, Interrupted, interrupt_after
from torch import nn

from semantic_genesis.config import load_config
from semantic_genesis.discovery.autoencoder import (
    Autoencoder,
    AutoencoderSettings,
    embed_images,
    load_autoencoder,
    train_autoencoder,
)
from semantic_genesis.plots import latent_scatter, principal_components
from semantic_genesis.runtime import training

TINY_3D = AutoencoderSettings(dims=3, base_width=4, levels=3, batch_size=4, max_epochs=4, num_threads=2)
TINY_2D = dataclasses.replace(TINY_3D, dims=2)
SIZE = {2: (32, 32), 3: (16, 16, 16)}


def shapes(n: int, dims: int, seed: int) -> np.ndarray:
    """Float32 images in [0, 1] of one bright ball (disc) of random centre and radius on a dim background."""
    rng = np.random.default_rng(seed)
    size = SIZE[dims]
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"))
    centres = rng.uniform(0.3, 0.7, (n, dims)) * np.array(size)
    radii = rng.uniform(0.15, 0.3, n) * min(size)
    squared = ((grid[None] - centres.reshape(n, dims, *[1] * dims)) ** 2).sum(1)
    inside = squared <= radii.reshape(n, *[1] * dims) ** 2
    return np.where(inside, 0.8, 0.2).astype(np.float32)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("skips", [False, True])
def test_shapes_and_range(dims: int, skips: bool) -> None:
    settings = dataclasses.replace(TINY_3D, dims=dims, skips=skips)
    model = Autoencoder(settings).eval()
    x = torch.from_numpy(shapes(2, dims, seed=0))[:, None]
    with torch.no_grad():
        recon, bottleneck, latent = model(x), model.encode(x), model.embed(x)
    assert recon.shape == x.shape
    assert recon.min() >= 0 and recon.max() <= 1
    assert bottleneck.shape == (2, 4 * 2**3, *[s // 4 for s in SIZE[dims]])  # 3 levels pool twice
    assert latent.shape == (2, model.latent_channels) == (2, 32)


def test_rejects_indivisible_size() -> None:
    with pytest.raises(ValueError, match="divisible"):
        Autoencoder(TINY_3D)(torch.zeros(1, 1, 10, 16, 16))


@pytest.mark.parametrize("name, size", [("paper_3d.yaml", (64, 128, 128)), ("paper_2d.yaml", (128, 128))])
def test_paper_config_builds_the_authors_vnet(name: str, size: tuple[int, ...]) -> None:
    """self_discovery/vnet3d.py, depth 4: convs (32, 64), (64, 128), (128, 256), (256, 512), three pools."""
    config = load_config(REPO / "config" / name)
    kind = "ct" if len(size) == 3 else "cxr"
    settings = AutoencoderSettings.from_dict({**config["discovery"][kind]["autoencoder"], "dims": len(size)})
    with torch.device("meta"):
        model = Autoencoder(settings)
        latent = model.encode(torch.zeros(1, 1, *size))
    convs = [[m.out_channels for m in block.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))] for block in model.down]
    assert convs == [[32, 64], [64, 128], [128, 256], [256, 512]]
    assert latent.shape == (1, 512, *[s // 8 for s in size])  # 128x128x64 -> 512 x 16x16x8
    assert model.latent_channels == 512


def test_parameter_count_grows_with_width() -> None:
    counts = [
        sum(p.numel() for p in Autoencoder(dataclasses.replace(TINY_3D, base_width=w)).parameters()) for w in (2, 4, 8)
    ]
    assert counts[0] < counts[1] < counts[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short 2D run on simple shapes, with its output folder and data."""
    out = tmp_path_factory.mktemp("ae2d")
    train, val = shapes(24, 2, seed=1), shapes(8, 2, seed=2)
    settings = dataclasses.replace(TINY_2D, max_epochs=8, lr=3e-3)
    return train_autoencoder(train, val, settings, out), out, val


def test_training_lowers_loss_and_writes_outputs(trained) -> None:
    history, out, _ = trained
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "lr", "seconds"]
    assert history.epoch.tolist() == list(range(1, 9))
    assert history.val_loss.iloc[-1] < 0.8 * history.val_loss.iloc[0]
    for name in ("model.pt", "history.csv", "loss.png", "reconstructions.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "checkpoint.pt").exists(), "a finished run leaves nothing to resume"
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv"), history, check_dtype=False)
    assert not list(out.glob(".*partial*"))


def test_load_autoencoder_gives_identical_outputs(trained, tmp_path, monkeypatch) -> None:
    history, out, val = trained
    loaded = load_autoencoder(out / "model.pt")
    assert not loaded.training and loaded.settings == dataclasses.replace(TINY_2D, max_epochs=8, lr=3e-3)
    # model.pt holds the best epoch's weights: those of the same run stopped right after that epoch.
    best_epoch = history.val_loss.idxmin() + 1
    assert torch.load(out / "model.pt", weights_only=True)["epoch"] == best_epoch
    interrupt_after(monkeypatch, best_epoch)  # a budget beyond it does not change the epochs before
    with pytest.raises(Interrupted):
        train_autoencoder(
            shapes(24, 2, seed=1), val, dataclasses.replace(loaded.settings, max_epochs=best_epoch + 1), tmp_path
        )
    best = Autoencoder(loaded.settings)
    best.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"])
    x = torch.from_numpy(val)[:, None]
    with torch.no_grad():
        assert torch.equal(loaded(x), best.eval()(x))


def test_embed_images_shape_and_determinism(trained) -> None:
    _, out, val = trained
    model = load_autoencoder(out / "model.pt")
    latents = embed_images(model, val, batch_size=3)
    assert latents.shape == (len(val), 32) and latents.dtype == np.float32
    np.testing.assert_array_equal(latents, embed_images(model, val, batch_size=3))
    np.testing.assert_allclose(latents, embed_images(model, val, batch_size=8), rtol=1e-5, atol=1e-6)
    expected = model.embed(torch.from_numpy(val[:1])[:, None]).detach().numpy()
    np.testing.assert_allclose(latents[:1], expected, rtol=1e-5, atol=1e-6)


def test_a_lazy_image_set_trains_exactly_as_the_arrays(tmp_path) -> None:
    from semantic_genesis.discovery.inputs import ImageSet

    train, val = shapes(6, 2, seed=5), shapes(2, 2, seed=6)
    reads = []

    def lazy(images: np.ndarray) -> ImageSet:
        def reader(i: int) -> np.ndarray:
            reads.append(i)
            return images[i]

        return ImageSet(len(images), images.shape[1:], reader)

    settings = dataclasses.replace(TINY_2D, max_epochs=2)
    arrays = train_autoencoder(train, val, settings, tmp_path / "arrays")
    lazily = train_autoencoder(lazy(train), lazy(val), settings, tmp_path / "lazy")
    pd.testing.assert_frame_equal(arrays.drop(columns="seconds"), lazily.drop(columns="seconds"))
    assert_same_run(tmp_path / "arrays", tmp_path / "lazy")
    assert reads and max(reads) < len(train)
    model = load_autoencoder(tmp_path / "lazy" / "model.pt")
    np.testing.assert_array_equal(embed_images(model, lazy(val), 2), embed_images(model, val, 2))


def assert_same_run(a, b) -> None:
    """Two output folders with bitwise equal best weights and equal losses."""
    first, second = (torch.load(folder / "model.pt", weights_only=True) for folder in (a, b))
    assert first["state_dict"].keys() == second["state_dict"].keys() and first["epoch"] == second["epoch"]
    for key in first["state_dict"]:
        assert torch.equal(first["state_dict"][key], second["state_dict"][key]), key
    loss_columns = ["epoch", "train_loss", "val_loss", "lr"]
    pd.testing.assert_frame_equal(
        pd.read_csv(a / "history.csv")[loss_columns], pd.read_csv(b / "history.csv")[loss_columns]
    )


def interrupted_run(monkeypatch, train, val, settings, out, epochs=2) -> None:
    """A run killed after epoch `epochs`: its checkpoint, and no model.pt."""
    with monkeypatch.context() as patch:
        interrupt_after(patch, epochs)
        with pytest.raises(Interrupted):
            train_autoencoder(train, val, settings, out)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["state"]["epoch"] == epochs
    assert not (out / "model.pt").exists()


def test_resume_equals_uninterrupted(tmp_path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO)
    train, val = shapes(10, 3, seed=3), shapes(4, 3, seed=4)
    train_autoencoder(train, val, TINY_3D, tmp_path / "straight")
    interrupted_run(monkeypatch, train, val, TINY_3D, tmp_path / "resumed")
    train_autoencoder(train, val, TINY_3D, tmp_path / "resumed")
    assert "resuming from" in caplog.text
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()


def test_resume_refuses_other_settings_data_or_code(tmp_path, monkeypatch) -> None:
    train, val = shapes(6, 2, seed=5), shapes(2, 2, seed=6)
    interrupted_run(monkeypatch, train, val, TINY_2D, tmp_path)
    with pytest.raises(ValueError, match="base_width"):
        train_autoencoder(train, val, dataclasses.replace(TINY_2D, base_width=2), tmp_path)
    with pytest.raises(ValueError, match="other input data"):
        train_autoencoder(train[:4], val, TINY_2D, tmp_path)
    other = train.copy()
    other[0] = 1 - other[0]  # same shapes, other contents
    with pytest.raises(ValueError, match="other input data"):
        train_autoencoder(other, val, TINY_2D, tmp_path)
    monkeypatch.setattr(training, "module_code_digest", lambda module: "edited")
    with pytest.raises(ValueError, match="other code"):
        train_autoencoder(train, val, TINY_2D, tmp_path)


@pytest.mark.parametrize("change", ["contents", "setting", "code"])
def test_a_rerun_after_a_change_equals_a_fresh_run(change, tmp_path, monkeypatch) -> None:
    """What a workflow rerun does (restart_stale), after a finished and after an interrupted run."""
    train, val = shapes(6, 2, seed=5), shapes(2, 2, seed=6)
    settings, new_train = dataclasses.replace(TINY_2D, max_epochs=3), train
    if change == "contents":
        new_train = train.copy()
        new_train[:2] = 1 - new_train[:2]
    new_settings = dataclasses.replace(settings, lr=settings.lr / 2) if change == "setting" else settings
    train_autoencoder(train, val, settings, tmp_path / "finished")
    interrupted_run(monkeypatch, train, val, settings, tmp_path / "interrupted")
    if change == "code":
        monkeypatch.setattr(training, "module_code_digest", lambda module: "edited")
    for name in ("fresh", "finished", "interrupted"):
        train_autoencoder(new_train, val, new_settings, tmp_path / name, restart_stale=True)
    assert_same_run(tmp_path / "fresh", tmp_path / "finished")
    assert_same_run(tmp_path / "fresh", tmp_path / "interrupted")


def test_early_stopping_on_plateau(tmp_path) -> None:
    train, val = shapes(6, 2, seed=7), shapes(2, 2, seed=8)
    settings = dataclasses.replace(TINY_2D, lr=0.0, max_epochs=40, early_stopping_patience=3, plateau_patience=1)
    history = train_autoencoder(train, val, settings, tmp_path)
    assert len(history) < 40
    # A larger budget changes nothing: the run stops at the same epoch.
    again = train_autoencoder(train, val, dataclasses.replace(settings, max_epochs=80), tmp_path)
    assert len(again) == len(history)


def test_empty_validation_uses_training_loss(tmp_path, caplog) -> None:
    train = shapes(6, 2, seed=9)
    history = train_autoencoder(
        train, np.zeros((0, 32, 32), np.float32), dataclasses.replace(TINY_2D, max_epochs=2), tmp_path
    )
    assert history.val_loss.isna().all() and (tmp_path / "model.pt").exists()
    assert "validation set is empty" in caplog.text


def test_latent_scatter_writes_png(tmp_path) -> None:
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(20, 8)).astype(np.float32)
    labels = {"split": ["train"] * 12 + ["val"] * 8, "lung_fraction": rng.uniform(0.1, 0.3, 20)}
    latent_scatter(latents, labels, tmp_path / "latent.png")
    assert (tmp_path / "latent.png").stat().st_size > 0


def test_principal_components_match_an_svd() -> None:
    rng = np.random.default_rng(1)
    points = rng.normal(size=(50, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 7.0
    coordinates, shares = principal_components(points, 2)
    centred = points - points.mean(axis=0)
    _, singular, rows = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ rows[:2].T
    # An axis' sign is arbitrary.
    np.testing.assert_allclose(np.abs(coordinates), np.abs(reference), atol=1e-9)
    np.testing.assert_allclose(shares, 100 * singular[:2] ** 2 / (singular**2).sum())
    # One point: no variance, all coordinates zero (as for a rank below the count asked).
    single, none = principal_components(points[:1], 2)
    assert not single.any() and not none.any()


def test_stale_checkpoint_is_replaced_when_asked(tmp_path, monkeypatch, caplog) -> None:
    """A workflow rerun after a config change restarts instead of failing on the old checkpoint."""
    train, val = shapes(6, 2, seed=5), shapes(2, 2, seed=6)
    interrupted_run(monkeypatch, train, val, TINY_2D, tmp_path)
    wider = dataclasses.replace(TINY_2D, max_epochs=1, base_width=2)
    history = train_autoencoder(train, val, wider, tmp_path, restart_stale=True)
    assert len(history) == 1 and "starting afresh" in caplog.text
    assert load_autoencoder(tmp_path / "model.pt").settings.base_width == 2


def test_the_device_setting_is_used_and_a_claimed_gpu_without_cuda_warns(tmp_path, monkeypatch, caplog) -> None:
    train, val = shapes(6, 2, seed=5), shapes(2, 2, seed=6)
    # The device comes from the settings (so the rules' GPU is used): asking for CUDA here fails at once.
    with pytest.raises(ValueError, match="PyTorch sees no CUDA GPU"):
        train_autoencoder(train, val, dataclasses.replace(TINY_2D, device="cuda"), tmp_path)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: a claimed GPU is usable")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what claim_gpus sets for a job given one GPU
    with caplog.at_level(logging.WARNING):
        train_autoencoder(train, val, dataclasses.replace(TINY_2D, max_epochs=1), tmp_path)
    assert "CLAIMED GPU 0, BUT PYTORCH SEES NO CUDA DEVICE" in caplog.text
    assert load_autoencoder(tmp_path / "model.pt").settings.device == "auto"
