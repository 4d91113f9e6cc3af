"""Data-parallel pretraining: batch sharing, global batch norm, a 2-process step on gloo equals the 1-process step,
rank 0 alone writes, and a distributed run resumes."""

import os
import socket

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from conftest import interrupt_processes_after
from test_pretraining import settings as base_settings
from test_pretraining import weights, write_patches
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from semantic_genesis.networks.package import CARD_FILE, CONFIG_FILE, SAFETENSORS_FILE
from semantic_genesis.pretrain.distributed import (
    GlobalBatchNorm,
    Processes,
    process_group,
    share_weight,
    with_global_batchnorm,
)
from semantic_genesis.pretrain.trainer import EpochBatches, Pretrainer, collate, pretrain

WORLD = 2
BATCH = 5  # shared 2 + 3: uneven shares must weigh by their sizes
LR = 0.01


def settings(*args, **changes):
    """The pretraining tests' settings, 4 channels wide: at width 2 some batch-norm channels of a tiny batch have
    almost no variance, and 1/sqrt(var + eps) turns float rounding into gradient differences of ~1%."""
    return base_settings(*args, **{"base_width": 4, **changes})


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    # 18 training patches (batches of 4: 4, 4, 4, 4, 2), 6 validation patches.
    return write_patches(tmp_path_factory.mktemp("dist") / "patches.h5")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def as_torchrun_process(rank: int, port: int) -> None:
    """The environment torchrun gives process `rank` of WORLD on this node."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    os.environ["LOCAL_RANK"] = str(rank)


@pytest.mark.parametrize("world", [2, 3])
def test_shares_of_every_batch_cover_it_exactly_once(world):
    for n, batch_size in ((19, 4), (5, 8), (2, 4)):
        whole = EpochBatches(n, batch_size, seed=3, shuffle=True)
        whole.epoch = 2
        ranks = [EpochBatches(n, batch_size, 3, True, Processes(r, world, r)) for r in range(world)]
        for sampler in ranks:
            sampler.epoch = 2
        shares = [list(sampler) for sampler in ranks]
        # Validation: every sample of every global batch once, batches in the same order.
        flat = sorted(key for rank in shares for batch in rank for key in batch)
        assert flat == sorted(key for batch in whole for key in batch)
        assert all(0 < len(b) for rank in shares for b in rank)
        # Each share knows the size of the global batch it came from (its loss weight needs it).
        size_of = {key: len(batch) for batch in whole for key in batch}
        for sampler, rank in zip(ranks, shares):
            assert sampler.global_sizes() == [size_of[batch[0]] for batch in rank]


def test_lockstep_skips_batches_too_small_to_share():
    # 10 samples in batches of 4: 4, 4, 2 (a lone last sample would have joined its predecessor); 3 processes.
    ranks = [EpochBatches(10, 4, 0, False, Processes(r, 3, r), lockstep=True) for r in range(3)]
    assert [len(sampler) for sampler in ranks] == [2, 2, 2]
    assert [len(b) for b in ranks[0]] == [1, 1] and [len(b) for b in ranks[2]] == [2, 2]


def test_share_weights_turn_the_mean_of_process_means_into_the_global_mean():
    values = torch.arange(7.0)
    processes = [Processes(r, 2, r) for r in range(2)]
    shares = [p.share(values) for p in processes]
    weighted = [share.mean() * share_weight(len(share), len(values), p) for share, p in zip(shares, processes)]
    assert torch.isclose(sum(weighted) / 2, values.mean())


def test_global_batchnorm_alone_is_plain_batchnorm_and_keeps_its_state_dict():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv3d(1, 3, 3), nn.BatchNorm3d(3))
    converted = with_global_batchnorm(nn.Sequential(nn.Conv3d(1, 3, 3), nn.BatchNorm3d(3)))
    converted.load_state_dict(plain.state_dict())
    assert isinstance(converted[1], GlobalBatchNorm)
    x = torch.randn(4, 1, 6, 6, 6)
    assert torch.equal(plain(x), converted(x))
    assert torch.equal(plain[1].running_var, converted[1].running_var)
    assert plain.state_dict().keys() == converted.state_dict().keys()


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 3, 3), nn.BatchNorm3d(3), nn.ReLU(), nn.Conv3d(3, 1, 3)).double()


def _small_data() -> torch.Tensor:
    return torch.randn(5, 1, 6, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _small_step(rank: int, port: int, out_dir) -> None:
    """Process `rank` of WORLD: DDP with global batch norm and share-weighted loss on its share of 5 samples."""
    as_torchrun_process(rank, port)
    with process_group(torch.device("cpu")) as (ranks, _):
        net = DistributedDataParallel(with_global_batchnorm(_small_net()))
        data = _small_data()
        share = ranks.share(data)
        loss = net(share).pow(2).mean() * share_weight(len(share), len(data), ranks)
        loss.backward()
        torch.save({name: p.grad for name, p in net.module.named_parameters()}, out_dir / f"rank{rank}.pt")


def test_sharing_is_exact_in_float64(tmp_path):
    """Global batch norm plus share weights give the whole-batch gradient exactly (float64 leaves no rounding room)."""
    net = _small_net()
    net(_small_data()).pow(2).mean().backward()
    mp.spawn(_small_step, args=(free_port(), tmp_path), nprocs=WORLD)
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, p in net.named_parameters():
            assert torch.allclose(grads[name], p.grad, rtol=1e-10, atol=1e-14), (rank, name)


def _one_step(rank: int, method: str, port: int, patches_path, out_dir) -> None:
    """One training step of process `rank` of WORLD on epoch 1's first global batch; saves weights and gradients."""
    torch.set_num_threads(1)
    as_torchrun_process(rank, port)
    with process_group(torch.device("cpu")) as (ranks, device):
        run = Pretrainer(patches_path, settings(method, batch_size=BATCH, lr=LR), ranks, device)
        run.model.train()
        run.samplers["train"].epoch = 1
        batch = collate([run.data["train"][key] for key in next(iter(run.samplers["train"]))])
        run.step(batch, BATCH)
        grads = {name: p.grad for name, p in run.model.named_parameters() if p.grad is not None}
        torch.save({"state": run.model.state_dict(), "grads": grads}, out_dir / f"rank{rank}.pt")


@pytest.mark.parametrize("method", ["semantic_genesis", "self_classification"])
def test_two_process_step_equals_the_single_process_step_on_the_same_global_batch(method, patches, tmp_path):
    single = Pretrainer(patches, settings(method, batch_size=BATCH, lr=LR))
    single.model.train()
    single.samplers["train"].epoch = 1
    before = {k: v.clone() for k, v in single.model.state_dict().items()}
    single.step(collate([single.data["train"][key] for key in next(iter(single.samplers["train"]))]), BATCH)
    expected = single.model.state_dict()
    expected_grads = {name: p.grad for name, p in single.model.named_parameters() if p.grad is not None}

    mp.spawn(_one_step, args=(method, free_port(), patches, tmp_path), nprocs=WORLD)
    for rank in range(WORLD):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        got, grads = saved["state"], saved["grads"]
        assert grads.keys() == expected_grads.keys()
        for name, value in expected_grads.items():
            assert torch.allclose(grads[name], value, rtol=1e-4, atol=1e-5 * float(value.abs().max())), (rank, name)
        # The step moved the weights, and both processes moved them as the single process did, batch-norm running
        # statistics included (they come from the whole batch). Gradients agree to float32 rounding (see the float64
        # test for the exact check). Adam's first step is lr * g / (|g| + eps), about lr * sign(g): where a gradient
        # is within rounding of zero its sign, and so the step, may differ by up to 2 lr; everywhere else the steps
        # agree to a small fraction of lr.
        assert not torch.equal(got["unet.encoder.down.0.0.0.weight"], before["unet.encoder.down.0.0.0.weight"])
        for name, value in expected.items():
            difference = (got[name].float() - value.float()).abs()
            signed = torch.ones_like(difference, dtype=torch.bool)
            if name in expected_grads:
                gradient = expected_grads[name].abs()
                signed = gradient > 1e-4 * float(gradient.max())
            assert (difference[signed] <= 0.02 * LR + 1e-4 * value.float().abs()[signed]).all(), (rank, name)
            assert (difference[~signed] <= 2 * LR * (1 + 1e-3)).all(), (rank, name)


def _pretrain_rank(rank: int, port: int, patches_path, out_root) -> None:
    """pretrain() as process `rank` of WORLD, each process given its own output folder."""
    torch.set_num_threads(1)
    as_torchrun_process(rank, port)
    pretrain(patches_path, settings(max_epochs=1), out_root / f"rank{rank}")


def test_only_rank_0_writes(patches, tmp_path):
    mp.spawn(_pretrain_rank, args=(free_port(), patches, tmp_path), nprocs=WORLD)
    written = {p.name for p in (tmp_path / "rank0").iterdir()}
    assert written == {f"{n}.pt" for n in ("weights", "encoder")} | {
        "architecture.json",
        "history.csv",
        "curves.png",
        "examples.png",
        SAFETENSORS_FILE,
        CONFIG_FILE,
        CARD_FILE,
    }
    assert not (tmp_path / "rank1").exists()


@pytest.fixture(scope="module")
def torchrun_run(patches, tmp_path_factory):
    """Two epochs on 2 gloo processes started through torchrun, as the workflow's pretrain rule does."""
    root = tmp_path_factory.mktemp("torchrun")
    history = pretrain(patches, settings(max_epochs=2), root / "run", processes=WORLD, log_path=root / "run.log")
    return root, history


def test_torchrun_run_equals_the_single_process_run_and_logs_once(torchrun_run, patches, tmp_path):
    root, history = torchrun_run
    single = pretrain(patches, settings(max_epochs=2), tmp_path)
    assert {p.name for p in (root / "run").iterdir()} == {p.name for p in tmp_path.iterdir()}
    # Over ten Adam steps float32 rounding grows in this tiny network (near-zero gradients steer Adam's early steps
    # by their sign), so the runs are compared by their training losses; the one-step tests are the exact checks.
    columns = ["train_loss", "train_rec", "train_cls", "lr"]
    assert np.allclose(history[columns], single[columns], rtol=5e-3)
    assert np.isclose(history.val_loss[0], single.val_loss[0], rtol=1e-3)
    log = (root / "run.log").read_text()
    assert "2 processes sharing batches of 4" in log
    assert log.count("epoch 2/2:") == 1  # rank 1 logs warnings only


def test_torchrun_run_resumes_like_an_uninterrupted_one(torchrun_run, patches, tmp_path, monkeypatch):
    root, history = torchrun_run
    with monkeypatch.context() as patch:
        interrupt_processes_after(patch, 1)  # both processes stop as if killed during epoch 2
        with pytest.raises(RuntimeError, match="torchrun processes"):
            pretrain(patches, settings(max_epochs=2), tmp_path, processes=WORLD)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["state"]["epoch"] == 1
    assert not (tmp_path / "weights.pt").exists()
    resumed = pretrain(patches, settings(max_epochs=2), tmp_path, processes=WORLD, log_path=tmp_path / "log")
    assert "resuming from" in (tmp_path / "log").read_text()
    whole, split = weights(root / "run"), weights(tmp_path)
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    drop = ["seconds", "train_samples_per_s"]
    pd.testing.assert_frame_equal(resumed.drop(columns=drop), history.drop(columns=drop))
