"""Synthetic brain MRI subjects for BraTS-like FLAIR: a head with grey/white matter, ventricles and a glioma.

Anatomy is analytic and drawn in mm on the BraTS field of view (240 x 240 x 155 mm, centred on the grid), so one
subject can be rendered on any grid: the BraTS grid (1 mm voxels) or a coarser demo grid of the same head. Axes
follow BraTS as read by SimpleITK (LPS): array [z, y, x] with x to the patient's left, y posterior, z superior.
Tissue boundaries are nested ellipsoids perturbed by smooth noise; the tumour is a union of a few ellipsoidal lobes
whose normalised distance field, perturbed by noise, is thresholded into oedema, core and necrosis. FLAIR contrast:
CSF suppressed (dark), grey matter brighter than white matter, oedema and non-enhancing tumour bright, skull dark.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# BraTS labels (2018): 3 is unused.
NECROSIS, OEDEMA, ENHANCING = 1, 2, 4
SEG_LABELS: dict[str, int] = {"background": 0, "necrotic_core": NECROSIS, "oedema": OEDEMA, "enhancing": ENHANCING}

TISSUES: dict[str, int] = {
    "background": 0,
    "scalp": 1,
    "skull": 2,
    "csf": 3,  # subarachnoid space and sulci
    "grey_matter": 4,
    "white_matter": 5,
    "deep_grey": 6,  # basal ganglia and thalami
    "ventricle": 7,
}
_SCALP, _SKULL, _CSF, _GM, _WM, _DEEP, _VENT = range(1, 8)
BRAIN_TISSUES = (_CSF, _GM, _WM, _DEEP, _VENT)  # inside the skull
PARENCHYMA = (_GM, _WM, _DEEP)  # where a tumour may grow

FIELD_MM = (240.0, 240.0, 155.0)


@dataclass(frozen=True)
class BrainSettings:
    """Grid and the ranges subjects are drawn from (lengths in mm)."""

    shape_xyz: tuple[int, int, int] = (240, 240, 155)  # BraTS grid; voxel size = field_mm / shape_xyz
    field_mm: tuple[float, float, float] = FIELD_MM
    p_lgg: float = 0.26  # BraTS 2018 training: 75 LGG of 285 subjects
    oedema_radius_mm: tuple[float, float] = (14.0, 32.0)  # mean radius of the whole tumour (oedema included)
    noise: tuple[float, float] = (0.015, 0.04)  # Rician noise sigma relative to white matter
    bias: float = 0.15  # amplitude of the smooth multiplicative bias field (log scale)
    skull_stripped: bool = False  # True zeroes everything outside the brain, as BraTS preprocessing does

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        """Voxel size in mm."""
        return tuple(float(f / n) for f, n in zip(self.field_mm, self.shape_xyz))


@dataclass(frozen=True)
class Lobe:
    """One ellipsoidal lobe of a tumour: centre offset from the tumour centre and semi-axes, mm (x, y, z)."""

    offset: tuple[float, float, float]
    axes: tuple[float, float, float]


@dataclass(frozen=True)
class BrainParams:
    """Every random choice for one subject; render_subject is a pure function of it and the grid."""

    grade: str  # "HGG" or "LGG"
    head_center: tuple[float, float, float]  # mm from the field centre (x, y, z)
    head_axes: tuple[float, float, float]  # outer scalp semi-axes
    scalp_mm: float
    skull_mm: float
    csf_mm: float  # subarachnoid space
    cortex_mm: float
    ventricle_scale: float
    sulcus_depth_mm: float
    # FLAIR intensities relative to white matter
    gain: float  # white matter signal in arbitrary MR units
    contrast: dict[str, float]
    texture: float  # relative amplitude of the smooth tissue texture
    noise_sigma: float
    bias_coeffs: tuple[float, ...]  # (x, y, z, xx, yy, zz, xy, xz, yz) in the head's normalised coordinates
    seed: int  # noise fields (texture, sulci, tumour boundary, Rician noise)
    # tumour
    hemisphere: int  # -1 the patient's right (x < head centre), +1 the left
    tumour_center: tuple[float, float, float]
    tumour_lobes: tuple[Lobe, ...]
    core_level: float  # the core is where the tumour distance field is below this (1 = oedema border)
    necrosis_level: float  # 0: no necrosis
    enhancing: bool  # HGG: an enhancing rim around necrosis; LGG: a non-enhancing core (label 1)
    roughness: float  # amplitude of the noise on the tumour's boundaries


def _linear_weights(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation matrix between voxel-centre-aligned grids spanning the same extent."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2) if n_in > 1 else np.zeros(n_out, int)
    frac = pos - lo
    weights = np.zeros((n_out, n_in), np.float32)
    weights[np.arange(n_out), lo] += 1 - frac
    if n_in > 1:
        weights[np.arange(n_out), lo + 1] += frac
    return weights


def _smooth_noise(seed: int, shape_zyx: tuple[int, ...], field_zyx: np.ndarray, scale_mm: float) -> np.ndarray:
    """Unit-variance noise with features of about scale_mm, defined on the field so every grid sees the same field."""
    coarse = tuple(int(np.ceil(f / scale_mm)) + 2 for f in field_zyx)
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(coarse), 0.7, mode="wrap")
    noise = ((noise - noise.mean()) / max(noise.std(), 1e-6)).astype(np.float32)
    # Trilinear upsampling as three matrix products: much faster than ndimage.zoom on a large grid.
    wz, wy, wx = (_linear_weights(n, c) for n, c in zip(shape_zyx, coarse))
    t = wy @ (noise @ wx.T)  # (cz, ny, nx)
    return (wz @ t.reshape(coarse[0], -1)).reshape(shape_zyx)


def _axes_mm(settings: BrainSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates in mm from the field centre: x (1, 1, nx), y (1, ny, 1), z (nz, 1, 1), float32."""
    out = []
    for n, d in zip(settings.shape_xyz, settings.spacing_xyz):
        out.append(((np.arange(n, dtype=np.float32) - (n - 1) / 2) * np.float32(d)))
    x, y, z = out
    return x[None, None, :], y[None, :, None], z[:, None, None]


def _radius(x, y, z, center, axes) -> np.ndarray:
    """Normalised ellipsoidal radius: < 1 inside the ellipsoid."""
    (cx, cy, cz), (ax, ay, az) = center, axes
    return np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2)


def _brain_axes(p: BrainParams) -> np.ndarray:
    """Semi-axes of the brain's outer (pial) surface."""
    return np.asarray(p.head_axes) - (p.scalp_mm + p.skull_mm + p.csf_mm)


def _inside_brain(p: BrainParams, point: np.ndarray, margin: float) -> bool:
    """Whether a point lies at least `margin` (as a share of the radius) inside the brain ellipsoid."""
    r = _radius(*point, p.head_center, _brain_axes(p))
    return bool(r < 1 - margin)


def draw_subject(
    rng: np.random.Generator, settings: BrainSettings = BrainSettings(), grade: str | None = None
) -> BrainParams:
    """Draw one subject: head size and pose, tissue contrast, bias and noise, and a tumour in one hemisphere.

    The grade ("HGG" or "LGG") is drawn with probability settings.p_lgg unless given."""
    s = settings
    lgg = rng.random() < s.p_lgg  # drawn either way, so that a given grade leaves the other draws unchanged
    grade = grade or ("LGG" if lgg else "HGG")
    if grade not in ("HGG", "LGG"):
        raise ValueError(f"grade must be HGG or LGG, not {grade!r}")
    head_axes = (float(rng.uniform(72, 80)), float(rng.uniform(92, 100)), float(rng.uniform(82, 90)))
    # The top of the head sits just under the field's top, as BraTS crops run from the cerebellum to the vertex.
    top = s.field_mm[2] / 2 - rng.uniform(2, 8)
    center = (float(rng.uniform(-4, 4)), float(rng.uniform(-6, 6)), float(top - head_axes[2]))
    contrast = dict(
        scalp=float(rng.uniform(0.8, 1.1)),  # fat is bright on FLAIR
        skull=float(rng.uniform(0.03, 0.1)),
        csf=float(rng.uniform(0.1, 0.2)),
        grey_matter=float(rng.uniform(1.2, 1.35)),
        deep_grey=float(rng.uniform(1.1, 1.2)),
        ventricle=float(rng.uniform(0.06, 0.14)),
        oedema=float(rng.uniform(1.8, 2.3)),
        enhancing=float(rng.uniform(1.4, 1.8)),
        necrosis=float(rng.uniform(0.6, 1.5)),  # fluid-filled necrosis is partly suppressed, protein-rich is not
        core_lgg=float(rng.uniform(1.9, 2.5)),  # low-grade gliomas are very bright on FLAIR
    )
    p = BrainParams(
        grade=grade,
        head_center=center,
        head_axes=head_axes,
        scalp_mm=float(rng.uniform(4, 7)),
        skull_mm=float(rng.uniform(5, 8)),
        csf_mm=float(rng.uniform(1.5, 3.5)),
        cortex_mm=float(rng.uniform(2.5, 3.5)),
        ventricle_scale=float(rng.uniform(0.8, 1.3)),
        sulcus_depth_mm=float(rng.uniform(5, 10)),
        gain=float(rng.uniform(200, 600)),
        contrast=contrast,
        texture=float(rng.uniform(0.02, 0.05)),
        noise_sigma=float(rng.uniform(*s.noise)),
        bias_coeffs=tuple(float(c) for c in rng.normal(0, s.bias, 9) * np.repeat([1.0, 0.6, 0.4], 3)),
        seed=int(rng.integers(2**31)),
        hemisphere=int(rng.choice([-1, 1])),
        tumour_center=(0.0, 0.0, 0.0),
        tumour_lobes=(),
        core_level=0.0,
        necrosis_level=0.0,
        enhancing=grade == "HGG",
        roughness=float(rng.uniform(0.08, 0.18)),
    )
    radius = float(rng.uniform(*s.oedema_radius_mm)) * (0.8 if grade == "LGG" else 1.0)
    side = p.hemisphere
    brain = _brain_axes(p)
    # Rejection sampling keeps the tumour centre in its hemisphere, clear of the midline and of the cortex.
    for _ in range(200):
        share = rng.uniform([0.25, -0.6, -0.3], [0.65, 0.6, 0.6]) * [side, 1, 1]
        c = share * brain + np.asarray(center)
        if _inside_brain(p, c, margin=min(0.5, 0.25 + radius / brain.min() * 0.5)):
            break
    lobes = []
    for k in range(int(rng.integers(2, 5))):
        offset = np.zeros(3) if k == 0 else rng.normal(0, 0.35 * radius, 3)
        axes = radius * rng.uniform(0.7, 1.0, 3)
        lobes.append(Lobe(tuple(float(o) for o in offset), tuple(float(a) for a in axes)))
    core = float(rng.uniform(0.45, 0.7)) if grade == "HGG" else float(rng.uniform(0.5, 0.8))
    return dataclasses.replace(
        p,
        tumour_center=tuple(float(v) for v in c),
        tumour_lobes=tuple(lobes),
        core_level=core,
        necrosis_level=float(core * rng.uniform(0.35, 0.7)) if grade == "HGG" else 0.0,
    )


def render_tissues(p: BrainParams, settings: BrainSettings) -> np.ndarray:
    """Tissue map (uint8, [z, y, x], values of TISSUES) of one subject on the settings' grid."""
    x, y, z = _axes_mm(settings)
    shape = tuple(settings.shape_xyz[::-1])
    field_zyx = np.asarray(settings.field_mm[::-1])
    tissue = np.zeros(shape, np.uint8)
    c, a = np.asarray(p.head_center, np.float32), np.asarray(p.head_axes, np.float32)
    # Nested shells: each layer's semi-axes are the outer ones less the thicknesses above it.
    thick = np.cumsum([0.0, p.scalp_mm, p.skull_mm, p.csf_mm]).astype(np.float32)
    r_head, r_skull, r_csf, r_brain = (_radius(x, y, z, c, a - t) for t in thick)
    # Gyri: sulci are the thin zero-crossing sheets of a band-limited noise field, cut into the brain's surface.
    gyri = np.abs(_smooth_noise(p.seed + 1, shape, field_zyx, 9.0))
    depth = (1 - r_brain) * float(a.min() - thick[-1])  # approximate depth below the pial surface, mm
    sulcus = (depth < p.sulcus_depth_mm) & (gyri < 0.12 * (1 - depth / p.sulcus_depth_mm) + 0.03)
    # The interhemispheric fissure: a thin CSF sheet at the midline, above the corpus callosum.
    fissure = (np.abs(x - c[0]) < 1.2) & (depth < 28) & (z > c[2])
    tissue[r_head < 1] = _SCALP
    tissue[r_skull < 1] = _SKULL
    tissue[r_csf < 1] = _CSF
    brain = (r_brain < 1) & ~sulcus & ~fissure
    tissue[brain] = _GM
    # The cortex lines the surface and the sulci; white matter fills the rest.
    cortex = p.cortex_mm * (1 + 0.3 * _smooth_noise(p.seed + 2, shape, field_zyx, 10.0))
    lining = (gyri < 0.4) & (depth < p.sulcus_depth_mm + cortex)
    tissue[brain & (depth > cortex) & ~lining] = _WM
    vs = p.ventricle_scale
    for side in (-1, 1):
        deep = _radius(x, y, z, c + [side * 16, -4, 2], (9, 16, 12))
        tissue[deep < 1] = _DEEP
    for side in (-1, 1):
        # Lateral ventricle: a body running front to back plus a frontal horn, both a few mm off the midline.
        body = _radius(x, y, z, c + [side * 7 * vs, 8, 18], np.array([5, 28, 8]) * vs)
        horn = _radius(x, y, z, c + [side * 9 * vs, -22, 10], np.array([5, 10, 10]) * vs)
        tissue[(body < 1) | (horn < 1)] = _VENT
    third = _radius(x, y, z, c + [0, 2, 0], np.array([2, 14, 9]) * vs)
    tissue[third < 1] = _VENT
    return tissue


def _tumour_labels(p: BrainParams, settings: BrainSettings, tissue: np.ndarray) -> np.ndarray:
    """BraTS label map of the tumour, computed inside its bounding box only."""
    x, y, z = _axes_mm(settings)
    shape = tissue.shape
    seg = np.zeros(shape, np.uint8)
    tc = np.asarray(p.tumour_center)
    reach = max(np.linalg.norm(lobe.offset) + max(lobe.axes) for lobe in p.tumour_lobes) * (1 + 2 * p.roughness) + 2
    box = []
    for coords, centre in zip((z.ravel(), y.ravel(), x.ravel()), tc[::-1]):
        idx = np.flatnonzero(np.abs(coords - centre) <= reach)
        if idx.size == 0:
            return seg
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    box = tuple(box)
    xb, yb, zb = x[..., box[2]], y[:, box[1], :], z[box[0]]
    dist = np.min(
        [_radius(xb, yb, zb, tc + lobe.offset, lobe.axes) for lobe in p.tumour_lobes], axis=0
    )  # 1 on the border of the lobe union
    field_zyx = np.asarray(settings.field_mm[::-1])
    # Separate noise fields give the oedema, the core and the necrosis their own irregular borders.
    rough = [_smooth_noise(p.seed + k, shape, field_zyx, s)[box] for k, s in ((10, 9.0), (11, 6.0), (12, 5.0))]
    oedema = dist + p.roughness * rough[0] < 1
    core = dist + 0.6 * p.roughness * rough[1] < p.core_level
    necrosis = dist + 0.6 * p.roughness * rough[2] < p.necrosis_level
    # Oedema spreads in white matter and deep grey; the solid tumour infiltrates any parenchyma.
    t = tissue[box]
    # Gliomas may cross the midline through the corpus callosum; these stay in their hemisphere, for clarity.
    parenchyma = np.isin(t, PARENCHYMA) & (p.hemisphere * (xb - p.head_center[0]) > 0)
    sb = seg[box]
    sb[oedema & parenchyma & (t != _GM)] = OEDEMA
    if p.enhancing:
        sb[core & parenchyma] = ENHANCING
        sb[necrosis & parenchyma] = NECROSIS
    else:
        sb[core & parenchyma] = NECROSIS
    return seg


def render_subject(p: BrainParams, settings: BrainSettings = BrainSettings()) -> tuple[np.ndarray, np.ndarray]:
    """FLAIR (float32 >= 0, arbitrary MR units) and BraTS labels (uint8: 0, 1, 2, 4), both [z, y, x]."""
    tissue = render_tissues(p, settings)
    seg = _tumour_labels(p, settings, tissue)
    shape = tissue.shape
    field_zyx = np.asarray(settings.field_mm[::-1])
    k = p.contrast
    table = np.array(
        [0.0, k["scalp"], k["skull"], k["csf"], k["grey_matter"], 1.0, k["deep_grey"], k["ventricle"]], np.float32
    )
    flair = table[tissue]
    tumour = np.array([0.0, k["necrosis"] if p.enhancing else k["core_lgg"], k["oedema"], 0.0, k["enhancing"]])
    flair = np.where(seg > 0, tumour.astype(np.float32)[seg], flair)
    # Tissue texture and a smooth bias field are multiplicative, as coil sensitivity is.
    texture = _smooth_noise(p.seed + 3, shape, field_zyx, 3.0)
    heterogeneity = _smooth_noise(p.seed + 4, shape, field_zyx, 5.0)
    flair *= 1 + p.texture * texture + np.where(seg > 0, 0.08, 0.0).astype(np.float32) * heterogeneity
    x, y, z = _axes_mm(settings)
    c, a = p.head_center, p.head_axes
    u, v, w = (x - c[0]) / a[0], (y - c[1]) / a[1], (z - c[2]) / a[2]
    b = np.asarray(p.bias_coeffs, np.float32)
    bias = np.exp(b[0] * u + b[1] * v + b[2] * w + b[3] * u * u + b[4] * v * v + b[5] * w * w + b[6] * u * v)
    bias *= np.exp(b[7] * u * w + b[8] * v * w)
    flair *= bias
    head = tissue > 0 if not settings.skull_stripped else np.isin(tissue, BRAIN_TISSUES)
    # Rician noise (magnitude of complex Gaussian noise) inside the head; the background is exactly 0, as in BraTS.
    rng = np.random.default_rng(p.seed + 5)
    n1 = rng.standard_normal(shape, dtype=np.float32) * np.float32(p.noise_sigma)
    n2 = rng.standard_normal(shape, dtype=np.float32) * np.float32(p.noise_sigma)
    flair = np.sqrt((flair + n1) ** 2 + n2**2) * np.float32(p.gain)
    flair[~head] = 0
    seg[~head] = 0
    return flair.astype(np.float32), seg
