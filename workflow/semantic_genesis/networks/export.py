"""The encoder and the U-Net of a pretrained folder as torch.export programs, for users without this package.

`torch.export.load("unet.pt2").module()(x)` runs them with plain PyTorch. Batch size and every spatial size are
dynamic (spatial sizes in multiples of the network's divisor, at least twice it); the programs are in evaluation
mode.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch.export import Dim

from ..runtime.files import atomic_path
from .genesis import load_pretrained
from .package import DIVISORS, EXPORTS

log = logging.getLogger(__name__)

# Sizes the programs accept, in multiples of the divisor: from 2 (at 1, a 2D bottleneck of one pixel traces other
# broadcasting) to 128 (1,024 voxels per axis in 3D), far above any patch.
_MAX_BATCH, _MIN_STEPS, _MAX_STEPS = 4096, 2, 128


def export_program(module: torch.nn.Module, dims: int) -> torch.export.ExportedProgram:
    """An exported program of an eval-mode module taking (N, 1, *spatial), sizes dynamic."""
    divisor = DIVISORS[dims]
    example = torch.rand(2, 1, *[3 * divisor] * dims)
    spatial = {2 + i: divisor * Dim(f"steps{i}", min=_MIN_STEPS, max=_MAX_STEPS) for i in range(dims)}
    shapes = {"x": {0: Dim("batch", min=1, max=_MAX_BATCH), **spatial}}
    with torch.no_grad():
        return torch.export.export(module.eval(), (example,), dynamic_shapes=shapes)


def export_pretrained(folder: Path | str) -> dict[str, Path]:
    """Write encoder.pt2 and unet.pt2 into a pretrained folder; return their paths."""
    folder = Path(folder)
    written = {}
    for part, name in EXPORTS.items():
        started = time.perf_counter()
        module = load_pretrained(folder, part=part)
        dims = next(module.parameters()).ndim - 2  # the first convolution's kernel: (out, in, *spatial)
        program = export_program(module, dims)
        with atomic_path(folder / name) as tmp:
            torch.export.save(program, tmp)
        written[part] = folder / name
        log.info("exported the %s of %s to %s in %.1f s", part, folder, written[part], time.perf_counter() - started)
    return written
