"""Compiled (numba) loops of local pixel shuffling: the window-by-window passes numpy can only do as many whole-array
passes over temporaries. The sort between them stays numpy's (its SIMD row sort beats a compiled insertion sort).

Imported on first use: numba's import and loading the compiled code (cached on disk after the first run) take ~0.3 s.

Boxes are given in three axes (2-D patches padded with a leading axis of size 1). `table[code, i]` is the flat offset
of the i-th voxel, in raster order, of a box whose sides minus one have the mixed-radix `code` over `max_size`: one
loop per window instead of one per box row (whose exits, at random lengths, the branch predictor misses). The random
stream is laid out by window size: `block[c]` is where the keys of the windows with c voxels start, those windows
following one another in drawing order.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _window(starts: np.ndarray, sizes: np.ndarray, strides: np.ndarray, max_size: np.ndarray, w: int):
    """(voxels, first voxel's flat index, row of `table`) of window w."""
    s0, s1, s2 = sizes[w, 0], sizes[w, 1], sizes[w, 2]
    base = starts[w, 0] * strides[0] + starts[w, 1] * strides[1] + starts[w, 2] * strides[2]
    return s0 * s1 * s2, base, ((s0 - 1) * max_size[1] + s1 - 1) * max_size[2] + s2 - 1


@numba.njit(cache=True, nogil=True)
def window_keys(
    starts: np.ndarray,
    sizes: np.ndarray,
    strides: np.ndarray,
    max_size: np.ndarray,
    table: np.ndarray,
    block: np.ndarray,
    keys: np.ndarray,
    bits: int,
) -> np.ndarray:
    """Replace the low `bits` of each window's keys by its voxels' flat indices, in raster order (in place); return
    where each window's keys start, for `write_windows`."""
    cursor = block.copy()
    firsts = np.empty(starts.shape[0], dtype=np.int64)
    high = ~np.uint64((1 << bits) - 1)
    for w in range(starts.shape[0]):
        n, base, code = _window(starts, sizes, strides, max_size, w)
        first = firsts[w] = cursor[n]
        cursor[n] += n
        for i in range(n):
            keys[first + i] = (keys[first + i] & high) | np.uint64(base + table[code, i])
    return firsts


@numba.njit(cache=True, nogil=True)
def write_windows(
    x: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    strides: np.ndarray,
    max_size: np.ndarray,
    table: np.ndarray,
    firsts: np.ndarray,
    keys: np.ndarray,
    bits: int,
) -> np.ndarray:
    """A copy of the flat `x` whose windows' voxels, in raster order, take the input voxels named by their sorted keys
    (window w's from `firsts[w]` on); windows are written in drawing order, so the last one over a voxel wins."""
    low = np.uint64((1 << bits) - 1)
    out = x.copy()
    for w in range(starts.shape[0]):
        n, base, code = _window(starts, sizes, strides, max_size, w)
        first = firsts[w]
        for i in range(n):
            out[base + table[code, i]] = x[keys[first + i] & low]
    return out
