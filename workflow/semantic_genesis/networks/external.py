"""The authors' released PyTorch checkpoints as pretrained folders that load_pretrained reads like ours.

Models Genesis (`Genesis_Chest_CT.pt`, the U-Net of their `pytorch/unet3d.py`) and Semantic Genesis
(`semantic_genesis_chest_ct.pt`, the YNet of their `pytorch/models/ynet3d.py`) are dicts with a `state_dict` whose
keys carry DataParallel's `module.` prefix. Their U-Net is ours layer for layer, with two differences that the
conversion removes exactly:

- their tensors are (N, 1, x, y, z) and ours (N, 1, z, y, x): every kernel's three spatial axes are reversed;
- their convolutions before a batch norm have a bias, ours do not: a bias b followed by batch norm equals no bias and a
  running mean lowered by b (batch statistics subtract it anyway), so it folds into the running mean.

Semantic Genesis' classification head (`clc_out.*`, conv 1024 + one linear layer) is not our head's shape and is not
used by fine-tuning: it is dropped, and architecture.json lists what was dropped.
Keras `.h5` checkpoints are not supported: Keras' batch norm uses epsilon 1e-3 where torch's uses 1e-5, which no
conversion of the weights makes exact under batch statistics.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from ..runtime.files import atomic_path
from ..runtime.provenance import file_digest
from .genesis import GenesisNet, NetworkSettings, save_pretrained

FORMATS = ("models_genesis", "semantic_genesis")
# Their module names, ours in the same order: encoder levels 0-2, then the bottleneck; decoder blocks deepest first.
_DOUBLE_CONVS = {
    "down_tr64.ops": "unet.encoder.down.0",
    "down_tr128.ops": "unet.encoder.down.1",
    "down_tr256.ops": "unet.encoder.down.2",
    "down_tr512.ops": "unet.encoder.bottleneck",
    "up_tr256.ops": "unet.decoder.blocks.0.convs",
    "up_tr128.ops": "unet.decoder.blocks.1.convs",
    "up_tr64.ops": "unet.decoder.blocks.2.convs",
}
_BIASED = {
    "up_tr256.up_conv": "unet.decoder.blocks.0.up",
    "up_tr128.up_conv": "unet.decoder.blocks.1.up",
    "up_tr64.up_conv": "unet.decoder.blocks.2.up",
    "out_tr.final_conv": "unet.decoder.out",
}
_BATCH_NORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# Their Semantic Genesis classification head: dropped (fine-tuning builds its own head).
_DROPPED = {"semantic_genesis": "clc_out."}


class WeightsImportError(ValueError):
    """A checkpoint that cannot be converted exactly; the message names the file and the key."""


def read_checkpoint(path: Path | str) -> dict[str, torch.Tensor]:
    """The state dict of an authors' checkpoint, `module.` prefixes removed, loaded without unpickling code."""
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise WeightsImportError(
            f"{path}: not a plain tensor checkpoint (torch.load with weights_only=True refused it: "
            f"{str(error).splitlines()[0]}); only checkpoints of tensors and plain values are imported"
        ) from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping) or not state:
        raise WeightsImportError(f"{path}: holds no state dict (expected a dict with 'state_dict', or a state dict)")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsImportError(f"{path}: key {key!r} holds a {type(value).__name__}, not a tensor")
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def _spatial_reversed(kernel: torch.Tensor) -> torch.Tensor:
    """A 3D kernel from (x, y, z) to (z, y, x) spatial order."""
    return kernel.permute(0, 1, 4, 3, 2).contiguous()


def _key_map() -> dict[str, str]:
    """Their key -> our key, for every tensor that maps one to one (conv biases before batch norm are folded)."""
    names = {}
    for theirs, ours in _DOUBLE_CONVS.items():
        for j in (0, 1):
            names[f"{theirs}.{j}.conv1.weight"] = f"{ours}.{j}.0.weight"
            names |= {f"{theirs}.{j}.bn1.{p}": f"{ours}.{j}.1.{p}" for p in _BATCH_NORM}
    for theirs, ours in _BIASED.items():
        names |= {f"{theirs}.{p}": f"{ours}.{p}" for p in ("weight", "bias")}
    return names


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    """semantic_genesis when the checkpoint has Semantic Genesis' classification head, else models_genesis."""
    return "semantic_genesis" if any(k.startswith(_DROPPED["semantic_genesis"]) for k in state) else "models_genesis"


def convert_state(state: Mapping[str, torch.Tensor], fmt: str, source: str) -> tuple[dict, int, list[str]]:
    """(our GenesisNet state dict, base width, dropped keys) from their state dict; WeightsImportError naming the key
    that is missing, unexpected or of the wrong shape."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use one of {FORMATS} (or auto, in import_weights)")
    names = _key_map()
    folded = {f"{theirs}.{j}.conv1.bias": f"{ours}.{j}.1.running_mean" for theirs, ours in _DOUBLE_CONVS.items()
              for j in (0, 1)}  # fmt: skip
    first = "down_tr64.ops.0.conv1.weight"
    if first not in state:
        raise WeightsImportError(f"{source}: key {first!r} is missing: not a {fmt} checkpoint")
    width = int(state[first].shape[0])
    expected = GenesisNet(NetworkSettings(dims=3, base_width=width, num_classes=0)).state_dict()
    drop = _DROPPED.get(fmt)
    dropped = sorted(k for k in state if drop and k.startswith(drop))
    unexpected = sorted(set(state) - set(names) - set(folded) - set(dropped))
    if unexpected:
        raise WeightsImportError(
            f"{source}: unexpected key {unexpected[0]!r} for format {fmt} ({len(unexpected)} in all)"
        )
    missing = sorted(set(names) - set(state)) + sorted(set(folded) - set(state))
    if missing:
        raise WeightsImportError(f"{source}: key {missing[0]!r} is missing ({len(missing)} missing keys)")
    converted = {}
    for theirs, ours in names.items():
        tensor = state[theirs]
        converted[ours] = (_spatial_reversed(tensor) if tensor.ndim == 5 else tensor).to(expected[ours].dtype)
    for theirs, ours in {**names, **folded}.items():
        want = expected[ours].shape
        got = converted[ours].shape if theirs in names else state[theirs].shape
        if got != want:
            spatial = tuple(want[2:][::-1])
            raise WeightsImportError(
                f"{source}: key {theirs!r} has shape {tuple(state[theirs].shape)}, expected "
                f"{tuple(want[:2]) + spatial} for base width {width}"
            )
    for theirs, ours in folded.items():
        converted[ours] = converted[ours] - state[theirs].to(converted[ours].dtype)
    return converted, width, dropped


def import_weights(src: Path | str, dest: Path | str, fmt: str) -> Path:
    """Convert an authors' checkpoint into a pretrained folder at dest (written only when complete; an existing dest
    must be a folder this function wrote or empty); fmt "auto" tells the formats apart by the classification head."""
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such checkpoint file")
    if dest.exists() and any(dest.iterdir()) and not (dest / "architecture.json").is_file():
        raise FileExistsError(f"{dest} exists and is not a pretrained folder: choose an empty or new folder")
    state = read_checkpoint(src)
    fmt = detect_format(state) if fmt == "auto" else fmt
    state, width, dropped = convert_state(state, fmt, str(src))
    net = GenesisNet(NetworkSettings(dims=3, base_width=width, num_classes=0))
    net.load_state_dict(state)
    extra = {
        "method": f"external:{fmt}",
        "external": {"file": src.name, "sha256": file_digest(src), "format": fmt, "dropped": dropped},
        "input_axes": "N, 1, z, y, x",
    }
    with atomic_path(dest) as tmp:
        save_pretrained(net, tmp, extra=extra)
    return dest
