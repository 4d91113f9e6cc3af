"""Synthetic chest CT patients with label maps, and their PA chest radiographs: the pipeline's default data set.

Anatomy is analytic. Organs are implicit shapes evaluated on anatomical coordinates (u to the patient's left,
v posterior, w superior; w = 0 at the top of the right diaphragm dome), obtained by rotating the world grid into
the patient frame, so pose costs nothing; vessels, airways and ribs are capsules rasterised in world mm inside
their bounding boxes. Any axis-aligned grid can be rendered: the CT's, or the radiograph's coarse one. World
coordinates follow LUNA16: LPS mm (x to the patient's left, y posterior, z superior), arrays indexed [z, y, x].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, NamedTuple

import numpy as np
from scipy import ndimage

LABELS: dict[str, int] = {
    "background": 0,
    "body": 1,
    "lung_right": 2,
    "lung_left": 3,
    "airway": 4,
    "vessel": 5,
    "heart": 6,
    "aorta": 7,
    "bone": 8,
    "liver": 9,
    "nodule": 10,
    "pneumothorax": 11,
    "effusion": 12,
}
_BODY, _LUNG_R, _LUNG_L, _AIRWAY, _VESSEL, _HEART, _AORTA, _BONE, _LIVER, _NODULE, _PTX, _EFFUSION = range(1, 13)

_AIR_HU = -1000.0
_DIAPHRAGM_MM = 5.0
_DISC_MM = 5.0
_APEX_CAP_MM = 90.0  # height of each lung's rounded apical cap
_BONE_GAIN = 1.3  # bone attenuates more, relative to water, at radiographic energies than its CT number says
_MU_WATER = 0.02  # 1/mm near 60 keV

Mask = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
Bounds = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class PhantomSettings:
    """Ranges and probabilities the patients are drawn from (lengths in mm)."""

    matrix: int = 128
    fov_mm: tuple[float, float] = (320.0, 400.0)
    slice_mm: tuple[float, ...] = (1.25, 2.0, 2.5)
    thick_slice_fraction: float = 0.1
    nodules: tuple[int, int] = (0, 3)
    nodule_diameter_mm: tuple[float, float] = (3.0, 30.0)
    p_cardiomegaly: float = 0.15
    p_effusion: float = 0.1
    p_pneumothorax: float = 0.1
    p_emphysema: float = 0.1
    noise_hu: tuple[float, float] = (10.0, 30.0)


@dataclass(frozen=True)
class Nodule:
    """A lung nodule: world centre (LPS mm), nominal diameter, solid or ground-glass, and its lobulation."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    solid: bool
    hu: float = 40.0
    lobes: tuple[tuple[float, float, float, float], ...] = ()  # (dx, dy, dz, radius) bumps, world mm


@dataclass(frozen=True)
class PatientParams:
    """Every random choice for one patient; render_ct and render_radiograph are pure functions of it.

    Anatomical lengths are mm in the patient frame (u left, v posterior, w superior, w = 0 at the right dome top).
    """

    # scan geometry (world mm)
    spacing_xyz: tuple[float, float, float]
    shape_zyx: tuple[int, int, int]
    origin_xyz: tuple[float, float, float]
    fov_mm: float
    fov_center_xy: tuple[float, float]
    padding_hu: int
    noise_sigma: float
    noise_seed: int
    smooth_mm: float  # reconstruction-kernel blur (0: sharp kernel)
    table_y: float  # world y of the table top under the patient's midline
    # pose: world = center_xyz + Rz(yaw) Rx(tilt) (u, v, w)
    center_xyz: tuple[float, float, float]
    yaw_deg: float
    tilt_deg: float
    # habitus
    body_a: float  # lateral semi-axis at the dome level
    body_b_ant: float
    body_b_post: float
    shoulder_gain: float  # widening of the upper chest
    belly_gain: float  # anterior protrusion of the abdomen
    fat_mm: float
    wall_mm: float  # muscle and ribs between the fat and the thoracic cavity, laterally and anteriorly
    back_mm: float  # skin to the posterior thoracic cavity (paraspinal muscles)
    # thorax
    lung_height: float  # lung apex above the right dome top
    dome_left_drop: float
    dome_curvature: float  # 1 normally; hyperinflated (emphysematous) lungs flatten the domes
    mediastinum_mm: float  # half width of the mediastinal band between the lungs
    carina_w: float
    heart_center: tuple[float, float, float]
    heart_axes: tuple[float, float, float]  # semi-axes: long (base to apex), horizontal, vertical
    heart_tilt_deg: float  # long axis below the horizontal
    heart_turn_deg: float  # long axis from the patient's left towards anterior
    aorta_mm: float  # descending radius
    arch_w: float
    spine_period: float
    spine_phase: float
    vertebra_mm: float  # lateral semi-axis of the vertebral body at the dome level
    rib_top_w: float
    rib_drop: float  # how far the ribs descend from back to front
    sternum_w: tuple[float, float]  # (xiphoid, jugular notch)
    # abdomen
    liver_edge: float  # u of the liver's left border at v = 0
    liver_span: float  # liver height under the right dome
    stomach_air: float  # share of the stomach that holds air
    # densities (HU)
    lung_hu: float
    lung_gradient: float  # posterior (dependent) minus anterior lung density
    fat_hu: float
    soft_hu: float
    liver_hu: float
    bone_hu: float  # trabecular
    cortex_hu: float
    # findings and trees
    effusion_side: int  # -1 right, +1 left, 0 none
    effusion_mm: float
    pneumothorax_side: int
    pneumothorax_mm: float  # gap between the retracted lung and the chest wall
    emphysema: tuple[tuple[float, float, float, float], ...]  # (u, v, w, radius) low-density patches
    tree_seed: int  # the vessel and airway trees grow from it: hundreds of segments are better kept as a seed
    nodules: tuple[Nodule, ...]
    findings: tuple[str, ...]

    @property
    def body_half_width_mm(self) -> float:
        """Widest lateral half width of the body (shoulders); the radiograph is 2 * this + 80 mm wide."""
        return self.body_a * (1 + self.shoulder_gain)


class _Grid(NamedTuple):
    """Axis-aligned grid: voxel [k, j, i] sits at world origin + (i, j, k) * spacing."""

    origin: np.ndarray  # (x, y, z)
    spacing: np.ndarray  # (x, y, z)
    shape: tuple[int, int, int]  # (z, y, x)

    def axes(self, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x (1, 1, nx), y (1, ny, 1) and z (nz, 1, 1) of the voxel centres in box, float32."""
        zs, ys, xs = (np.arange(s.start, s.stop, dtype=np.float32) for s in box)
        o, d = self.origin.astype(np.float32), self.spacing.astype(np.float32)
        return (o[0] + xs * d[0])[None, None, :], (o[1] + ys * d[1])[None, :, None], (o[2] + zs * d[2])[:, None, None]

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...] | None:
        """Index box of the voxels whose centres lie in the world AABB [lo, hi], or None if it is empty."""
        first = np.maximum(np.ceil((lo - self.origin) / self.spacing), 0).astype(int)[::-1]
        last = np.minimum(np.floor((hi - self.origin) / self.spacing) + 1, self.shape[::-1]).astype(int)[::-1]
        if np.any(last <= first):
            return None
        return tuple(slice(a, b) for a, b in zip(first, last))

    def corners(self) -> np.ndarray:
        """World (8, 3) corners of the voxel-centre box."""
        extent = (np.array(self.shape[::-1]) - 1) * self.spacing
        return self.origin + np.array(np.meshgrid(*zip(np.zeros(3), extent), indexing="ij")).reshape(3, -1).T

    def slabs(self, max_voxels: int = 1 << 22) -> list[tuple[slice, ...]]:
        """Whole-slice boxes that bound the size of full-grid temporaries."""
        nz, ny, nx = self.shape
        step = max(1, max_voxels // (ny * nx))
        return [(slice(k, min(k + step, nz)), slice(0, ny), slice(0, nx)) for k in range(0, nz, step)]


class _Regions(NamedTuple):
    """Masks of the large compartments, from which the first painting pass starts."""

    body: np.ndarray
    fat: np.ndarray
    skin: np.ndarray
    thorax: np.ndarray
    diaphragm: np.ndarray
    abdomen: np.ndarray
    lung_r: np.ndarray
    lung_l: np.ndarray
    pneumothorax: np.ndarray
    effusion: np.ndarray
    pleura: np.ndarray  # visceral pleura of a collapsed lung (part of that lung)
    liver: np.ndarray


class _VTube(NamedTuple):
    """A near-vertical vessel: centre (u, v) interpolated over w knots, cut flat at its first and last knot."""

    w: tuple[float, ...]
    u: tuple[float, ...]
    v: tuple[float, ...]
    r: float

    def sdf(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Signed distance in the axial plane (inf beyond the tube's ends)."""
        d = np.hypot(u - np.interp(w, self.w, self.u), v - np.interp(w, self.w, self.v)) - self.r
        return np.where((w >= self.w[0]) & (w <= self.w[-1]), d, np.inf)

    def bounds(self, margin: float = 0.0) -> Bounds:
        """Anatomical AABB, grown by margin."""
        pad = self.r + margin
        return (
            np.array([min(self.u) - pad, min(self.v) - pad, self.w[0]]),
            np.array([max(self.u) + pad, max(self.v) + pad, self.w[-1]]),
        )


class _Arch(NamedTuple):
    """Aortic arch: the upper half of a torus joining the ascending and descending aorta."""

    center: np.ndarray  # (u, v)
    toward: np.ndarray  # unit (u, v) from the ascending to the descending aorta
    radius: float
    r_ascending: float
    r_descending: float
    w0: float

    def sdf(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Signed distance to the tube (inf below the arch's base plane)."""
        (cu, cv), (eu, ev) = self.center, self.toward
        along, across, up = (u - cu) * eu + (v - cv) * ev, (v - cv) * eu - (u - cu) * ev, w - self.w0
        r = self.r_ascending + (self.r_descending - self.r_ascending) * np.clip((along / self.radius + 1) / 2, 0, 1)
        d = np.sqrt((np.sqrt(along**2 + up**2) - self.radius) ** 2 + across**2) - r
        return np.where(up >= 0, d, np.inf)

    def bounds(self, margin: float = 0.0) -> Bounds:
        """Anatomical AABB, grown by margin."""
        reach = self.radius + self.r_ascending + margin
        return (np.array([*(self.center - reach), self.w0]), np.array([*(self.center + reach), self.w0 + reach]))


def _lut(*labels: int) -> np.ndarray:
    """Lookup table label -> allowed, to restrict painting to some underlying labels."""
    table = np.zeros(256, bool)
    table[list(labels)] = True
    return table


_LUNGISH = _lut(_LUNG_R, _LUNG_L, _PTX, _EFFUSION)
_LUNGS = _lut(_LUNG_R, _LUNG_L)
_IN_LUNG = _lut(_LUNG_R, _LUNG_L, _VESSEL)
_SOFT = _lut(_BODY, _LUNG_R, _LUNG_L, _VESSEL)
_MEDIASTINAL = _lut(_BODY, _LUNG_R, _LUNG_L, _HEART)
_WALL = _lut(_BODY, _BONE)
_ABDOMINAL = _lut(_BODY, _LIVER)
_LUMEN = _lut(_BODY, _LUNG_R, _LUNG_L, _VESSEL, _AIRWAY)
_NODULE_BED = _lut(_LUNG_R, _LUNG_L, _VESSEL, _AIRWAY, _NODULE)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below 0, 1 above 1, a smooth cubic between."""
    t = np.clip(x, 0, 1)
    return t * t * (3 - 2 * t)


def _in_oval(u: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Inside a rounded rectangle with semi-axes a, b: the trunk's cross-section is boxier than an ellipse."""
    x, y = (u / a) ** 2, (v / b) ** 2
    return x + y - 0.4 * x * y < 1


def _ellipsoid(center: tuple[float, ...], axes: tuple[float, ...]) -> Mask:
    """Axis-aligned ellipsoid mask."""
    (cu, cv, cw), (a, b, c) = center, axes
    return lambda u, v, w: ((u - cu) / a) ** 2 + ((v - cv) / b) ** 2 + ((w - cw) / c) ** 2 < 1


def _rotation(yaw_deg: float, tilt_deg: float) -> np.ndarray:
    """Anatomical -> world rotation: tilt about x (head up or down), then yaw about z."""
    cy, sy = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    ct, st = np.cos(np.radians(tilt_deg)), np.sin(np.radians(tilt_deg))
    return np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]])


def _capsule(a: np.ndarray, b: np.ndarray, r0: float, r1: float | None = None) -> np.ndarray:
    """Capsule row (x0, y0, z0, x1, y1, z1, r0, r1)."""
    return np.concatenate([a, b, [r0, r0 if r1 is None else r1]])


class _Anatomy:
    """One patient's analytic anatomy and the painting passes that rasterise it on a grid."""

    def __init__(self, p: PatientParams):
        self.p = p
        self.rot = _rotation(p.yaw_deg, p.tilt_deg)
        self.center = np.asarray(p.center_xyz, float)
        self.H = p.lung_height
        ac, bca, bcp = (float(x) for x in self._cavity_axes(np.float64(self.H - _APEX_CAP_MM)))
        self.lobe = (0.45 * ac, 0.6 * ac, 0.5 * (bcp - bca), 0.55 * (bca + bcp))  # apical cap base (uc, a, vc, b)
        self.ac0, self.bca0, self.bcp0 = (float(x) for x in self._cavity_axes(np.float64(0.0)))
        self.ry0 = 0.78 * p.vertebra_mm
        self.v_vb = self.bcp0 + 5 - self.ry0  # vertebral body centre: its back bulges just behind the cavity
        self.canal_r = 0.42 * p.vertebra_mm
        self.v_canal = self.v_vb + self.ry0 + self.canal_r
        self.dome_ku = 0.0085 * p.dome_curvature * (138 / self.ac0) ** 2
        self.v_trachea = self.v_vb - self.ry0 - 25
        self._build_vessels()

    # ---- frames and profiles -------------------------------------------------------------------------------
    def to_world(self, anat: np.ndarray) -> np.ndarray:
        """(..., 3) anatomical points -> world mm."""
        return self.center + anat @ self.rot.T

    def to_anat(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcast world coordinates -> anatomical (u, v, w), float32."""
        d = [np.asarray(c - c0, np.float32) for c, c0 in zip((x, y, z), self.center)]
        r = self.rot.astype(np.float32)
        return tuple(r[0, k] * d[0] + r[1, k] * d[1] + r[2, k] * d[2] for k in range(3))

    def _anat_box(self, grid: _Grid, lo: np.ndarray, hi: np.ndarray):
        """(grid box, u, v, w) covering an anatomical AABB, or None where it misses the grid."""
        inside = (grid.corners() - self.center) @ self.rot  # the grid in the anatomical frame
        lo, hi = np.maximum(lo, inside.min(0)), np.minimum(hi, inside.max(0))
        if np.any(hi < lo):
            return None
        corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1).T
        world = self.to_world(corners)
        box = grid.box(world.min(0), world.max(0))
        return None if box is None else (box, *self.to_anat(*grid.axes(box)))

    def _body_axes(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body semi-axes (lateral, anterior, posterior): shoulders widen the upper chest, the neck narrows it."""
        p = self.p
        neck = 1 - 0.45 * _smoothstep((w - self.H - 15) / 70)
        a = p.body_a * (1 + p.shoulder_gain * np.clip((w - 0.3 * self.H) / (0.7 * self.H), 0, 1)) * neck
        b_ant = p.body_b_ant * (1 + p.belly_gain * np.clip(-w / 100, 0, 1)) * neck
        return a, b_ant, p.body_b_post * neck

    def _cavity_axes(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Thoracic and abdominal cavity semi-axes (lateral, anterior, posterior)."""
        p = self.p
        a, b_ant, b_post = self._body_axes(w)
        # The rib cage narrows towards the thoracic inlet while shoulder muscle widens the body around it.
        cone = 1 - 0.22 * _smoothstep((w - 0.1 * self.H) / (0.9 * self.H))
        inset = p.fat_mm + p.wall_mm
        return (
            np.maximum(np.minimum(a, p.body_a * cone) - inset, 5),
            np.maximum(b_ant * cone - inset, 5),
            np.maximum(b_post - p.back_mm, 5),
        )

    def _dome(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Diaphragm height: two paraboloid domes (right higher), falling steeply into the posterior recesses."""
        recess = np.where(v < 0, 0.004, 0.009) * self.p.dome_curvature * v**2
        right = -self.dome_ku * (u + 0.35 * self.ac0) ** 2
        left = -self.p.dome_left_drop - self.dome_ku * (u - 0.35 * self.ac0) ** 2
        return np.maximum(right, left) - recess

    def _table_top(self, x: np.ndarray) -> np.ndarray:
        """World y of the table's upper surface; its edges curve up into a cradle."""
        return self.p.table_y - 4e-4 * (x - self.p.fov_center_xy[0]) ** 2

    # ---- compartments ---------------------------------------------------------------------------------------
    def _lobe_fits(self, u, v, w, side: int, gap: float) -> np.ndarray:
        """The lung's apical cap: an ellipse shrinking to a point at the apex (lowered by a pneumothorax gap)."""
        uc, a, vc, b = self.lobe
        rise = np.maximum(w - (self.H - _APEX_CAP_MM), 0) / (_APEX_CAP_MM - gap)
        return ((u - side * uc) / a) ** 2 + ((v - vc) / b) ** 2 < 1 - rise**2

    def regions(self, u, v, w, above_table) -> _Regions:
        """Body layers, cavity compartments, lungs (with pneumothorax and effusion) and liver."""
        p = self.p
        a, b_ant, b_post = self._body_axes(w)
        ant = v < 0
        b = np.where(ant, b_ant, b_post)
        body = _in_oval(u, v, a, b) & above_table
        fat = body & ~_in_oval(u, v, a - p.fat_mm, b - p.fat_mm)
        skin = body & ~_in_oval(u, v, a - 2, b - 2)
        ac, bca, bcp = self._cavity_axes(w)
        bc = np.where(ant, bca, bcp)
        cavity = body & _in_oval(u, v, ac, bc)
        wd = self._dome(u, v)
        thorax = cavity & (w > wd)
        abdomen = cavity & (w <= wd - _DIAPHRAGM_MM)
        lungs, ptx, eff, pleura = [], *(np.zeros(u.shape, bool) for _ in range(3))
        for side in (-1, 1):
            hemi = thorax & (side * u > 0) & self._lobe_fits(u, v, w, side, 0.0)
            lung = hemi
            if side == p.pneumothorax_side:
                # Air collects anteriorly, laterally and apically; the dependent back keeps the lung on the wall.
                def retracted(gap: float, side: int = side) -> np.ndarray:
                    inset = np.where(ant, gap, 0.3 * gap)
                    return self._lobe_fits(u, v, w, side, gap) & _in_oval(u, v, ac - gap, bc - inset)

                lung = hemi & retracted(p.pneumothorax_mm)
                ptx |= hemi & ~lung
                pleura |= lung & ~retracted(p.pneumothorax_mm + 1.5)
            if side == p.effusion_side:
                # Fluid layers along the back and fills the basal recesses, blunting the costophrenic angle.
                depth = p.effusion_mm * (
                    np.clip((0.6 * self.H - w) / (0.5 * self.H), 0, 1) + 2 * np.clip(-w / 60, 0, 1)
                )
                fluid = hemi & (v > bcp - depth)
                eff |= fluid
                lung &= ~fluid
                ptx &= ~fluid
            lungs.append(lung)
        liver = abdomen & (u < p.liver_edge - 0.6 * v) & (w > wd - (p.liver_span - 0.5 * (u + self.ac0)))
        return _Regions(
            body,
            fat,
            skin,
            thorax,
            cavity & ~thorax & ~abdomen,
            abdomen,
            lungs[0],
            lungs[1],
            ptx,
            eff,
            pleura & ~eff,
            liver,
        )

    # ---- mediastinum ------------------------------------------------------------------------------------------
    def _build_vessels(self) -> None:
        """Aorta (ascending and descending tubes, arch torus), arch branches with the SVC, and the oesophagus."""
        p = self.p
        r_d, r_a = p.aorta_mm, 1.2 * p.aorta_mm
        asc = np.array([p.heart_center[0] - 30, p.heart_center[1] + 5])
        desc = np.array([0.7 * p.vertebra_mm + r_d + 2, self.v_vb - 0.6 * self.ry0])
        low = (0.3 * r_d, self.v_vb - self.ry0 - r_d - 2)  # in front of the spine at the aortic hiatus
        self.aorta = [
            _VTube((p.heart_center[2] + 0.3 * p.heart_axes[2], p.arch_w), (asc[0],) * 2, (asc[1],) * 2, r_a),
            _VTube((-400.0, -40.0, p.arch_w), (low[0], low[0], desc[0]), (low[1], low[1], desc[1]), r_d),
        ]
        radius = float(np.linalg.norm(desc - asc) / 2)
        self.arch = _Arch((asc + desc) / 2, (desc - asc) / (2 * radius), radius, r_a, r_d, p.arch_w)
        top = self.H + 400.0

        def branch(theta: float, du: float, dv: float, r: float) -> _VTube:
            """A vessel rising from the arch at angle theta (0 at the ascending end), drifting (du, dv) per mm."""
            c = self.arch.center - radius * np.cos(theta) * self.arch.toward
            w0 = p.arch_w + radius * np.sin(theta)
            return _VTube((w0, top), (c[0], c[0] + du * (top - w0)), (c[1], c[1] + dv * (top - w0)), r)

        svc_u = asc[0] - r_a - 9
        self.branches = [
            branch(0.9, -0.25, -0.05, 6.0),
            branch(1.4, 0.04, -0.08, 4.5),
            branch(1.85, 0.3, 0.0, 5.0),
            _VTube((p.heart_center[2] + 20, top), (svc_u, svc_u - 21), (asc[1] + 3,) * 2, 9.0),
        ]
        self.esophagus = _VTube((-30.0, top), (5.0, 4.0), (self.v_vb - self.ry0 - 8,) * 2, 7.0)

    def _heart_q(self, u, v, w) -> np.ndarray:
        """Ellipsoid form of the heart (< 1 inside), long axis pointing left, anterior and down."""
        p = self.p
        t, q = np.radians(p.heart_tilt_deg), np.radians(p.heart_turn_deg)
        long = np.array([np.cos(t) * np.cos(q), -np.cos(t) * np.sin(q), -np.sin(t)])
        side = np.cross(long, [0.0, 0.0, 1.0])
        side /= np.linalg.norm(side)
        du, dv, dw = u - p.heart_center[0], v - p.heart_center[1], w - p.heart_center[2]
        return sum(
            ((e[0] * du + e[1] * dv + e[2] * dw) / k) ** 2
            for e, k in zip((long, side, np.cross(long, side)), p.heart_axes)
        )

    def _heart(self, u, v, w) -> np.ndarray:
        """The heart, resting on the diaphragm and kept inside the chest wall."""
        ac, bca, bcp = self._cavity_axes(w)
        return (self._heart_q(u, v, w) < 1) & (w > self._dome(u, v)) & _in_oval(u, v, ac, np.where(v < 0, bca, bcp))

    def _heart_bounds(self, margin: float) -> Bounds:
        """Anatomical AABB of the heart (any orientation), grown by margin."""
        c, reach = np.array(self.p.heart_center), max(self.p.heart_axes) + margin
        return c - reach, c + reach

    def _spine_block(self, u, v, w) -> np.ndarray:
        """Vertebral body, rib heads and paraspinal tissue that the lungs wrap around."""
        return (u / (self.p.vertebra_mm + 12)) ** 2 + ((v - self.v_vb - 10) / (self.ry0 + 22)) ** 2 < 1

    def _mediastinum(self, u, v, w) -> np.ndarray:
        """Central band between the lungs, narrowing anteriorly where the lungs nearly meet behind the sternum."""
        narrowing = 0.3 + 0.7 * _smoothstep((v + 0.6 * self.bca0) / (0.5 * self.bca0))
        return np.abs(u) < self.p.mediastinum_mm * narrowing

    @cached_property
    def carves(self) -> list[tuple[Bounds, Mask, float]]:
        """(anatomical AABB, mask, fill HU) of mediastinal structures that displace lung; vessels get 4 mm of fat."""
        p, big = self.p, 1e4
        dilated_heart = (1 + 4 / min(p.heart_axes)) ** 2
        carves = [
            (
                (
                    np.array([-p.vertebra_mm - 12, self.v_vb - self.ry0 - 12, -big]),
                    np.array([p.vertebra_mm + 12, self.v_vb + self.ry0 + 32, big]),
                ),
                self._spine_block,
                p.soft_hu,
            ),
            (
                (np.array([-p.mediastinum_mm, -big, -big]), np.array([p.mediastinum_mm, big, big])),
                self._mediastinum,
                p.fat_hu,
            ),
            (self._heart_bounds(5), lambda u, v, w: self._heart_q(u, v, w) < dilated_heart, p.fat_hu),
        ]
        for tube in (*self.aorta, self.arch, *self.branches, self.esophagus):
            carves.append((tube.bounds(4), lambda u, v, w, t=tube: t.sdf(u, v, w) < 4, p.fat_hu))
        return carves

    # ---- lungs as point sets ----------------------------------------------------------------------------------
    def in_lung(self, pts: np.ndarray, side: int) -> np.ndarray:
        """Whether anatomical points (n, 3) lie in the aerated lung of one side (-1 right, +1 left)."""
        u, v, w = pts.T
        x, y, _ = self.to_world(pts).T
        r = self.regions(u, v, w, y < self._table_top(x))
        carved = np.logical_or.reduce([mask(u, v, w) for _, mask, _ in self.carves])
        return (r.lung_r if side < 0 else r.lung_l) & ~carved

    def sample_lung(self, rng: np.random.Generator, side: int, n: int) -> np.ndarray:
        """n anatomical points uniformly inside one aerated lung (rejection sampling)."""
        reach = self.p.body_half_width_mm
        lo = np.array([min(0, side * reach), -self.p.body_b_ant, -150.0])
        hi = np.array([max(0, side * reach), self.p.body_b_post, self.H])
        found: list[np.ndarray] = []
        while sum(map(len, found)) < n:
            pts = rng.uniform(lo, hi, size=(4 * n, 3))
            found.append(pts[self.in_lung(pts, side)])
        return np.concatenate(found)[:n]

    # ---- tubes ------------------------------------------------------------------------------------------------
    @staticmethod
    def _grow(rng: np.random.Generator, root: np.ndarray, targets: np.ndarray, r_root: float) -> list[np.ndarray]:
        """Branching tree from root to every target: split the targets along their main axis, step towards each half.

        Calibre follows the number of targets a branch serves (Murray-like), so it shrinks with every generation.
        """
        segments, stack = [], [(root, targets)]
        while stack:
            pos, pts = stack.pop()
            centred = pts - pts.mean(0)
            order = np.argsort(centred @ np.linalg.svd(centred, full_matrices=False)[2][0])
            for half in (pts[order[: len(pts) // 2]], pts[order[len(pts) // 2 :]]):
                end = half[0] if len(half) == 1 else pos + rng.uniform(0.35, 0.65) * (half.mean(0) - pos)
                segments.append(_capsule(pos, end, r_root * (len(half) / len(targets)) ** 0.4))
                if len(half) > 1:
                    stack.append((end, half))
        return segments

    @cached_property
    def tubes(self) -> dict[str, np.ndarray]:
        """World-space capsules (x0, y0, z0, x1, y1, z1, r0, r1) per kind."""
        p, rng = self.p, np.random.default_rng(self.p.tree_seed)
        hw, hilum_v = p.mediastinum_mm, self.v_vb - self.ry0 - 30
        artery_hilum = {s: np.array([s * (hw + 14), hilum_v, p.carina_w - 15]) for s in (-1, 1)}
        vein_hilum = {s: np.array([s * (hw + 10), hilum_v + 14, p.carina_w - 45]) for s in (-1, 1)}
        heart, depth = np.array(p.heart_center), p.heart_axes[2]
        asc_u, asc_v = self.aorta[0].u[0], self.aorta[0].v[0]
        fork = np.array([asc_u + 30, asc_v + 18, p.carina_w - 10])
        behind_aorta = np.array([asc_u + 4, asc_v + 1.2 * p.aorta_mm + 9, p.carina_w - 13])  # the right PA's course
        atrium = heart + [-12, 0.7 * depth, 0.3 * depth]
        trunks = [
            _capsule(heart + [-8, -0.6 * depth, 0.3 * depth], fork, 13.0),
            _capsule(fork, behind_aorta, 10.0),
            _capsule(behind_aorta, artery_hilum[-1], 10.0),
            _capsule(fork, artery_hilum[1], 10.0),
            _capsule(atrium, vein_hilum[-1], 8.0),
            _capsule(atrium, vein_hilum[1], 8.0),
        ]
        carina = np.array([2.0, self.v_trachea + 5, p.carina_w])
        bronchus = {-1: carina + 26 * np.array([-0.47, 0.1, -0.88]), 1: carina + 48 * np.array([0.7, 0.12, -0.7])}
        airways = [
            _capsule(np.array([0.0, self.v_trachea, self.H + 400]), carina, 8.5),
            _capsule(carina, bronchus[-1], 6.5),
            _capsule(carina, bronchus[1], 5.5),
        ]
        vessels = []
        for s in (-1, 1):
            vessels += self._grow(rng, artery_hilum[s], self.sample_lung(rng, s, 192), 8.0)
            vessels += self._grow(rng, vein_hilum[s], self.sample_lung(rng, s, 192), 7.0)
            # Bronchi stop short of the pleura: pull their targets towards the hilum.
            targets = bronchus[s] + 0.75 * (self.sample_lung(rng, s, 40) - bronchus[s])
            airways += self._grow(rng, bronchus[s], targets, 5.0)
        ribs, cartilage = self._ribs()
        anat = dict(
            trunks=trunks, vessels=vessels, airways=airways, ribs=ribs, cartilage=cartilage, clavicles=self._clavicles()
        )
        return {
            k: np.concatenate([self.to_world(a[:, :3]), self.to_world(a[:, 3:6]), a[:, 6:]], axis=1)
            for k, a in ((k, np.array(v)) for k, v in anat.items())
        }

    def _ribs(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Twelve rib pairs (polylines hugging the cavity and sloping down anteriorly) and costal cartilages."""
        p = self.p
        uc, la, vc, lb = self.lobe
        ribs, cartilage = [], []
        for k, phi_end in enumerate([2.65] * 7 + [2.55, 2.45, 2.3, 1.9, 1.5]):  # angle from the back; floating 11-12
            wk = p.rib_top_w - k * p.spine_period
            phi = np.linspace(0.28, phi_end, 10)
            drop = p.rib_drop * (0.55 + 0.45 * np.sin(np.pi * (k + 1) / 13))
            w = wk - drop * ((phi - 0.28) / (np.pi - 0.28)) ** 1.2
            # Follow the chest wall, or the lung's apical cap where that is narrower: the upper ribs ring the apex.
            ac, bca, bcp = self._cavity_axes(w)
            tau = np.sqrt(np.clip(1 - (np.maximum(w - (self.H - _APEX_CAP_MM), 0) / _APEX_CAP_MM) ** 2, 0, 1))
            r = 3.5 if k == 0 else 4.3
            a = np.minimum(ac, uc + la * tau) + r + 1
            b = np.where(np.cos(phi) > 0, np.minimum(bcp, vc + lb * tau), np.minimum(bca, lb * tau - vc)) + r + 1
            for s in (-1, 1):
                pts = np.stack([s * a * np.sin(phi), b * np.cos(phi), w], 1)
                pts = np.concatenate([[[s * (p.vertebra_mm + 2), self.v_vb + 2, wk]], pts])
                ribs += [_capsule(a0, a1, r) for a0, a1 in zip(pts[:-1], pts[1:])]
                if k < 7:  # true ribs reach the sternum through cartilage
                    wc = float(np.clip(w[-1] + 6 * (k - 3), p.sternum_w[0] + 5, p.sternum_w[1] - 5))
                    v_sternum = -float(self._cavity_axes(np.float64(wc))[1]) - 5
                    cartilage.append(_capsule(pts[-1], np.array([s * 14, v_sternum, wc]), 3.5))
        return ribs, cartilage

    def _clavicles(self) -> list[np.ndarray]:
        """Clavicles from the manubrium out and back to the shoulders."""
        wn = self.p.sternum_w[1]
        a, b_ant, _ = (float(x) for x in self._body_axes(np.float64(wn)))
        bca = float(self._cavity_axes(np.float64(wn))[1])
        segments = []
        for s in (-1, 1):
            medial, middle, lateral = np.array(
                [
                    [s * 20, -bca - 10, wn + 3],
                    [s * 0.45 * a, -0.95 * bca - 8, wn + 10],
                    [s * 0.85 * a, -0.25 * b_ant, wn + 25],
                ]
            )
            segments += [_capsule(medial, middle, 6.5, 6.0), _capsule(middle, lateral, 6.0, 5.5)]
        return segments

    # ---- painting -----------------------------------------------------------------------------------------------
    def _paint_base(self, grid: _Grid, box, hu: np.ndarray, lab: np.ndarray, table: bool) -> None:
        """First pass over one slab: air, table, body layers, cavity fill, lungs, diaphragm, liver."""
        p = self.p
        x, y, z = grid.axes(box)
        u, v, w = self.to_anat(x, y, z)
        top = self._table_top(x)
        r = self.regions(u, v, w, y < top)
        hu[...] = _AIR_HU
        if table:  # carbon-fibre shells around a foam core
            shell = (np.abs(x - p.fov_center_xy[0]) < 230) & (y >= top) & (y < top + 42.5)
            hu[...] = np.where(shell & (y >= top + 2.5) & (y < top + 40), -900.0, np.where(shell, 150.0, _AIR_HU))
        lab[r.body] = _BODY
        np.copyto(hu, p.soft_hu, where=r.body)
        np.copyto(hu, p.fat_hu, where=r.fat)
        np.copyto(hu, 20.0, where=r.skin)
        # Mediastinal fat gives way to the soft tissue of the neck above the apices.
        np.copyto(hu, p.fat_hu + (p.soft_hu - p.fat_hu) * _smoothstep((w - self.H + 10) / 40), where=r.thorax)
        np.copyto(hu, p.fat_hu + 10, where=r.abdomen)
        np.copyto(hu, p.soft_hu, where=r.diaphragm)
        lung_hu = p.lung_hu + p.lung_gradient * np.clip((v + self.bca0) / (self.bca0 + self.bcp0), 0, 1)
        for mask, label in ((r.lung_r, _LUNG_R), (r.lung_l, _LUNG_L)):
            np.copyto(hu, lung_hu, where=mask)
            lab[mask] = label
        np.copyto(hu, p.soft_hu, where=r.pleura)
        for mask, value, label in (
            (r.pneumothorax, _AIR_HU, _PTX),
            (r.effusion, 12.0, _EFFUSION),
            (r.liver, p.liver_hu, _LIVER),
        ):
            hu[mask] = value
            lab[mask] = label

    def _paint(
        self, grid: _Grid, hu, lab, bounds: Bounds, mask: Mask, value: float, label: int, allowed: np.ndarray
    ) -> None:
        """Paint value and label where mask holds over allowed labels, inside an anatomical AABB."""
        if (found := self._anat_box(grid, *bounds)) is not None:
            box, u, v, w = found
            m = mask(u, v, w) & allowed[lab[box]]
            hu[box][m] = value
            lab[box][m] = label

    def _paint_organs(self, grid: _Grid, hu: np.ndarray, lab: np.ndarray) -> None:
        """Second pass: mediastinum, spine, sternum, scapulae, heart, great vessels, abdominal organs, emphysema."""
        p = self.p
        blood = p.soft_hu - 5
        for bounds, mask, fill in self.carves:
            self._paint(grid, hu, lab, bounds, mask, fill, _BODY, _LUNGISH)
        self._paint_spine(grid, hu, lab)
        self._paint_sternum(grid, hu, lab)
        self._paint_scapulae(grid, hu, lab)
        self._paint(grid, hu, lab, self._heart_bounds(2), self._heart, blood, _HEART, _SOFT)
        for tube, label in (
            (self.aorta[0], _AORTA),
            (self.aorta[1], _AORTA),
            (self.arch, _AORTA),
            *((t, _BODY) for t in (*self.branches, self.esophagus)),
        ):
            self._paint(
                grid, hu, lab, tube.bounds(), lambda u, v, w, t=tube: t.sdf(u, v, w) < 0, blood, label, _MEDIASTINAL
            )
        self._paint_abdomen(grid, hu, lab)
        for cu, cv, cw, r in p.emphysema:
            c = np.array([cu, cv, cw])
            if (found := self._anat_box(grid, c - r - 4, c + r + 4)) is not None:
                box, u, v, w = found
                alpha = np.clip((r - np.sqrt((u - cu) ** 2 + (v - cv) ** 2 + (w - cw) ** 2)) / 4 + 0.5, 0, 1)
                m = _LUNGS[lab[box]]
                hu[box][m] += (alpha * (-965.0 - hu[box]))[m]

    def _paint_spine(self, grid: _Grid, hu, lab) -> None:
        """Vertebral bodies (trabecular core, cortical rim), discs, canal, neural arches and processes."""
        p = self.p
        bounds = np.array([-60, self.v_vb - 30, -1e4]), np.array([60, p.body_b_post, 1e4])
        if (found := self._anat_box(grid, *bounds)) is None:
            return
        box, u, v, w = found
        rx = p.vertebra_mm * (1 - 0.001 * w)  # caudal vertebrae are larger
        q = (u / rx) ** 2 + ((v - self.v_vb) / (0.78 * rx)) ** 2
        disc = ((w - p.spine_phase) % p.spine_period) < _DISC_MM
        # The posterior elements slope caudally: their phase shifts with depth.
        posterior = ((w + 0.5 * (v - self.v_canal) - p.spine_phase) % p.spine_period) > 0.35 * p.spine_period
        dc2 = u**2 + (v - self.v_canal) ** 2
        canal = dc2 < self.canal_r**2
        ring = dc2 < (self.canal_r + 5) ** 2
        spinous = (np.abs(u) < 3.5) & (v > self.v_canal) & (v < p.body_b_post - p.fat_mm - 4)
        # Transverse processes point posterolaterally, towards the rib tubercles.
        transverse = (np.abs((np.abs(u) - self.canal_r) * 0.42 - (v - self.v_canal) * 0.91) < 4) & (np.abs(u) < rx + 16)
        body = q < 1
        hb, lb = hu[box], lab[box]
        for mask, value, label in (
            (posterior & ~canal & (ring | spinous | transverse), 0.5 * (p.bone_hu + p.cortex_hu), _BONE),
            (body & ~disc, np.where(q > (1 - 1.5 / rx) ** 2, p.cortex_hu, p.bone_hu), _BONE),
            (body & disc, 80.0, _BODY),
            (canal, 15.0, _BODY),
        ):
            np.copyto(hb, value, where=mask)
            lb[mask] = label

    def _paint_sternum(self, grid: _Grid, hu, lab) -> None:
        """Flat bone behind the anterior chest wall: manubrium, body and xiphoid."""
        p = self.p
        bottom, top = p.sternum_w
        bounds = np.array([-30, -p.body_b_ant * (1 + p.belly_gain), bottom]), np.array([30, 20 - self.bca0, top])
        if (found := self._anat_box(grid, *bounds)) is None:
            return
        box, u, v, w = found
        v_in = -self._cavity_axes(w)[1]
        half = np.where(w > top - 45, 24.0, np.where(w < bottom + 25, 8.0, 15.0))
        outer = (np.abs(u) < half) & (v > v_in - 12) & (v < v_in) & (w < top) & (w > bottom) & _WALL[lab[box]]
        marrow = (np.abs(u) < half - 1.5) & (v > v_in - 10.5) & (v < v_in - 1.5)
        np.copyto(hu[box], np.where(marrow, p.bone_hu, p.cortex_hu), where=outer)
        lab[box][outer] = _BONE

    def _paint_scapulae(self, grid: _Grid, hu, lab) -> None:
        """Shoulder blades: 5 mm triangular shells behind the posterolateral ribs, inferior angle pointing down."""
        p = self.p
        top, tip, medial = self.H + 15, self.H - 140, 0.45 * self.ac0
        for side in (-1, 1):
            u_lo, u_hi = sorted((side * medial, side * p.body_half_width_mm))
            if (found := self._anat_box(grid, np.array([u_lo, 0, tip]), np.array([u_hi, p.body_b_post, top]))) is None:
                continue
            box, u, v, w = found
            ac, _, bcp = self._cavity_axes(w)
            q = (u / (ac + 16)) ** 2 + (v / (bcp + 16)) ** 2
            width = 5 + 0.5 * self.ac0 * np.clip((w - tip) / (top - tip), 0, 1) ** 0.7
            m = (
                (q > 1)
                & (q < (1 + 5 / (bcp + 16)) ** 2)
                & (v > 0)
                & (side * u > medial)
                & (side * u < medial + width)
                & (w < top)
                & _WALL[lab[box]]
            )
            hu[box][m] = 0.5 * (p.bone_hu + p.cortex_hu)
            lab[box][m] = _BONE

    def _paint_abdomen(self, grid: _Grid, hu, lab) -> None:
        """Spleen, kidneys and the stomach (air anterior, as in a supine patient) under the domes."""
        p = self.p
        wl = -p.dome_left_drop

        def below_dome(shape: Mask) -> Mask:
            return lambda u, v, w: shape(u, v, w) & (w < self._dome(u, v) - _DIAPHRAGM_MM)

        for c, s, value in (
            ((0.7 * self.ac0, 0.45 * self.bcp0, wl - 55), (22, 45, 50), 45.0),
            ((-62, self.v_vb + 5, -120), (28, 24, 55), 30.0),
            ((62, self.v_vb + 5, -105), (28, 24, 55), 30.0),
        ):
            bounds = np.subtract(c, s), np.add(c, s)
            self._paint(grid, hu, lab, bounds, below_dome(_ellipsoid(c, s)), value, _BODY, _ABDOMINAL)
        c, s = np.array([0.32 * self.ac0, -0.35 * self.bca0, wl - 50]), np.array([45.0, 38.0, 45.0])
        if (found := self._anat_box(grid, c - s, c + s)) is not None:
            box, u, v, w = found
            m = below_dome(_ellipsoid(c, s))(u, v, w) & _ABDOMINAL[lab[box]]
            wall = ~_ellipsoid(c, s - 4)(u, v, w)
            air = v < c[1] - s[1] * (1 - 2 * p.stomach_air)
            np.copyto(hu[box], np.where(wall, p.soft_hu, np.where(air, _AIR_HU, 15.0)), where=m)
            lab[box][m] = _BODY

    @staticmethod
    def _paint_capsules(
        grid: _Grid,
        hu,
        lab,
        capsules: np.ndarray,
        value: float,
        label: int | None,
        allowed: np.ndarray,
        shrink: float = 0.0,
    ) -> None:
        """Rasterise capsules with partial-volume edges (alpha ramps over one voxel), only over allowed labels."""
        h = float(np.prod(grid.spacing) ** (1 / 3))
        reach = capsules[:, 6:8].max(1, keepdims=True) + h
        lows = np.minimum(capsules[:, :3], capsules[:, 3:6]) - reach
        highs = np.maximum(capsules[:, :3], capsules[:, 3:6]) + reach
        for c, lo, hi in zip(capsules, lows, highs):
            if (box := grid.box(lo, hi)) is None:
                continue
            x, y, z = grid.axes(box)
            d = c[3:6] - c[:3]
            dx, dy, dz = x - c[0], y - c[1], z - c[2]
            t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / max(d @ d, 1e-6), 0, 1)
            dist = np.sqrt((dx - t * d[0]) ** 2 + (dy - t * d[1]) ** 2 + (dz - t * d[2]) ** 2)
            alpha = np.clip((c[6] + t * (c[7] - c[6]) - shrink - dist) / h + 0.5, 0, 1)
            hb, lb = hu[box], lab[box]
            m = (alpha > 0) & allowed[lb]
            hb[m] += alpha[m] * (value - hb[m])
            if label is not None:
                lb[m & (alpha >= 0.5)] = label

    def _paint_tubes(self, grid: _Grid, hu, lab) -> None:
        """Third pass: ribs, clavicles, cartilage, pulmonary trunks, vessel trees and airways (walls, then lumens)."""
        p, t = self.p, self.tubes
        for bones in (t["ribs"], t["clavicles"]):
            self._paint_capsules(grid, hu, lab, bones, p.cortex_hu, _BONE, _WALL)
            self._paint_capsules(grid, hu, lab, bones, p.bone_hu, None, _lut(_BONE), shrink=1.5)
        self._paint_capsules(grid, hu, lab, t["cartilage"], 120.0, None, _lut(_BODY))
        self._paint_capsules(grid, hu, lab, t["trunks"], p.soft_hu - 5, _VESSEL, _SOFT)
        self._paint_capsules(grid, hu, lab, t["vessels"], p.soft_hu - 5, _VESSEL, _IN_LUNG)
        walls = t["airways"].copy()
        walls[:, 6:8] = 1.25 * walls[:, 6:8] + 0.6
        self._paint_capsules(grid, hu, lab, walls, p.soft_hu, None, _SOFT)
        self._paint_capsules(grid, hu, lab, t["airways"], _AIR_HU, _AIRWAY, _LUMEN)

    def _paint_nodules(self, grid: _Grid, hu, lab) -> None:
        """Lobulated spheres; ground glass only raises density, so vessels stay visible through it."""
        h = float(np.prod(grid.spacing) ** (1 / 3))
        for n in self.p.nodules:
            c = np.asarray(n.center_mm)
            spheres = [(c, n.diameter_mm / 2)] + [(c + lobe[:3], lobe[3]) for lobe in map(np.asarray, n.lobes)]
            reach = max(np.linalg.norm(s - c) + r for s, r in spheres) + h
            if (box := grid.box(c - reach, c + reach)) is None:
                continue
            x, y, z = grid.axes(box)
            alpha = np.max(
                [
                    np.clip((r - np.sqrt((x - s[0]) ** 2 + (y - s[1]) ** 2 + (z - s[2]) ** 2)) / h + 0.5, 0, 1)
                    for s, r in spheres
                ],
                axis=0,
            )
            # A nodule smaller than a voxel still owns the voxel holding its centre.
            centre = tuple(np.round((c - grid.origin) / grid.spacing).astype(int)[::-1] - [b.start for b in box])
            if all(0 <= i < k for i, k in zip(centre, alpha.shape)):
                alpha[centre] = max(alpha[centre], 0.5)
            hb, lb = hu[box], lab[box]
            m = (alpha > 0) & _NODULE_BED[lb]
            target = n.hu if n.solid else np.maximum(hb, n.hu)
            hb[m] += (alpha * (target - hb))[m]
            lb[m & (alpha >= 0.5)] = _NODULE

    def render(self, grid: _Grid, table: bool) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free HU (float32) and labels (uint8) on grid."""
        hu = np.empty(grid.shape, np.float32)
        lab = np.zeros(grid.shape, np.uint8)
        for box in grid.slabs():
            self._paint_base(grid, box, hu[box], lab[box], table)
        self._paint_organs(grid, hu, lab)
        self._paint_tubes(grid, hu, lab)
        self._paint_nodules(grid, hu, lab)
        return hu, lab


def _draw_nodules(
    rng: np.random.Generator, anatomy: _Anatomy, settings: PhantomSettings, voxel_diagonal: float
) -> tuple[Nodule, ...]:
    """Nodules centred in the aerated lung, clear of its border by more than half a voxel, apart from each other."""
    lo, hi = settings.nodules
    d_lo, d_hi = settings.nodule_diameter_mm
    diagonals = np.array(np.meshgrid(*[[-1, 1]] * 3)).reshape(3, -1).T / 3**0.5
    directions = np.concatenate([np.eye(3), -np.eye(3), diagonals])
    placed: list[tuple[np.ndarray, float]] = []
    nodules = []
    for _ in range(int(rng.integers(lo, hi + 1))):
        diameter = float(np.exp(rng.uniform(np.log(d_lo), np.log(d_hi))))  # small nodules are the common ones
        side = int(rng.choice([-1, 1]))
        while True:
            r = diameter / 2
            centres = anatomy.sample_lung(rng, side, 64)
            probes = centres[:, None, :] + max(0.6 * r, 0.6 * voxel_diagonal) * directions[None]
            ok = anatomy.in_lung(probes.reshape(-1, 3), side).reshape(len(centres), -1).all(1)
            for c, rc in placed:
                ok &= np.linalg.norm(centres - c, axis=1) > r + rc + 3
            if ok.any() or diameter <= d_lo:
                break
            diameter = max(d_lo, 0.8 * diameter)  # a large nodule that fits nowhere shrinks
        if not ok.any():
            continue
        c = centres[np.argmax(ok)]
        placed.append((c, r))
        lobes = []
        for _ in range(int(rng.integers(1, 4))):
            direction = rng.normal(size=3)
            offset = anatomy.rot @ (direction / np.linalg.norm(direction) * rng.uniform(0.4, 0.7) * r)
            lobes.append((*(float(o) for o in offset), float(rng.uniform(0.35, 0.6) * r)))
        solid = bool(rng.random() > 0.25)
        nodules.append(
            Nodule(
                center_mm=tuple(float(x) for x in anatomy.to_world(c)),
                diameter_mm=round(diameter, 2),
                solid=solid,
                hu=float(rng.uniform(20, 60) if solid else rng.uniform(-650, -400)),
                lobes=tuple(lobes),
            )
        )
    return tuple(nodules)


def draw_patient(rng: np.random.Generator, settings: PhantomSettings = PhantomSettings()) -> PatientParams:
    """Draw one patient: scan geometry, pose, habitus, organ sizes, densities, findings, nodules and seeds."""
    s = settings
    fov = float(rng.uniform(*s.fov_mm))
    dz = 5.0 if rng.random() < s.thick_slice_fraction else float(rng.choice(s.slice_mm))
    # The scan runs from just above the lung apices to the upper abdomen, 260-340 mm in all.
    lung_height, top_margin = rng.uniform(185, 245), rng.uniform(10, 30)
    below = np.clip(rng.uniform(65, 110), 260 - lung_height - top_margin, 340 - lung_height - top_margin)
    n_slices = max(1, int(round((lung_height + top_margin + below) / dz)))
    dxy = fov / s.matrix
    fov_center = (float(rng.uniform(-10, 10)), float(rng.uniform(-10, 10)))
    origin = (fov_center[0] - fov / 2 + dxy / 2, fov_center[1] - fov / 2 + dxy / 2, float(rng.uniform(-400, -200)))
    offset = rng.uniform([-15, -20], [15, 10])
    shoulder, belly = rng.uniform(0.03, 0.1), rng.uniform(0.0, 0.15)
    # The reconstruction FOV is set to hold the body, so a small FOV means a small patient.
    body_a = min(rng.uniform(135, 180), (fov / 2 - 8 - abs(offset[0])) / (1 + shoulder))
    b_ant = min(body_a * rng.uniform(0.62, 0.74), (fov / 2 - 8 - abs(offset[1])) / (1 + belly))
    b_post = body_a * rng.uniform(0.6, 0.7)
    apex_z = origin[2] + (n_slices - 0.5) * dz - top_margin
    center = (fov_center[0] + offset[0], fov_center[1] + offset[1], apex_z - lung_height)
    cardiomegaly = bool(rng.random() < s.p_cardiomegaly)
    heart_scale = rng.uniform(0.9, 1.1) * (rng.uniform(1.2, 1.35) if cardiomegaly else 1.0)
    heart_axes = tuple(float(x) for x in np.array([62.0, 47.0, 40.0]) * heart_scale * body_a / 155)
    carina_w = lung_height * rng.uniform(0.5, 0.58)
    period = rng.uniform(24, 28)
    effusion_side = int(rng.choice([-1, 1])) if rng.random() < s.p_effusion else 0
    pneumothorax_side = int(rng.choice([-1, 1])) if rng.random() < s.p_pneumothorax else 0
    emphysematous = bool(rng.random() < s.p_emphysema)
    p = PatientParams(
        spacing_xyz=(dxy, dxy, dz),
        shape_zyx=(n_slices, s.matrix, s.matrix),
        origin_xyz=origin,
        fov_mm=fov,
        fov_center_xy=fov_center,
        padding_hu=int(rng.choice([-2000, -3024])),
        noise_sigma=float(rng.uniform(*s.noise_hu)),
        noise_seed=int(rng.integers(2**31)),
        smooth_mm=float(rng.uniform(0.4, 0.9)) if rng.random() < 0.5 else 0.0,
        table_y=float(center[1] + b_post - rng.uniform(2, 8)),
        center_xyz=center,
        yaw_deg=float(rng.uniform(-4, 4)),
        tilt_deg=float(rng.uniform(-2, 2)),
        body_a=float(body_a),
        body_b_ant=float(b_ant),
        body_b_post=float(b_post),
        shoulder_gain=float(shoulder),
        belly_gain=float(belly),
        fat_mm=float(rng.uniform(3, 20)),
        wall_mm=float(rng.uniform(6, 12)),
        back_mm=float(rng.uniform(28, 40)),
        lung_height=float(lung_height),
        dome_left_drop=float(rng.uniform(8, 25)),
        dome_curvature=float(rng.uniform(0.45, 0.65)) if emphysematous else 1.0,
        mediastinum_mm=float(rng.uniform(16, 24)),
        carina_w=float(carina_w),
        heart_center=(
            float(rng.uniform(12, 28)),
            float(-rng.uniform(0.15, 0.3) * b_ant),
            float(rng.uniform(40, 55) + 0.4 * heart_axes[2]),
        ),
        heart_axes=heart_axes,
        heart_tilt_deg=float(rng.uniform(25, 45)),
        heart_turn_deg=float(rng.uniform(30, 50)),
        aorta_mm=float(rng.uniform(11, 15)),
        arch_w=float(carina_w + rng.uniform(10, 25)),
        spine_period=float(period),
        spine_phase=float(rng.uniform(0, period)),
        vertebra_mm=float(rng.uniform(17, 22)),
        rib_top_w=float(lung_height + rng.uniform(-5, 8)),
        rib_drop=float(rng.uniform(65, 95)),
        sternum_w=(float(rng.uniform(-20, 15)), float(carina_w + rng.uniform(35, 55))),
        liver_edge=float(rng.uniform(-10, 20)),
        liver_span=float(rng.uniform(130, 170)),
        stomach_air=float(rng.uniform(0.1, 0.5)),
        lung_hu=float(rng.uniform(-900, -870) if emphysematous else rng.uniform(-880, -830)),
        lung_gradient=float(rng.uniform(30, 90)),
        fat_hu=float(rng.uniform(-110, -85)),
        soft_hu=float(rng.uniform(35, 55)),
        liver_hu=float(rng.uniform(50, 70)),
        bone_hu=float(rng.uniform(200, 320)),
        cortex_hu=float(rng.uniform(700, 1000)),
        effusion_side=effusion_side,
        effusion_mm=float(rng.uniform(15, 45)),
        pneumothorax_side=pneumothorax_side,
        pneumothorax_mm=float(rng.uniform(20, 60)),
        emphysema=(),
        tree_seed=int(rng.integers(2**31)),
        nodules=(),
        findings=(),
    )
    anatomy = _Anatomy(p)
    emphysema = ()
    if emphysematous:
        # Centrilobular emphysema favours the upper zones: keep the higher half of the sampled lung points.
        pts = np.concatenate([anatomy.sample_lung(rng, side, 40) for side in (-1, 1)])
        pts = pts[pts[:, 2] > np.median(pts[:, 2])]
        emphysema = tuple((float(u), float(v), float(w), float(rng.uniform(6, 18))) for u, v, w in pts)
    nodules = _draw_nodules(rng, anatomy, s, float(np.linalg.norm(p.spacing_xyz)))
    findings = {
        "Cardiomegaly": cardiomegaly,
        "Effusion": effusion_side != 0,
        "Pneumothorax": pneumothorax_side != 0,
        "Emphysema": emphysematous,
        "Nodule": any(n.diameter_mm < 30 for n in nodules),
        "Mass": any(n.diameter_mm >= 30 for n in nodules),
    }
    return dataclasses.replace(
        p, emphysema=emphysema, nodules=nodules, findings=tuple(sorted(k for k, v in findings.items() if v))
    )


def render_ct(p: PatientParams) -> tuple[np.ndarray, np.ndarray]:
    """HU volume (int16, [z, y, x], z superior, y posterior, x to the patient's left) and label map (uint8)."""
    grid = _Grid(np.asarray(p.origin_xyz, float), np.asarray(p.spacing_xyz, float), p.shape_zyx)
    hu, lab = _Anatomy(p).render(grid, table=True)
    x, y, _ = grid.axes((slice(0, 1), slice(0, grid.shape[1]), slice(0, grid.shape[2])))
    outside = ((x - p.fov_center_xy[0]) ** 2 + (y - p.fov_center_xy[1]) ** 2 > (p.fov_mm / 2) ** 2)[0]
    lab[:, outside] = 0
    sigma_px = p.smooth_mm / grid.spacing[0]
    blur = sigma_px >= 0.3
    gain = 1.0  # noise is scaled so that its standard deviation after the kernel blur is noise_sigma
    if blur:
        delta = np.zeros((15, 15))
        delta[7, 7] = 1
        gain = float(np.sqrt((ndimage.gaussian_filter(delta, sigma_px) ** 2).sum()))
    rng = np.random.default_rng(p.noise_seed)
    out = np.empty(grid.shape, np.int16)
    for box in grid.slabs():
        slab = hu[box]
        slab += rng.standard_normal(slab.shape, dtype=np.float32) * np.float32(p.noise_sigma / gain)
        if blur:
            slab = ndimage.gaussian_filter(slab, (0, sigma_px, sigma_px))
        slab[:, outside] = p.padding_hu
        out[box] = np.clip(np.rint(slab), -32768, 32767)
    return out, lab


def radiograph_field_mm(p: PatientParams) -> float:
    """Side of the square field of view that render_radiograph images, in mm (shoulders plus a margin)."""
    return 2 * p.body_half_width_mm + 80


def render_radiograph(p: PatientParams, size: int) -> tuple[np.ndarray, np.ndarray]:
    """PA chest radiograph in [0, 1] (row 0 superior, column 0 the patient's right) and its pneumothorax mask.

    The anatomy is rendered without the table on its own isotropic grid of at least 2.5 mm covering
    2 * body_half_width_mm + 80 mm square, attenuation is summed front to back, and the log image is lightly
    edge-enhanced and windowed as radiograph processing does. The mask marks pneumothorax seen without lung.
    """
    anatomy = _Anatomy(p)
    field = radiograph_field_mm(p)
    n = max(1, min(size, int(field / 2.5)))
    h = field / n
    top = anatomy.to_world(np.array([0.0, 0.0, p.lung_height + 70]))
    y0 = p.center_xyz[1] - p.body_b_ant * (1 + p.belly_gain) - 10
    grid = _Grid(
        np.array([top[0] - field / 2 + h / 2, y0, top[2] - field + h / 2]),
        np.full(3, h),
        (n, int(np.ceil((p.table_y + 10 - y0) / h)), n),
    )
    hu, lab = anatomy.render(grid, table=False)
    water = np.maximum(1 + hu / 1000 * np.where(hu > 0, _BONE_GAIN, 1.0), 0)
    density = _MU_WATER * h * water.sum(axis=1)
    density += 0.4 * (density - ndimage.gaussian_filter(density, 10 / h))  # unsharp mask: the processed-film look
    density += np.random.default_rng(p.noise_seed).normal(0, 0.02, density.shape)
    # White is full-thickness soft tissue (mediastinum, abdomen); the spine and other bones saturate, as on film.
    image = np.clip(density / np.percentile(density, 95), 0, 1) ** 1.6
    mask = (lab == _PTX).any(axis=1) & ~np.isin(lab, (_LUNG_R, _LUNG_L)).any(axis=1)
    image = ndimage.zoom(image[::-1], size / n, order=1, grid_mode=True, mode="nearest")
    mask = ndimage.zoom(mask[::-1].astype(np.uint8), size / n, order=0, grid_mode=True, mode="nearest")
    return np.clip(image, 0, 1).astype(np.float32), mask
