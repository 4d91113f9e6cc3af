"""Every resize of the pipeline's data, one helper per purpose, each named by its filter.

Images are [0, 1] floats, masks binary. Shrinking averages areas (no aliasing of thin structures) wherever the data
feed a network; growing interpolates linearly; masks take the nearest pixel on the same pixel-centre grid.

| helper | filter | used for |
| --- | --- | --- |
| `lanczos` | Lanczos (PIL) | radiographs stored by 2D preprocessing |
| `area_2d` | area average | radiographs shown to the self-discovery autoencoder |
| `area_or_bilinear` | exact area average when shrinking, bilinear when growing | DXC and PXS task images |
| `area_or_linear_axis` | area average when shrinking, linear when growing, one axis | LCS volumes |
| `spline_on_centres` | spline of an order (1 trilinear, 0 nearest) at voxel centres | BMS and NCS cubes |
| `nearest_on_centres` | nearest neighbour at pixel / voxel centres | LCS and PXS masks |
| `bilinear_in_plane` | anti-aliased bilinear, slice by slice | multi-resolution self-discovery crops |

Two resizes stay where their memory bound lives: the CT thumbnails (preprocess/ct.py `thumbnail`, area average slab
by slab, so a scan is never float as a whole) and the synthetic phantoms' rendering (synthetic/).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage


def lanczos(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a [0, 1] float image to size x size with Lanczos filtering (anti-aliased when shrinking)."""
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize((size, size), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights averaging the input pixels each output pixel covers, by overlap length (exact area)."""
    scale = n_in / n_out
    lo = np.arange(n_out)[:, None] * scale
    i = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(lo + scale, i + 1) - np.maximum(lo, i), 0, None)
    return (overlap / scale).astype(np.float32)


def area_or_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a [0, 1] float image to size x size: exact area averaging per axis when shrinking, bilinear otherwise."""
    h, w = image.shape
    if (h, w) == (size, size):
        return image.astype(np.float32)
    if h >= size and w >= size:
        # Area averaging keeps every input pixel's weight, so thin structures are not aliased away.
        out = _area_matrix(h, size) @ image.astype(np.float32) @ _area_matrix(w, size).T
    else:
        pil = Image.fromarray(image.astype(np.float32), mode="F")
        out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def area_or_linear_axis(t: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """Resize one axis: area averaging when shrinking (no aliasing), linear interpolation when growing."""
    if t.shape[axis] == n:
        return t
    moved = t.movedim(axis, -1)
    flat = moved.reshape(-1, 1, moved.shape[-1])
    if n < flat.shape[-1]:
        out = F.adaptive_avg_pool1d(flat, n)
    else:
        out = F.interpolate(flat, size=n, mode="linear", align_corners=False)
    return out.reshape(*moved.shape[:-1], n).movedim(-1, axis)


def nearest_on_centres(mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of a 2D or 3D mask on pixel / voxel centres (area_or_linear_axis's grid)."""
    index = [np.minimum(((np.arange(n) + 0.5) * s / n).astype(int), s - 1) for n, s in zip(size, mask.shape)]
    return mask[np.ix_(*index)]


def spline_on_centres(array: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """Resize to exactly `shape`, sampling at voxel centres (order 1: trilinear, 0: nearest)."""
    zoom = [s / n for s, n in zip(shape, array.shape)]
    out = ndimage.zoom(array, zoom, order=order, mode="nearest", grid_mode=True)
    assert out.shape == tuple(shape), (out.shape, shape)
    return out


def bilinear_in_plane(crop: np.ndarray, size_yx: tuple[int, int]) -> np.ndarray:
    """Resize every slice of a (z, y, x) crop to size_yx, anti-aliased when shrinking (the slice count is kept)."""
    slices = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[:, None]
    return F.interpolate(slices, size=size_yx, mode="bilinear", align_corners=False, antialias=True)[:, 0].numpy()


def area_2d(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) images area-averaged to (N, size, size)."""
    return F.adaptive_avg_pool2d(torch.from_numpy(images)[:, None], (size, size))[:, 0].numpy()
