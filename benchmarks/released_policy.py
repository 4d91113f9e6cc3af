"""Distribution of the `released` policy beside the authors' Semantic Genesis transforms, on 64x64x32 cubes.

    python benchmarks/released_policy.py [--authors PATH/TO/SemanticGenesis] [--samples 400]

Each statistic is measured the same black-box way on both sides, from the transform's output on probe cubes:
- elastic: RMS in-plane displacement (voxels), read off two linear ramps (bilinear resampling keeps a ramp exact);
- shuffle / inpaint: fraction of voxels changed on a noise cube; outpaint: fraction kept;
- nonlinear: mean |change| on a noise cube, and the fraction of decreasing maps.
The authors' file is imported from the given checkout (`pytorch/utils/purturbation.py`; scikit-image, which it imports
but does not use for these functions, is stubbed). tests/test_transforms.py pins the numbers this printed for it.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

from semantic_genesis.pretrain import transforms as T

SHAPE_ZYX = (32, 64, 64)  # ours; the authors' cube is (1, 64, 64, 32) indexed (channel, x, y, z)


def probes(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Noise and two in-plane ramps, in our (z, y, x) layout, float64."""
    z, h, w = SHAPE_ZYX
    ramp_y = np.broadcast_to(np.arange(h)[None, :, None] / (h - 1), SHAPE_ZYX).copy()
    ramp_x = np.broadcast_to(np.arange(w)[None, None, :] / (w - 1), SHAPE_ZYX).copy()
    return {"noise": rng.random(SHAPE_ZYX), "ramp_y": ramp_y, "ramp_x": ramp_x}


def statistics(step: str, apply: Callable[[np.ndarray], np.ndarray], probe: dict[str, np.ndarray]) -> dict[str, float]:
    """The statistics of one transform draw, `apply` mapping a (z, y, x) cube to its transformed cube."""
    if step == "elastic":
        dy = (apply(probe["ramp_y"]) - probe["ramp_y"]) * (SHAPE_ZYX[1] - 1)
        dx = (apply(probe["ramp_x"]) - probe["ramp_x"]) * (SHAPE_ZYX[2] - 1)
        return {"elastic_ms": float(np.mean(dy**2 + dx**2))}
    out = apply(probe["noise"])
    changed = float(np.mean(~np.isclose(out, probe["noise"], atol=1e-6)))
    if step == "nonlinear":
        decreasing = float(np.corrcoef(out.ravel(), probe["noise"].ravel())[0, 1] < 0)
        return {
            "nonlinear_abs_change": float(np.mean(np.abs(out - probe["noise"]))),
            "nonlinear_decreasing": decreasing,
        }
    return {
        f"{step}_changed" if step != "outpaint" else "outpaint_kept": changed if step != "outpaint" else 1 - changed
    }


def summarise(samples: dict[str, list[float]]) -> dict[str, float]:
    """Means over draws; the elastic mean square becomes an RMS."""
    out = {k: float(np.mean(v)) for k, v in samples.items()}
    out["elastic_rms"] = float(np.sqrt(out.pop("elastic_ms")))
    return out


def ours(n: int, seed: int = 0) -> dict[str, float]:
    """Statistics of this project's `released` policy: n draws of each step, from the policy's own plans."""
    probe = probes(np.random.default_rng(seed))
    samples: dict[str, list[float]] = {}
    counts = dict.fromkeys(("elastic", "local_shuffle", "nonlinear", "inpaint", "outpaint"), 0)
    index = 0
    while min(counts.values()) < n:
        for name, params in T.draw("released", SHAPE_ZYX, T.sample_generator(seed, 0, index)):
            if counts[name] < n:
                step = T.NUMPY_STEPS[name]
                for k, v in statistics(name, lambda x, f=step, p=params: f(x.astype(np.float32), p), probe).items():
                    samples.setdefault(k, []).append(v)
                counts[name] += 1
        index += 1
    return summarise(samples)


def load_authors(root: Path) -> types.ModuleType:
    """The authors' purturbation.py as a module."""
    stub = types.ModuleType("skimage")
    stub.transform = types.ModuleType("skimage.transform")
    stub.transform.resize = None
    sys.modules.setdefault("skimage", stub)
    sys.modules.setdefault("skimage.transform", stub.transform)
    spec = importlib.util.spec_from_file_location("purturbation", root / "pytorch" / "utils" / "purturbation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def authors(root: Path, n: int, seed: int = 0) -> dict[str, float]:
    """The same statistics of the authors' functions, each drawn n times (their global random state, seeded)."""
    code = load_authors(root)
    random.seed(seed)
    np.random.seed(seed)
    probe = probes(np.random.default_rng(seed))

    def theirs(f: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """Our (z, y, x) cube through their (1, x, y, z) layout and back."""
        return lambda x: f(x.transpose(2, 1, 0)[None].copy())[0].transpose(2, 1, 0)

    functions = {
        "elastic": code.elastic_transform,
        "local_shuffle": code.local_pixel_shuffling,
        "nonlinear": code.nonlinear_transformation,
        "inpaint": code.image_in_painting,
        "outpaint": code.image_out_painting,
    }
    samples: dict[str, list[float]] = {}
    for step, f in functions.items():
        for _ in range(n):
            for k, v in statistics(step, theirs(f), probe).items():
                samples.setdefault(k, []).append(v)
    return summarise(samples)


def main() -> None:
    """Print both columns."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors", type=Path, help="a checkout of fhaghighi/SemanticGenesis")
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    mine = ours(args.samples)
    theirs = authors(args.authors, args.samples) if args.authors else {}
    print(f"{'statistic':24} {'ours':>10} {'authors':>10}")
    for k, v in mine.items():
        other = f"{theirs[k]:10.5g}" if k in theirs else f"{'-':>10}"
        print(f"{k:24} {v:10.5g} {other}")


if __name__ == "__main__":
    main()
