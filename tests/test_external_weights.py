"""Importing the authors' released checkpoints: exact outputs, their layout and names, and refused input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semantic_genesis.networks.external import WeightsImportError, import_weights
from semantic_genesis.networks.genesis import load_pretrained
from semantic_genesis.runtime.provenance import file_digest


class TheirBatchNorm(nn.BatchNorm3d):
    """Their ContBatchNorm3d: batch statistics always, in train and eval mode alike (unless told otherwise)."""

    always_batch = True

    def forward(self, x):
        training = True if self.always_batch else self.training
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training, 0.1, self.eps)


class Conv(nn.Module):
    """Their LUConv: conv 3 with bias, batch norm, ReLU."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.bn1 = TheirBatchNorm(cout)

    def forward(self, x):
        return F.relu(self.bn1(self.conv1(x)))


def ops(cin, mid, cout):
    return nn.Sequential(Conv(cin, mid), Conv(mid, cout))


class Down(nn.Module):
    def __init__(self, cin, mid, cout):
        super().__init__()
        self.ops = ops(cin, mid, cout)


class Up(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(cin, cin, 2, stride=2)
        self.ops = ops(cin + cin // 2, cout, cout)


class Out(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.final_conv = nn.Conv3d(cin, 1, 1)


class TheirUNet(nn.Module):
    """Their U-Net's module names and arithmetic on (N, 1, x, y, z), at any base width (theirs is 32)."""

    def __init__(self, w=4, head=False):
        super().__init__()
        self.down_tr64, self.down_tr128 = Down(1, w, 2 * w), Down(2 * w, 2 * w, 4 * w)
        self.down_tr256, self.down_tr512 = Down(4 * w, 4 * w, 8 * w), Down(8 * w, 8 * w, 16 * w)
        self.up_tr256, self.up_tr128, self.up_tr64 = Up(16 * w, 8 * w), Up(8 * w, 4 * w), Up(4 * w, 2 * w)
        self.out_tr = Out(2 * w)
        if head:  # Semantic Genesis' classification head, which the import drops
            self.clc_out = nn.Module()
            self.clc_out.conv1 = nn.Conv3d(16 * w, 1024, 3, padding=1)
            self.clc_out.fc1 = nn.Linear(1024, 44)

    def forward(self, x):
        skips = []
        for level in (self.down_tr64, self.down_tr128, self.down_tr256):
            x = level.ops(x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        x = self.down_tr512.ops(x)
        for up, skip in zip((self.up_tr256, self.up_tr128, self.up_tr64), reversed(skips)):
            x = up.ops(torch.cat([up.up_conv(x), skip], 1))
        return torch.sigmoid(self.out_tr.final_conv(x))


def their_checkpoint(path, w=4, head=False, seed=0, prefix="module."):
    """A checkpoint as theirs: {'state_dict': ...} under DataParallel's prefix, random weights and statistics."""
    torch.manual_seed(seed)
    net = TheirUNet(w, head)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif name.endswith(("running_mean", "bias")) or name.endswith("bn1.weight"):
                tensor.normal_(0, 0.5)
    torch.save({"epoch": 3, "state_dict": {prefix + k: v for k, v in net.state_dict().items()}}, path)
    return net


def _xyz(x):
    """Our (N, 1, z, y, x) batch in their (N, 1, x, y, z) order, and back (the same permutation)."""
    return x.permute(0, 1, 4, 3, 2)


@pytest.mark.parametrize("fmt", ["models_genesis", "semantic_genesis"])
def test_imported_network_gives_their_outputs(tmp_path, fmt):
    theirs = their_checkpoint(tmp_path / "their.pt", head=fmt == "semantic_genesis")
    dest = import_weights(tmp_path / "their.pt", tmp_path / "imported", fmt)
    x = torch.rand(3, 1, 16, 24, 32)  # ours: z 16, y 24, x 32 (unequal, so that a wrong axis order shows)
    ours = load_pretrained(dest, part="unet")
    # Batch statistics, as their batch norm always uses: our network in training mode.
    ours.train()
    theirs.train()
    with torch.no_grad():
        expected = _xyz(theirs(_xyz(x)))
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=0)
        # Running statistics (our eval mode) against their layers with running statistics: the folded bias is exact.
        for module in theirs.modules():
            if isinstance(module, TheirBatchNorm):
                module.always_batch = False
        ours.eval()
        theirs.eval()
        torch.testing.assert_close(ours(x), _xyz(theirs(_xyz(x))), atol=1e-5, rtol=0)
        bottleneck, _ = load_pretrained(dest, part="encoder")(x)
        assert bottleneck.shape == (3, 64, 2, 3, 4)
    import json

    architecture = json.loads((dest / "architecture.json").read_text())
    external = architecture["extra"]["external"]
    assert external["file"] == "their.pt" and external["format"] == fmt
    assert external["sha256"] == file_digest(tmp_path / "their.pt") and architecture["base_width"] == 4
    assert bool(external["dropped"]) == (fmt == "semantic_genesis")


def test_full_width_checkpoint_shapes(tmp_path):
    theirs = their_checkpoint(tmp_path / "g.pt", w=32, prefix="")  # the released width; no prefix loads too
    net = load_pretrained(import_weights(tmp_path / "g.pt", tmp_path / "g", "models_genesis"), part="unet")
    biases = sum(p.numel() for name, p in theirs.named_parameters() if name.endswith("conv1.bias"))
    assert sum(p.numel() for p in theirs.parameters()) == 19_073_665 and biases == 2_336  # folded into running means
    assert sum(p.numel() for p in net.parameters()) == 19_071_329


def test_bad_checkpoints_are_named_and_nothing_is_written(tmp_path):
    their_checkpoint(tmp_path / "ok.pt")
    state = torch.load(tmp_path / "ok.pt", weights_only=True)["state_dict"]
    cases = {
        "missing": ({k: v for k, v in state.items() if "up_tr64.ops.1.bn1.running_var" not in k}, "is missing"),
        "unexpected": ({**state, "module.extra.weight": torch.zeros(1)}, "unexpected key 'extra.weight'"),
        "shape": ({**state, "module.up_tr128.ops.0.conv1.weight": torch.zeros(8, 24, 3, 3, 2)}, "has shape"),
        "head_in_mg": ({**state, "module.clc_out.fc1.weight": torch.zeros(44, 1024)}, "unexpected key 'clc_out"),
    }
    for name, (broken, message) in cases.items():
        torch.save({"state_dict": broken}, tmp_path / f"{name}.pt")
        with pytest.raises(WeightsImportError, match=message) as info:
            import_weights(tmp_path / f"{name}.pt", tmp_path / name, "models_genesis")
        assert f"{name}.pt" in str(info.value) and not (tmp_path / name).exists()
    torch.save({"state_dict": state, "code": Conv(1, 2)}, tmp_path / "pickled.pt")  # a pickled module
    with pytest.raises(WeightsImportError, match="weights_only=True refused"):
        import_weights(tmp_path / "pickled.pt", tmp_path / "pickled", "models_genesis")
    assert not (tmp_path / "pickled").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(FileExistsError, match="not a pretrained folder"):
        import_weights(tmp_path / "ok.pt", tmp_path / "mine", "models_genesis")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"


def test_command_line(tmp_path):
    their_checkpoint(tmp_path / "sg.pt", head=True)
    command = [sys.executable, "-m", "semantic_genesis", "import-weights", "--format", "semantic_genesis"]
    done = subprocess.run([*command, str(tmp_path / "sg.pt"), str(tmp_path / "sg")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "load_pretrained" in done.stdout and (tmp_path / "sg" / "weights.pt").is_file()
    failed = subprocess.run([*command, str(tmp_path / "none.pt"), str(tmp_path / "x")], capture_output=True, text=True)
    assert failed.returncode == 1 and "none.pt: no such checkpoint file" in failed.stderr
