"""Networks: parameter counts, shapes, batch norm in eval mode, heads, gradients and pretrained-weight files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from semantic_genesis.networks.genesis import (
    ClassificationHead,
    GenesisNet,
    NetworkSettings,
    build_unet,
    count_parameters,
    load_pretrained,
    save_pretrained,
)
from semantic_genesis.networks.unet2d import Decoder2D, ResNetEncoder2D, UNet2D
from semantic_genesis.networks.unet3d import Decoder3D, Encoder3D, UNet3D

SIZE = {3: (16, 32, 32), 2: (64, 64)}
WIDTH = {3: 4, 2: 4}
ENCODERS = {3: Encoder3D, 2: ResNetEncoder2D}


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Fixed seed; two threads, the size of the test machine."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def images(n: int, dims: int, size: tuple[int, ...] | None = None) -> torch.Tensor:
    """Random single-channel images in [0, 1]."""
    return torch.rand(n, 1, *(size or SIZE[dims]))


def test_paper_unet3d_has_19_1_million_parameters() -> None:
    # The meta device allocates nothing: counting a paper-width network costs no memory or time.
    with torch.device("meta"):
        unet = UNet3D(32)
    count = count_parameters(unet)
    print(f"UNet3D(base_width=32): {count:,} parameters")
    assert count == 19_071_329
    assert abs(count - 19.1e6) / 19.1e6 < 0.01
    assert unet.encoder.out_channels == 512


def test_paper_unet2d_parameter_count() -> None:
    with torch.device("meta"):
        unet = UNet2D(64)
    count = count_parameters(unet)
    print(f"UNet2D(base_width=64): {count:,} parameters, encoder {count_parameters(unet.encoder):,}")
    # ResNet-18 without its classifier, with a one-channel stem: 11,170,240 parameters.
    assert count_parameters(unet.encoder) == 11_170_240
    assert unet.encoder.out_channels == 512


def test_unet3d_shapes() -> None:
    unet = UNet3D(4).eval()
    x = images(2, 3, (32, 64, 64))
    with torch.no_grad():
        bottleneck, skips = unet.encoder(x)
        out = unet(x)
    assert bottleneck.shape == (2, 64, 4, 8, 8)  # 16w channels at 1/8 size: 512 at the paper's w = 32
    assert [s.shape for s in skips] == [(2, 8, 32, 64, 64), (2, 16, 16, 32, 32), (2, 32, 8, 16, 16)]
    assert out.shape == x.shape
    assert 0 <= out.min() and out.max() <= 1


def test_unet2d_shapes() -> None:
    unet = UNet2D(4).eval()
    x = images(2, 2, (64, 96))
    with torch.no_grad():
        bottleneck, skips = unet.encoder(x)
        out = unet(x)
    assert bottleneck.shape == (2, 32, 2, 3)  # 8w channels at 1/32 size: 512 at the paper's w = 64
    assert [s.shape for s in skips] == [(2, 4, 32, 48), (2, 4, 16, 24), (2, 8, 8, 12), (2, 16, 4, 6)]
    assert out.shape == x.shape
    assert 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("dims", [2, 3])
def test_logits_and_several_output_channels(dims: int) -> None:
    logits_unet = build_unet(dims, WIDTH[dims], out_channels=3, activation=None).eval()
    sigmoid_unet = build_unet(dims, WIDTH[dims], out_channels=3).eval()
    sigmoid_unet.load_state_dict(logits_unet.state_dict())
    x = images(2, dims)
    with torch.no_grad():
        logits = logits_unet(x)
        torch.testing.assert_close(sigmoid_unet(x), torch.sigmoid(logits))
    assert logits.shape == (2, 3, *SIZE[dims])
    with pytest.raises(ValueError, match="activation"):
        build_unet(dims, 4, activation="softmax")


@pytest.mark.parametrize(
    "dims, shape",
    [(3, (1, 1, 16, 32, 20)), (3, (1, 1, 32, 32)), (3, (1, 2, 16, 16, 16)), (2, (1, 1, 64, 48)), (2, (1, 1, 16, 16))],
)
def test_bad_input_shapes_are_rejected(dims: int, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        build_unet(dims, 2)(torch.zeros(shape))


@pytest.mark.parametrize("dims", [2, 3])
def test_eval_mode_uses_running_statistics(dims: int) -> None:
    unet = build_unet(dims, WIDTH[dims])
    unet.train()
    with torch.no_grad():
        for _ in range(3):
            unet(images(4, dims) * 0.5 + 0.25)
    unet.eval()
    x = images(4, dims)
    with torch.no_grad():
        alone = unet(x[:1])
        in_batch = unet(x)[:1]
        in_other_batch = unet(torch.cat([x[:1], images(3, dims) * 0.1]))[:1]
    torch.testing.assert_close(alone, in_batch)
    torch.testing.assert_close(alone, in_other_batch)


@pytest.mark.parametrize("dims", [2, 3])
def test_classification_head_returns_logits(dims: int) -> None:
    head = ClassificationHead(dims, 16, num_classes=5, head_width=32)
    logits = head(torch.randn(3, 16, *[2] * dims))
    assert logits.shape == (3, 5)
    assert not torch.allclose(logits.exp().sum(1), torch.ones(3))  # not (log-)probabilities


@pytest.mark.parametrize("dims", [2, 3])
def test_genesis_net_outputs(dims: int) -> None:
    x = images(2, dims)
    both = GenesisNet(NetworkSettings(dims=dims, base_width=WIDTH[dims], num_classes=7, head_width=16))
    restoration, logits = both(x)
    assert restoration.shape == x.shape and logits.shape == (2, 7)

    restoration, logits = GenesisNet(NetworkSettings(dims=dims, base_width=WIDTH[dims]))(x)
    assert restoration.shape == x.shape and logits is None

    classify = GenesisNet(NetworkSettings(dims=dims, base_width=WIDTH[dims], num_classes=7, restoration=False))
    calls = []
    classify.unet.decoder.register_forward_hook(lambda *args: calls.append(args))
    restoration, logits = classify(x)
    assert restoration is None and logits.shape == (2, 7)
    assert not calls
    assert classify.unet.decoder is not None  # kept for fine-tuning the whole U-Net later


def test_settings() -> None:
    settings = NetworkSettings.from_dict({"dims": 2, "base_width": 8, "num_classes": 3, "lr": 0.1})
    assert settings == NetworkSettings(dims=2, base_width=8, num_classes=3)
    with pytest.raises(ValueError, match="dims"):
        NetworkSettings(dims=1)
    with pytest.raises(ValueError, match="no output"):
        NetworkSettings(num_classes=0, restoration=False)


@pytest.mark.parametrize("dims", [2, 3])
def test_gradients_reach_the_encoder_from_both_heads(dims: int) -> None:
    net = GenesisNet(NetworkSettings(dims=dims, base_width=WIDTH[dims], num_classes=3, head_width=8))
    first_conv = next(net.unet.encoder.parameters())
    restoration, logits = net(images(2, dims))
    for loss in (torch.nn.functional.mse_loss(restoration, torch.rand_like(restoration)), logits.logsumexp(1).mean()):
        net.zero_grad()
        loss.backward(retain_graph=True)
        assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def trained_net(dims: int) -> GenesisNet:
    """A small GenesisNet whose batch-norm statistics and weights differ from a fresh one."""
    net = GenesisNet(NetworkSettings(dims=dims, base_width=WIDTH[dims], num_classes=4, head_width=8))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
        net.train()
        net(images(4, dims))
    return net.eval()


@pytest.mark.parametrize("dims", [2, 3])
def test_save_and_load_pretrained(dims: int, tmp_path: Path) -> None:
    net = trained_net(dims)
    folder = tmp_path / "pretrained"
    save_pretrained(net, folder, extra={"method": "semantic_genesis", "epoch": 3})
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "architecture.json",
        "config.json",
        "encoder.pt",
        "model.safetensors",
        "weights.pt",
    ]
    architecture = json.loads((folder / "architecture.json").read_text())
    assert architecture["dims"] == dims and architecture["extra"] == {"method": "semantic_genesis", "epoch": 3}

    x = images(2, dims)
    with torch.no_grad():
        restoration, logits = net(x)
        bottleneck = net.unet.encoder(x)[0]
        full = load_pretrained(folder, "full")
        assert isinstance(full, GenesisNet) and not full.training
        for got, expected in zip(full(x), (restoration, logits)):
            torch.testing.assert_close(got, expected)
        for path in (folder, folder / "weights.pt"):
            unet = load_pretrained(path, "unet")
            assert isinstance(unet, UNet3D if dims == 3 else UNet2D)
            torch.testing.assert_close(unet(x), restoration)
        for path in (folder, folder / "encoder.pt", folder / "weights.pt"):
            encoder = load_pretrained(path)
            assert isinstance(encoder, ENCODERS[dims]) and not encoder.training
            torch.testing.assert_close(encoder(x)[0], bottleneck)

        # Plain state dicts: no key surgery, no map_location needed.
        encoder = ENCODERS[dims](WIDTH[dims]).eval()
        encoder.load_state_dict(torch.load(folder / "encoder.pt"))
        torch.testing.assert_close(encoder(x)[0], bottleneck)
        fresh = GenesisNet(NetworkSettings.from_dict(architecture)).eval()
        fresh.load_state_dict(torch.load(folder / "weights.pt"))
        torch.testing.assert_close(fresh(x)[1], logits)

        # The package files alone (a folder shared without the pickled .pt files) load to the same outputs.
        package = tmp_path / "package"
        package.mkdir()
        for name in ("model.safetensors", "config.json", "README.md"):
            (package / name).write_bytes((folder / name).read_bytes())
        torch.testing.assert_close(load_pretrained(package, "unet")(x), restoration)
        torch.testing.assert_close(load_pretrained(package)(x)[0], bottleneck)
        torch.testing.assert_close(load_pretrained(package, "full")(x)[1], logits)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == {k: v for k, v in architecture.items() if k != "extra"}
    assert (
        config["input"]["axes"] == ("N, 1, z, y, x" if dims == 3 else "N, 1, y, x")
        and config["method"] == "semantic_genesis"
    )
    card = (folder / "README.md").read_text()
    assert card.startswith("# semantic_genesis pretrained") and "## Not for" in card and "load_pretrained" in card


def test_decoder_classes_and_skip_count() -> None:
    assert isinstance(UNet3D(2).decoder, Decoder3D) and isinstance(UNet2D(2).decoder, Decoder2D)
    with pytest.raises(ValueError, match="skip"):
        Decoder3D(2)(torch.zeros(1, 32, 2, 2, 2), [])


def test_load_pretrained_errors(tmp_path: Path) -> None:
    folder = tmp_path / "pretrained"
    save_pretrained(GenesisNet(NetworkSettings(dims=2, base_width=2)), folder)
    with pytest.raises(ValueError, match="full, unet, encoder"):
        load_pretrained(folder, "decoder")
    with pytest.raises(ValueError, match="only encoder weights"):
        load_pretrained(folder / "encoder.pt", "unet")
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_pretrained(folder / "missing.pt")
    (folder / "architecture.json").unlink()
    with pytest.raises(FileNotFoundError, match="architecture.json"):
        load_pretrained(folder)
    with pytest.raises(TypeError):
        save_pretrained(GenesisNet(NetworkSettings(dims=2, base_width=2)), folder, extra={"path": folder})
    assert not (folder / "architecture.json").exists()  # nothing written when extra cannot be stored


# Runs in a fresh interpreter that never imports semantic_genesis: the exported programs need plain PyTorch only.
_PLAIN_TORCH = """
import sys, torch
folder, data = sys.argv[1], torch.load(sys.argv[2])
outputs = {}
for name in ("encoder", "unet"):
    program = torch.export.load(f"{folder}/{name}.pt2").module()
    outputs[name] = [program(x) for x in data["inputs"]]
assert not any(m.startswith("semantic_genesis") for m in sys.modules), "the package was imported"
torch.save(outputs, sys.argv[3])
"""


@pytest.mark.parametrize("dims", [2, 3])
def test_exported_programs_run_without_the_package(dims: int, tmp_path: Path) -> None:
    import subprocess
    import sys

    from semantic_genesis.networks.export import export_pretrained

    folder = tmp_path / "pretrained"
    save_pretrained(trained_net(dims), folder)
    assert sorted(export_pretrained(folder)) == ["encoder", "unet"]
    divisor = 8 if dims == 3 else 32
    # Other batch and spatial sizes than the export's example (2 and 3 x divisor on every axis).
    shapes = [(1, 1, *[2 * divisor] * dims), (3, 1, *[divisor * (k + 2) for k in range(dims)])]
    inputs = [torch.rand(*shape) for shape in shapes]
    torch.save({"inputs": inputs}, tmp_path / "inputs.pt")
    done = subprocess.run(
        [sys.executable, "-c", _PLAIN_TORCH, str(folder), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    outputs = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        for x, got in zip(inputs, outputs["unet"]):
            torch.testing.assert_close(got, load_pretrained(folder, "unet")(x))
        for x, (bottleneck, skips) in zip(inputs, outputs["encoder"]):
            expected, expected_skips = load_pretrained(folder, "encoder")(x)
            torch.testing.assert_close(bottleneck, expected)
            assert len(skips) == len(expected_skips)


def test_monai_example_fine_tunes_a_pretrained_unet(tmp_path: Path) -> None:
    import subprocess
    import sys

    save_pretrained(trained_net(3), tmp_path / "pretrained")
    example = Path(__file__).parents[1] / "docs" / "examples" / "monai_finetune.py"
    command = [sys.executable, str(example), str(tmp_path / "pretrained"), "--steps", "3", "--size", "16", "32", "32"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    losses = [float(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines() if line.startswith("step ")]
    assert len(losses) == 3 and all(0 <= loss <= 1 for loss in losses)
