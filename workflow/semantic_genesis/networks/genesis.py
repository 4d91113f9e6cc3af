"""Pretraining network (shared encoder, restoration decoder, classification head) and its pretrained-weight files.

A folder written by save_pretrained holds weights.pt (the whole GenesisNet), encoder.pt (the encoder alone) and
architecture.json (the NetworkSettings that rebuild the modules). Both weight files are plain state dicts of CPU
tensors, so `Encoder3D().load_state_dict(torch.load("encoder.pt"))` works without any key surgery. The same folder
is a model package (networks/package.py): model.safetensors, config.json and a model card, which load_pretrained
reads as well when the .pt files are absent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..runtime.files import atomic_path
from ..settings import Settings
from .package import CONFIG_FILE, SAFETENSORS_FILE, read_package, write_package
from .unet2d import ResNetEncoder2D, UNet2D
from .unet3d import Encoder3D, UNet3D, conv_bn_relu

PARTS = ("full", "unet", "encoder")
WEIGHTS_FILE = "weights.pt"
ENCODER_FILE = "encoder.pt"
ARCHITECTURE_FILE = "architecture.json"
_UNETS: dict[int, type[nn.Module]] = {2: UNet2D, 3: UNet3D}
ENCODERS: dict[int, type[nn.Module]] = {2: ResNetEncoder2D, 3: Encoder3D}


@dataclass(frozen=True)
class NetworkSettings(Settings):
    """Architecture of a GenesisNet; the paper uses base_width 32 in 3D and 64 in 2D, head_width 1024."""

    dims: int = 3
    base_width: int = 32
    num_classes: int = 0
    head_width: int = 1024
    restoration: bool = True

    def __post_init__(self) -> None:
        if self.dims not in _UNETS:
            raise ValueError(f"dims must be 2 or 3, not {self.dims}")
        if self.base_width < 1 or self.head_width < 1 or self.num_classes < 0:
            raise ValueError("base_width and head_width must be positive and num_classes non-negative")
        if not self.restoration and self.num_classes == 0:
            raise ValueError("a network without restoration needs num_classes > 0, or it has no output")


class ClassificationHead(nn.Module):
    """Conv 3 + batch norm + ReLU on the bottleneck, global average pool, FC head_width + ReLU, FC to class logits."""

    def __init__(self, dims: int, in_channels: int, num_classes: int, head_width: int = 1024):
        super().__init__()
        self.conv = conv_bn_relu(dims, in_channels, in_channels)
        self.fc = nn.Sequential(
            nn.Linear(in_channels, head_width), nn.ReLU(inplace=True), nn.Linear(head_width, num_classes)
        )

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes); no softmax, so cross-entropy gets them directly."""
        return self.fc(self.conv(bottleneck).flatten(2).mean(2))


def build_unet(dims: int, base_width: int, out_channels: int = 1, activation: str | None = "sigmoid") -> nn.Module:
    """UNet3D (dims 3) or UNet2D (dims 2) with one input channel."""
    if dims not in _UNETS:
        raise ValueError(f"dims must be 2 or 3, not {dims}")
    return _UNETS[dims](base_width, 1, out_channels, activation)


def build_encoder(dims: int, base_width: int) -> nn.Module:
    """The encoder alone: Encoder3D (dims 3) or ResNetEncoder2D (dims 2), as the U-Net of that dimension has it."""
    if dims not in ENCODERS:
        raise ValueError(f"dims must be 2 or 3, not {dims}")
    return ENCODERS[dims](base_width)


class GenesisNet(nn.Module):
    """Shared encoder, restoration decoder and optional classification head."""

    def __init__(self, settings: NetworkSettings):
        super().__init__()
        self.settings = settings
        self.unet = build_unet(settings.dims, settings.base_width)
        self.head = (
            ClassificationHead(settings.dims, self.unet.encoder.out_channels, settings.num_classes, settings.head_width)
            if settings.num_classes
            else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(restoration in [0, 1] or None without restoration, class logits or None without a head)."""
        bottleneck, skips = self.unet.encoder(x)
        restoration = self.unet.decoder(bottleneck, skips) if self.settings.restoration else None
        logits = self.head(bottleneck) if self.head is not None else None
        return restoration, logits


def count_parameters(module: nn.Module) -> int:
    """Number of parameters, trainable or frozen (buffers such as batch-norm statistics excluded)."""
    return sum(p.numel() for p in module.parameters())


def _save_state(module: nn.Module, path: Path) -> None:
    """Write a module's state dict as CPU tensors, atomically, so it loads on machines without the training device."""
    with atomic_path(path) as tmp:
        torch.save({name: tensor.cpu() for name, tensor in module.state_dict().items()}, tmp)


def save_pretrained(model: GenesisNet, folder: Path | str, extra: Mapping | None = None) -> None:
    """Write weights.pt, encoder.pt and architecture.json (settings plus JSON-serialisable `extra`) into folder."""
    folder = Path(folder)
    # Serialise first: unserialisable extra fails before any file of the folder is replaced.
    architecture = json.dumps({**asdict(model.settings), "extra": dict(extra or {})}, indent=2) + "\n"
    _save_state(model, folder / WEIGHTS_FILE)
    _save_state(model.unet.encoder, folder / ENCODER_FILE)
    write_package(folder, model.state_dict(), asdict(model.settings), dict(extra or {}))
    with atomic_path(folder / ARCHITECTURE_FILE) as tmp:
        tmp.write_text(architecture)


def load_pretrained(path: Path | str, part: str = "encoder", map_location: str | torch.device = "cpu") -> nn.Module:
    """GenesisNet ("full"), its U-Net ("unet") or its encoder ("encoder") from a save_pretrained folder, in eval mode.

    path is the folder, or weights.pt / encoder.pt inside it; architecture.json is read from the same folder. A folder
    with only the package files (model.safetensors and config.json) loads too.
    """
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; valid parts are {', '.join(PARTS)}")
    path = Path(path)
    if path.is_dir():
        folder, weights = path, path / (ENCODER_FILE if part == "encoder" else WEIGHTS_FILE)
    else:
        folder, weights = path.parent, path
    architecture = folder / ARCHITECTURE_FILE
    if path.is_dir() and not weights.is_file() and (folder / SAFETENSORS_FILE).is_file():
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{folder / CONFIG_FILE} is missing: it says what {SAFETENSORS_FILE} holds")
        values, state = read_package(folder, "encoder" if part == "encoder" else "full")
    else:
        if not architecture.is_file():
            raise FileNotFoundError(
                f"{architecture} is missing: load_pretrained reads a folder written by save_pretrained"
            )
        if not weights.is_file():
            raise FileNotFoundError(f"no weights file at {weights}")
        values = json.loads(architecture.read_text())
        state = torch.load(weights, map_location=map_location, weights_only=True)
    settings = NetworkSettings.from_dict(values)
    # Judge by content rather than file name, so renamed copies of encoder.pt are recognised too.
    if not any(name.startswith("unet.") for name in state):
        if part != "encoder":
            raise ValueError(
                f"{weights} holds only encoder weights: load part 'encoder' from it, or part {part!r} from "
                f"{folder / WEIGHTS_FILE}"
            )
        module = build_encoder(settings.dims, settings.base_width)
        module.load_state_dict(state)
    else:
        net = GenesisNet(settings)
        net.load_state_dict(state)
        module = {"full": net, "unet": net.unet, "encoder": net.unet.encoder}[part]
    return module.to(map_location).eval()
