"""Self-restoration transforms (Models Genesis / Semantic Genesis): numpy per sample, torch per batch (CPU or GPU).

Patches are float arrays in [0, 1] indexed [z, y, x] (3D) or [y, x] (2D); every rule applies to each spatial axis.
Drawing is separate from applying: `draw` turns a policy and a random generator into a `Plan` (`draw_step`: one step's
params), and `apply` is a pure function of (patch, plan). Steps that need many random numbers (pixel permutations,
noise) carry an integer seed and derive them from it, so a plan stays small and replays to the same bytes. Local
shuffling draws window sizes and positions from float32 uniforms (floor(u * n)), and permutes by sorting random keys.

A `Plan` is a tuple of (step name, frozen params) pairs, applied in order to the network input; "flip" steps act on the
restoration target too, which starts as the patch. The empty plan is the identity. Steps:

- "flip" `Flip`: mirror spatial axes (the original flipped the channel axis instead of depth; we flip any spatial axis).
- "local_shuffle" `LocalShuffle`: many small windows, each refilled with a permutation of the input's window voxels.
- "nonlinear" `NonLinear`: monotone Bezier intensity map (increasing, or decreasing when inverted).
- "inpaint" `Paint`: blocks filled with uniform noise.
- "outpaint" `Paint`: everything uniform noise except windows kept from the input.
- "elastic" `Elastic`: elastic deformation of the in-plane axes (y, x); the field is drawn over the whole patch and
  smoothed in all its dimensions, so it varies from slice to slice (the released code's `elastic_transform`).
- "patch_shuffle" `PatchShuffle`: swaps of two non-overlapping patches (context restoration, Chen et al. 2019).

Policies: "identity"; "models_genesis" (the paper: flip -> local shuffle -> non-linear -> in-/out-painting); "released"
(the released Semantic Genesis code, `pytorch/utils/purturbation.py` and `data_loader.py`: elastic, then exactly one of
local shuffle, non-linear, in-painting, out-painting at 1/4 each, with that code's counts `RELEASED_COUNTS`: 5 shuffle
windows, one in-painted block, one kept window; target = the patch before deformation; no flips); "inpainting" (Pathak
et al., at least one block); "patch_shuffling".

The Bezier control points are (0, 0), (x1, y1), (x2, y2), (1, 1) with four independent uniform numbers, as in the
original code; points on the diagonal (r1, r1), (r2, r2) would make the map the identity.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache, reduce
from math import prod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ..settings import Settings

POLICIES: tuple[str, ...] = ("identity", "models_genesis", "released", "inpainting", "patch_shuffling")
Plan = tuple[tuple[str, Any], ...]

# Intervals of the non-linear map's lookup table, and Bezier samples it is resampled from (max error ~1e-4).
LUT_SIZE = 1024
BEZIER_SAMPLES = 2048
# Samples per torch local-shuffle chunk: bounds memory at about 250k index entries per sample.
SHUFFLE_CHUNK = 16
# The released Semantic Genesis code's fixed counts; the "released" policy uses them whatever the settings say.
RELEASED_COUNTS: dict[str, int] = {"shuffle_windows": 5, "inpaint_max_blocks": 1, "outpaint_extra_windows": 0}


@dataclass(frozen=True)
class TransformSettings(Settings):
    """Probabilities and constants of the transforms; defaults are the spec's (Models Genesis) values."""

    flip_prob: float = 0.4
    max_flips: int = 3
    local_shuffle_prob: float = 0.5
    shuffle_windows: int = 10_000
    shuffle_window_divisor: int = 10  # window side uniform in [1, dim // 10] per axis (at least 1)
    nonlinear_prob: float = 0.9
    invert_prob: float = 0.5
    paint_prob: float = 0.9
    inpaint_prob: float = 0.2  # given painting; out-painting otherwise
    paint_continue_prob: float = 0.95  # another in-painting block / out-painting window while rand < this
    inpaint_max_blocks: int = 5
    inpaint_size_divisors: tuple[int, int] = (6, 3)  # block side uniform in [dim // 6, dim // 3]
    paint_margin: int = 3  # blocks and windows start in [3, dim - size - 3]
    outpaint_extra_windows: int = 4
    outpaint_cut_sevenths: tuple[int, int] = (3, 4)  # window side = dim - uniform[3 * dim // 7, 4 * dim // 7]
    elastic_alpha: float = 991.0
    elastic_sigma: float = 8.0
    patch_swaps: int = 10  # context restoration: swaps of two non-overlapping patches
    swap_patch_fraction: float = 0.125  # swapped patch side = max(1, int(dim * fraction)) per axis


@dataclass(frozen=True)
class Box:
    """An axis-aligned box of voxels: first index and side per spatial axis."""

    start: tuple[int, ...]
    size: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        """Numpy index of the box."""
        return tuple(slice(a, a + n) for a, n in zip(self.start, self.size))


@dataclass(frozen=True)
class Flip:
    """Spatial axes mirrored in turn (an axis flipped twice is unchanged)."""

    axes: tuple[int, ...]


@dataclass(frozen=True)
class LocalShuffle:
    """`windows` boxes of side uniform in [1, max_size] per axis; boxes and permutations derive from `seed`."""

    seed: int
    windows: int
    max_size: tuple[int, ...]


@dataclass(frozen=True)
class NonLinear:
    """Bezier control points (x1, y1), (x2, y2) between (0, 0) and (1, 1); `inverted` makes the map decreasing."""

    control: tuple[float, float, float, float]
    inverted: bool


@dataclass(frozen=True)
class Paint:
    """Boxes filled with noise (in-painting) or kept from the input (out-painting); the noise derives from `seed`."""

    boxes: tuple[Box, ...]
    seed: int


@dataclass(frozen=True)
class Elastic:
    """In-plane displacement: uniform [-1, 1] noise per voxel from `seed`, smoothed with `sigma`, times `alpha`."""

    seed: int
    alpha: float
    sigma: float


@dataclass(frozen=True)
class PatchShuffle:
    """Patches of side `size` swapped pairwise in order; the two starts of a pair never overlap."""

    size: tuple[int, ...]
    pairs: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]


def sample_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample: depends only on (seed, epoch, index), not on DataLoader workers."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


# ---- drawing -------------------------------------------------------------------------------------------------------


def _seed(rng: np.random.Generator) -> int:
    """A fresh integer seed for a step's own random numbers."""
    return int(rng.integers(2**63))


def _start(rng: np.random.Generator, shape: Sequence[int], size: Sequence[int], margin: int) -> tuple[int, ...]:
    """Start uniform in [margin, dim - size - margin] per axis, the margin shrunk where the axis is too short."""
    room = np.asarray(shape) - np.asarray(size)
    lo = np.minimum(margin, room)
    hi = np.maximum(lo, room - margin)
    return tuple(rng.integers(lo, hi + 1).tolist())


def _draw_flip(
    shape: Sequence[int], rng: np.random.Generator, s: TransformSettings, at_least_one: bool = False
) -> Flip | None:
    """Up to max_flips axes, another while rand < flip_prob."""
    axes: list[int] = []
    while len(axes) < s.max_flips and ((at_least_one and not axes) or rng.random() < s.flip_prob):
        axes.append(int(rng.integers(len(shape))))
    return Flip(tuple(axes)) if axes else None


def _draw_local_shuffle(shape: Sequence[int], rng: np.random.Generator, s: TransformSettings) -> LocalShuffle:
    """Window count and per-axis maximum side; the windows themselves derive from the seed."""
    max_size = tuple(max(1, d // s.shuffle_window_divisor) for d in shape)
    return LocalShuffle(_seed(rng), s.shuffle_windows, max_size)


def _draw_nonlinear(rng: np.random.Generator, s: TransformSettings) -> NonLinear:
    """Four uniform control coordinates; inverted with invert_prob."""
    control = tuple(rng.random(4).tolist())
    return NonLinear(control, bool(rng.random() < s.invert_prob))


def _draw_inpaint(
    shape: Sequence[int], rng: np.random.Generator, s: TransformSettings, at_least_one: bool = False
) -> Paint:
    """Up to inpaint_max_blocks blocks, another while rand < paint_continue_prob."""
    lo_div, hi_div = s.inpaint_size_divisors
    boxes = []
    while len(boxes) < s.inpaint_max_blocks and ((at_least_one and not boxes) or rng.random() < s.paint_continue_prob):
        lo = np.maximum(1, np.asarray(shape) // lo_div)
        size = tuple(rng.integers(lo, np.maximum(lo, np.asarray(shape) // hi_div) + 1).tolist())
        boxes.append(Box(_start(rng, shape, size, s.paint_margin), size))
    return Paint(tuple(boxes), _seed(rng))


def _draw_outpaint(shape: Sequence[int], rng: np.random.Generator, s: TransformSettings) -> Paint:
    """One kept window, then up to outpaint_extra_windows more while rand < paint_continue_prob."""
    lo, hi = (np.asarray(shape) * k // 7 for k in s.outpaint_cut_sevenths)
    boxes = []
    while not boxes or (len(boxes) <= s.outpaint_extra_windows and rng.random() < s.paint_continue_prob):
        size = tuple(np.maximum(1, np.asarray(shape) - rng.integers(lo, hi + 1)).tolist())
        boxes.append(Box(_start(rng, shape, size, s.paint_margin), size))
    return Paint(tuple(boxes), _seed(rng))


def _draw_patch_shuffle(shape: Sequence[int], rng: np.random.Generator, s: TransformSettings) -> PatchShuffle:
    """patch_swaps pairs of disjoint patches, the second start redrawn until it does not overlap the first."""
    dims = np.asarray(shape)
    size = np.maximum(1, (dims * s.swap_patch_fraction).astype(int))
    if not np.any(2 * size <= dims):
        raise ValueError(f"swap patches of side {size.tolist()} cannot be disjoint in {tuple(shape)}")
    pairs = []
    for _ in range(s.patch_swaps):
        a = rng.integers(0, dims - size + 1)
        b = rng.integers(0, dims - size + 1)
        while np.all(np.abs(a - b) < size):
            b = rng.integers(0, dims - size + 1)
        pairs.append((tuple(a.tolist()), tuple(b.tolist())))
    return PatchShuffle(tuple(size.tolist()), tuple(pairs))


def _draw_paint(shape: Sequence[int], rng: np.random.Generator, s: TransformSettings) -> tuple[str, Paint]:
    """In-painting with inpaint_prob, else out-painting."""
    if rng.random() < s.inpaint_prob:
        return "inpaint", _draw_inpaint(shape, rng, s)
    return "outpaint", _draw_outpaint(shape, rng, s)


def draw_step(
    step: str, shape: tuple[int, ...], rng: np.random.Generator, settings: TransformSettings = TransformSettings()
) -> Any:
    """Params of one step drawn as the policies do, but always doing something (a flip mirrors at least one axis)."""
    s = settings
    draws: dict[str, Callable[[], Any]] = {
        "flip": lambda: _draw_flip(shape, rng, s, at_least_one=True),
        "local_shuffle": lambda: _draw_local_shuffle(shape, rng, s),
        "nonlinear": lambda: _draw_nonlinear(rng, s),
        "inpaint": lambda: _draw_inpaint(shape, rng, s, at_least_one=True),
        "outpaint": lambda: _draw_outpaint(shape, rng, s),
        "elastic": lambda: Elastic(_seed(rng), s.elastic_alpha, s.elastic_sigma),
        "patch_shuffle": lambda: _draw_patch_shuffle(shape, rng, s),
    }
    if step not in draws:
        raise ValueError(f"unknown step {step!r}; expected one of {tuple(draws)}")
    return draws[step]()


def draw(
    policy: str, shape: tuple[int, ...], rng: np.random.Generator, settings: TransformSettings = TransformSettings()
) -> Plan:
    """The random steps of one sample for a patch of spatial `shape` (2D or 3D)."""
    s = settings
    if policy == "identity":
        return ()
    if policy == "models_genesis":
        steps: list[tuple[str, Any]] = []
        flip = _draw_flip(shape, rng, s)
        if flip is not None:
            steps.append(("flip", flip))
        if rng.random() < s.local_shuffle_prob:
            steps.append(("local_shuffle", _draw_local_shuffle(shape, rng, s)))
        if rng.random() < s.nonlinear_prob:
            steps.append(("nonlinear", _draw_nonlinear(rng, s)))
        if rng.random() < s.paint_prob:
            steps.append(_draw_paint(shape, rng, s))
        return tuple(steps)
    if policy == "released":
        r = replace(s, **RELEASED_COUNTS)
        elastic = ("elastic", Elastic(_seed(rng), r.elastic_alpha, r.elastic_sigma))
        choice = int(rng.integers(4))
        if choice == 0:
            return elastic, ("local_shuffle", _draw_local_shuffle(shape, rng, r))
        if choice == 1:
            return elastic, ("nonlinear", _draw_nonlinear(rng, r))
        if choice == 2:
            return elastic, ("inpaint", _draw_inpaint(shape, rng, r, at_least_one=True))
        return elastic, ("outpaint", _draw_outpaint(shape, rng, r))
    if policy == "inpainting":
        return (("inpaint", _draw_inpaint(shape, rng, s, at_least_one=True)),)
    if policy == "patch_shuffling":
        return (("patch_shuffle", _draw_patch_shuffle(shape, rng, s)),)
    raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")


# ---- numpy steps ---------------------------------------------------------------------------------------------------


def _odd_axes(axes: Sequence[int]) -> tuple[int, ...]:
    """Axes flipped an odd number of times: the only ones that change anything."""
    return tuple(a for a in sorted(set(axes)) if axes.count(a) % 2)


def flip(x: np.ndarray, p: Flip) -> np.ndarray:
    """Mirror the spatial axes of `p`."""
    odd = _odd_axes(p.axes)
    return np.ascontiguousarray(np.flip(x, odd)) if odd else x


def shuffle_boxes(shape: Sequence[int], p: LocalShuffle) -> tuple[np.ndarray, np.ndarray]:
    """(starts, sizes), each (windows, ndim) int64: the local-shuffle windows in drawing order."""
    u = np.random.default_rng([p.seed, 0]).random((2, p.windows, len(shape)), dtype=np.float32)
    sizes = 1 + (u[0] * np.asarray(p.max_size)).astype(np.int64)
    starts = (u[1] * (np.asarray(shape) - sizes + 1)).astype(np.int64)
    return starts, sizes


def _strides(shape: Sequence[int]) -> np.ndarray:
    """Element strides of a C-ordered array."""
    return np.cumprod((*shape[1:], 1)[::-1])[::-1].copy()


def _boxes_3d(shape: Sequence[int], p: LocalShuffle) -> tuple[np.ndarray, ...]:
    """(starts, sizes, strides, max_size) of the windows in three axes: a 2-D patch gets a leading axis of size 1."""
    if len(shape) not in (2, 3):
        raise ValueError(f"local shuffling needs a 2-D or 3-D patch, got shape {tuple(shape)}")
    starts, sizes = shuffle_boxes(shape, p)
    pad = 3 - len(shape)
    if pad:
        starts, sizes = np.insert(starts, 0, 0, axis=1), np.insert(sizes, 0, 1, axis=1)
    return starts, sizes, _strides((1,) * pad + tuple(shape)), np.array((1,) * pad + tuple(p.max_size))


@lru_cache(maxsize=16)
def _box_offsets(shape: tuple[int, ...], max_size: tuple[int, ...]) -> np.ndarray:
    """Flat offsets in `shape` of every box side up to max_size, in raster order: row = mixed-radix code of the
    sides minus one, padded with zeros."""
    table = np.zeros((prod(max_size), prod(max_size)), dtype=np.int64)
    for code, size in enumerate(np.ndindex(*max_size)):
        offsets = np.indices(np.asarray(size) + 1).reshape(len(shape), -1).T @ _strides(shape)
        table[code, : offsets.size] = offsets
    return table


def _stream_blocks(count: np.ndarray) -> np.ndarray:
    """block[c]: where the random keys of the windows of c voxels start; the stream is laid out by window size, each
    size's windows in drawing order (block[-1] is the stream's length)."""
    windows_of = np.bincount(count)
    return np.concatenate(([0], np.cumsum(windows_of * np.arange(len(windows_of)))))


def _index_bits(volume: int) -> int:
    """Low key bits that hold a voxel's flat index."""
    return max(1, (volume - 1).bit_length())


_SCRATCH = threading.local()


def _scratch(size: int) -> np.ndarray:
    """A per-thread int64 buffer of at least `size` entries, kept between calls: fresh pages cost more than the work."""
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.size < size:
        buffer = _SCRATCH.buffer = np.empty(size, dtype=np.int64)
    return buffer


def local_shuffle(x: np.ndarray, p: LocalShuffle) -> np.ndarray:
    """Refill each window with a permutation of its input voxels, the last window over a voxel winning.

    A window's permutation is the order of its random keys: uniform doubles viewed as uint64 (same order) whose low
    bits are replaced by the window's voxel indices, so sorting the keys both shuffles and carries each source voxel.
    Same bytes as `local_shuffle_reference`; the loops over windows are compiled (`kernels`), the row sorts numpy's.
    """
    from . import kernels  # numba: imported by the first job that shuffles

    boxes = _boxes_3d(x.shape, p)  # starts, sizes, strides, max_size
    table = _box_offsets(tuple(x.shape), tuple(p.max_size))
    block = _stream_blocks(reduce(np.multiply, boxes[1].T))  # reduce: faster than prod(axis=1) on short rows
    keys = _scratch(int(block[-1]))[: block[-1]].view(np.uint64)
    np.random.default_rng([p.seed, 1]).random(out=keys.view(np.float64))
    bits = _index_bits(x.size)
    firsts = kernels.window_keys(*boxes, table, block, keys, bits)
    for n in np.flatnonzero(np.diff(block)):
        keys[block[n] : block[n + 1]].reshape(-1, n).sort(axis=1)
    flat = np.ascontiguousarray(x).reshape(-1)
    return kernels.write_windows(flat, *boxes, table, firsts, keys, bits).reshape(x.shape)


def local_shuffle_reference(x: np.ndarray, p: LocalShuffle) -> np.ndarray:
    """`local_shuffle` as a loop over the windows in drawing order, each sorting its keys and writing its voxels (the
    authors' loop): the definition the fast path is tested against and `benchmarks/transforms.py` compares with."""
    starts, sizes = shuffle_boxes(x.shape, p)
    count = reduce(np.multiply, sizes.T)
    cursor = _stream_blocks(count)
    keys = np.random.default_rng([p.seed, 1]).random(int(cursor[-1])).view(np.uint64)
    low = np.uint64(2 ** _index_bits(x.size) - 1)
    index = np.arange(x.size, dtype=np.uint64).reshape(x.shape)
    out, flat = x.copy(), x.reshape(-1)
    for w in range(p.windows):
        n = count[w]
        first = cursor[n]
        cursor[n] += n
        box = tuple(slice(a, a + s) for a, s in zip(starts[w].tolist(), sizes[w].tolist()))
        source = np.sort((keys[first : first + n] & ~low) | index[box].ravel()) & low
        out[box] = flat[source.astype(np.intp)].reshape(out[box].shape)
    return out


def bezier_lut(p: NonLinear) -> np.ndarray:
    """The intensity map sampled at i / LUT_SIZE, i = 0..LUT_SIZE (float32)."""
    x1, y1, x2, y2 = p.control
    t = np.linspace(0.0, 1.0, BEZIER_SAMPLES)
    basis = np.stack([3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3])
    # x(t) and y(t) are monotone for control points in [0, 1]; sorting only removes rounding wiggles.
    xs = np.sort(np.array([x1, x2, 1.0]) @ basis)
    ys = np.sort(np.array([y1, y2, 1.0]) @ basis)
    if p.inverted:
        ys = ys[::-1]
    return np.interp(np.linspace(0.0, 1.0, LUT_SIZE + 1), xs, ys).astype(np.float32)


def nonlinear(x: np.ndarray, p: NonLinear) -> np.ndarray:
    """Map intensities through the Bezier lookup table with linear interpolation."""
    lut = bezier_lut(p)
    # (slope, value) per cell side by side: one gather of 8-byte pairs instead of two of 4 bytes.
    pairs = np.empty((LUT_SIZE, 2), dtype=np.float32)
    pairs[:, 0] = np.diff(lut)
    pairs[:, 1] = lut[:-1]
    pos = x * np.float32(LUT_SIZE)
    cell = np.minimum(np.floor(pos), np.float32(LUT_SIZE - 1))
    pos -= cell  # exact: pos and its cell are within one of each other
    both = np.take(pairs.view(np.float64).reshape(-1), cell.astype(np.intp)).view(np.float32).reshape(*x.shape, 2)
    out = both[..., 0] * pos
    out += both[..., 1]
    return np.clip(out, 0.0, 1.0, out=out)  # guards one-ulp overshoot of the interpolation


def inpaint(x: np.ndarray, p: Paint) -> np.ndarray:
    """Fill each block with uniform noise (later blocks overwrite earlier ones)."""
    rng = np.random.default_rng(p.seed)
    out = x.copy()
    for box in p.boxes:
        out[box.slices] = rng.random(box.size, dtype=np.float32)
    return out


def outpaint(x: np.ndarray, p: Paint) -> np.ndarray:
    """Uniform noise everywhere except the windows, which keep the input."""
    out = np.random.default_rng(p.seed).random(x.shape, dtype=np.float32)
    for box in p.boxes:
        out[box.slices] = x[box.slices]
    return out


def elastic_field(shape: Sequence[int], p: Elastic) -> np.ndarray:
    """Displacement (2, *shape) in voxels along (y, x) at every voxel of a patch of spatial `shape`.

    Smoothing in every dimension with zero padding, as the released code does, makes the field about a quarter of a
    field smoothed per plane (RMS ~5 voxels at 64x64x32 instead of ~20) and weaker near every face.
    """
    noise = np.random.default_rng(p.seed).random((2, *shape)) * 2 - 1
    return np.stack([gaussian_filter(n, p.sigma, mode="constant") * p.alpha for n in noise])


def _reflect(c: np.ndarray, n: int) -> np.ndarray:
    """Fold coordinates into [0, n - 1] by half-sample reflection (scipy "reflect", torch "reflection")."""
    c = np.mod(c + 0.5, 2 * n)
    c = np.where(c >= n, 2 * n - c, c) - 0.5
    return np.clip(c, 0, n - 1)


def elastic(x: np.ndarray, p: Elastic) -> np.ndarray:
    """Bilinear resampling of every (y, x) plane at its displaced positions."""
    h, w = x.shape[-2:]
    dy, dx = elastic_field(x.shape, p).reshape(2, -1, h, w)
    planes = x.reshape(-1, h, w)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    cy, cx = _reflect(yy + dy, h), _reflect(xx + dx, w)
    y0 = np.minimum(cy.astype(np.int64), max(h - 2, 0))
    x0 = np.minimum(cx.astype(np.int64), max(w - 2, 0))
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (cy - y0).astype(np.float32), (cx - x0).astype(np.float32)
    z = np.arange(len(planes))[:, None, None]
    top = planes[z, y0, x0] * (1 - fx) + planes[z, y0, x1] * fx
    bottom = planes[z, y1, x0] * (1 - fx) + planes[z, y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).reshape(x.shape)


def patch_shuffle(x: np.ndarray, p: PatchShuffle) -> np.ndarray:
    """Swap each pair of patches, in order."""
    out = x.copy()
    for a, b in p.pairs:
        sa, sb = Box(a, p.size).slices, Box(b, p.size).slices
        out[sa], out[sb] = out[sb], out[sa].copy()
    return out


NUMPY_STEPS: dict[str, Callable[[np.ndarray, Any], np.ndarray]] = {
    "flip": flip,
    "local_shuffle": local_shuffle,
    "nonlinear": nonlinear,
    "inpaint": inpaint,
    "outpaint": outpaint,
    "elastic": elastic,
    "patch_shuffle": patch_shuffle,
}


def apply(patch: np.ndarray, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """(network input, restoration target), float32: the plan's steps on the input, its flips on the target too."""
    target = np.array(patch, dtype=np.float32)
    x = target
    for name, params in plan:
        if name not in NUMPY_STEPS:
            raise ValueError(f"unknown step {name!r}")
        x = NUMPY_STEPS[name](x, params)
        if name == "flip":
            target = flip(target, params)
    return (x.copy() if x is target else x), target


def _inpainted_boxes(plan: Plan) -> tuple[Box, ...]:
    """Every block a plan's in-painting steps fill."""
    return tuple(box for name, params in plan if name == "inpaint" for box in params.boxes)


def restoration_mask(plan: Plan, shape: Sequence[int]) -> np.ndarray:
    """Bool mask of the voxels a plan in-paints (the region Pathak et al.'s loss covers); all False without any."""
    mask = np.zeros(shape, bool)
    for box in _inpainted_boxes(plan):
        mask[box.slices] = True
    return mask


def transform(
    patch: np.ndarray, policy: str, rng: np.random.Generator, settings: TransformSettings = TransformSettings()
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a plan for the patch and apply it."""
    return apply(patch, draw(policy, patch.shape, rng, settings))


# ---- torch steps: x is (n, *spatial) float32, params one per row ---------------------------------------------------


def _generator(seeds: Sequence[int], device: torch.device) -> torch.Generator:
    """A torch generator determined by the seeds of a batch's steps."""
    seed = int(np.random.SeedSequence([int(s) for s in seeds]).generate_state(2, np.uint64)[0] >> 1)
    return torch.Generator(device=device).manual_seed(seed)


def _flip_t(x: torch.Tensor, params: Sequence[Flip]) -> torch.Tensor:
    """Flip rows grouped by their set of odd axes."""
    out = x.clone()
    odd = [_odd_axes(p.axes) for p in params]
    for axes in set(odd):
        if axes:
            rows = torch.tensor([i for i, a in enumerate(odd) if a == axes], device=x.device)
            out[rows] = x[rows].flip([1 + a for a in axes])
    return out


def _nonlinear_t(x: torch.Tensor, params: Sequence[NonLinear]) -> torch.Tensor:
    """Per-row lookup tables, interpolated by gather."""
    lut = torch.from_numpy(np.stack([bezier_lut(p) for p in params])).to(x.device)
    flat = x.reshape(len(params), -1)
    pos = flat * LUT_SIZE
    cell = pos.floor().clamp(0, LUT_SIZE - 1)
    i = cell.long()
    out = lut.gather(1, i) + (pos - cell) * lut.diff(dim=1).gather(1, i)
    return out.clamp(0.0, 1.0).reshape(x.shape)


def _box_mask(spatial: Sequence[int], boxes: Sequence[tuple[Box, ...]], device: torch.device) -> torch.Tensor:
    """(n, *spatial) bool: inside any of each row's boxes."""
    most = max(1, max(len(b) for b in boxes))
    lo = np.zeros((len(boxes), most, len(spatial)), dtype=np.int64)
    hi = np.zeros_like(lo)  # padding boxes are empty
    for i, row in enumerate(boxes):
        for j, box in enumerate(row):
            lo[i, j] = box.start
            hi[i, j] = np.add(box.start, box.size)
    lo_t, hi_t = torch.from_numpy(lo).to(device), torch.from_numpy(hi).to(device)
    mask = torch.ones((len(boxes), most) + (1,) * len(spatial), dtype=torch.bool, device=device)
    for d, dim in enumerate(spatial):
        ar = torch.arange(dim, device=device)
        inside = (ar >= lo_t[..., d, None]) & (ar < hi_t[..., d, None])
        view = [len(boxes), most] + [1] * len(spatial)
        view[2 + d] = dim
        mask = mask & inside.reshape(view)
    return mask.any(dim=1)


def restoration_mask_batch(plans: Sequence[Plan], spatial: Sequence[int], device: torch.device) -> torch.Tensor:
    """(n, *spatial) bool: restoration_mask of every plan, built on the device."""
    return _box_mask(spatial, [_inpainted_boxes(plan) for plan in plans], device)


def _inpaint_t(x: torch.Tensor, params: Sequence[Paint]) -> torch.Tensor:
    """Noise inside the blocks."""
    mask = _box_mask(x.shape[1:], [p.boxes for p in params], x.device)
    noise = torch.rand(x.shape, generator=_generator([p.seed for p in params], x.device), device=x.device)
    return torch.where(mask, noise, x)


def _outpaint_t(x: torch.Tensor, params: Sequence[Paint]) -> torch.Tensor:
    """Noise outside the windows."""
    mask = _box_mask(x.shape[1:], [p.boxes for p in params], x.device)
    noise = torch.rand(x.shape, generator=_generator([p.seed for p in params], x.device), device=x.device)
    return torch.where(mask, x, noise)


def _elastic_t(x: torch.Tensor, params: Sequence[Elastic]) -> torch.Tensor:
    """grid_sample of every plane, slices folded into the batch; the fields are the numpy path's."""
    h, w = x.shape[-2:]
    field = np.stack([elastic_field(x.shape[1:], p) for p in params]).reshape(len(params), 2, -1, h, w)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    # align_corners=False with reflection padding is scipy's half-sample "reflect" in voxel coordinates.
    gx = (2 * (xx + field[:, 1]) + 1) / w - 1
    gy = (2 * (yy + field[:, 0]) + 1) / h - 1
    grid = torch.from_numpy(np.stack([gx, gy], axis=-1).astype(np.float32)).to(x.device)
    out = F.grid_sample(
        x.reshape(-1, 1, h, w),
        grid.reshape(-1, h, w, 2),
        mode="bilinear",
        padding_mode="reflection",
        align_corners=False,
    )
    return out.reshape(x.shape)


def _local_shuffle_t(x: torch.Tensor, params: Sequence[LocalShuffle]) -> torch.Tensor:
    """The numpy path's windows; permutations by sorting (window, random key), "later wins" by scatter amax."""
    spatial = tuple(x.shape[1:])
    volume = prod(spatial)
    strides = torch.as_tensor(_strides(spatial), device=x.device)
    gen = _generator([p.seed for p in params], x.device)
    out = x.clone().reshape(len(params), -1)
    for lo in range(0, len(params), SHUFFLE_CHUNK):
        chunk = params[lo : lo + SHUFFLE_CHUNK]
        boxes = [shuffle_boxes(spatial, p) for p in chunk]
        starts = torch.from_numpy(np.concatenate([b[0] for b in boxes])).to(x.device)
        sizes = torch.from_numpy(np.concatenate([b[1] for b in boxes])).to(x.device)
        windows = torch.tensor([p.windows for p in chunk], device=x.device)
        row = torch.arange(len(chunk), device=x.device).repeat_interleave(windows)
        count = sizes.prod(dim=1)
        window = torch.arange(len(count), device=x.device).repeat_interleave(count)
        rest = torch.arange(len(window), device=x.device) - (count.cumsum(0) - count)[window]
        dest = row[window] * volume
        for d in reversed(range(len(spatial))):
            side = sizes[window, d]
            dest += (starts[window, d] + rest % side) * strides[d]
            rest = rest // side
        key = (window << 31) | torch.randint(0, 2**31, window.shape, generator=gen, device=x.device)
        src = dest[torch.argsort(key)]  # a window's entries are contiguous, so this permutes within each window
        owner = torch.full((len(chunk) * volume,), -1, dtype=window.dtype, device=x.device)
        owner.scatter_reduce_(0, dest, window, "amax")
        keep = owner[dest] == window
        source = x[lo : lo + len(chunk)].reshape(-1)
        target = out[lo : lo + len(chunk)].reshape(-1)
        target[dest[keep]] = source[src[keep]]
    return out.reshape(x.shape)


def _patch_shuffle_t(x: torch.Tensor, params: Sequence[PatchShuffle]) -> torch.Tensor:
    """Swap t of every row at once by gather/scatter; rows with fewer swaps swap a patch with itself."""
    spatial = x.shape[1:]
    out = x.clone().reshape(len(params), -1)
    strides = _strides(spatial)
    for size in {p.size for p in params}:
        rows = [i for i, p in enumerate(params) if p.size == size]
        swaps = max(len(params[i].pairs) for i in rows)
        starts = np.zeros((len(rows), swaps, 2), dtype=np.int64)
        for r, i in enumerate(rows):
            for t, (a, b) in enumerate(params[i].pairs):
                starts[r, t] = (np.dot(a, strides), np.dot(b, strides))
        offsets = np.indices(size).reshape(len(size), -1).T @ strides
        voxels = torch.from_numpy(starts[..., None] + offsets).to(x.device)  # (rows, swaps, 2, k)
        index = torch.tensor(rows, device=x.device)
        sub = out[index]
        for t in range(swaps):
            a, b = voxels[:, t, 0], voxels[:, t, 1]
            va, vb = sub.gather(1, a), sub.gather(1, b)
            sub.scatter_(1, a, vb)
            sub.scatter_(1, b, va)
        out[index] = sub
    return out.reshape(x.shape)


TORCH_STEPS: dict[str, Callable[[torch.Tensor, Sequence[Any]], torch.Tensor]] = {
    "flip": _flip_t,
    "elastic": _elastic_t,
    "local_shuffle": _local_shuffle_t,
    "nonlinear": _nonlinear_t,
    "inpaint": _inpaint_t,
    "outpaint": _outpaint_t,
    "patch_shuffle": _patch_shuffle_t,
}
STEP_ORDER = tuple(TORCH_STEPS)  # the order policies use: batching by it runs each step once per batch


def apply_batch(patches: torch.Tensor, plans: Sequence[Plan]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, target) of a batch (N, *spatial) or (N, 1, *spatial) on its own device, float32, same shape.

    A 4D batch with a singleton axis 1 is read as 2D images with a channel axis. Each round applies one step kind to
    every sample whose next step it is, so a batch of one policy needs one call per step kind.
    """
    if len(plans) != patches.shape[0]:
        raise ValueError(f"{len(plans)} plans for {patches.shape[0]} patches")
    channel = patches.ndim == 5 or (patches.ndim == 4 and patches.shape[1] == 1)
    spatial = patches.shape[2:] if channel else patches.shape[1:]
    x = patches.reshape(len(plans), *spatial).to(torch.float32, copy=True)
    target = x.clone()
    done = [0] * len(plans)
    while True:
        heads = {i: plan[done[i]][0] for i, plan in enumerate(plans) if done[i] < len(plan)}
        if not heads:
            break
        unknown = set(heads.values()) - set(STEP_ORDER)
        if unknown:
            raise ValueError(f"unknown steps {sorted(unknown)}")
        name = min(heads.values(), key=STEP_ORDER.index)
        rows = [i for i, n in heads.items() if n == name]
        params = [plans[i][done[i]][1] for i in rows]
        index = torch.tensor(rows, device=x.device)
        x[index] = TORCH_STEPS[name](x[index], params)
        if name == "flip":
            target[index] = _flip_t(target[index], params)
        for i in rows:
            done[i] += 1
    return x.reshape(patches.shape), target.reshape(patches.shape)
