"""Synthetic chest phantom: determinism, geometry, densities, anatomy, findings and the radiograph."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from semantic_genesis.synthetic.phantom import LABELS, PhantomSettings, draw_patient, render_ct, render_radiograph

SMALL = PhantomSettings(matrix=64, nodules=(2, 3), nodule_diameter_mm=(4.0, 20.0))
LUNGS = [LABELS["lung_right"], LABELS["lung_left"]]


def _patient(seed: int, settings: PhantomSettings = SMALL):
    return draw_patient(np.random.default_rng(seed), settings)


@pytest.fixture(scope="module")
def scans():
    """Three small patients with their CT volumes and label maps."""
    out = []
    for seed in (1, 2, 3):
        p = _patient(seed)
        out.append((p, *render_ct(p)))
    return out


def _voxel(p, world) -> tuple[int, int, int]:
    """[z, y, x] index of the voxel holding a world point."""
    ijk = np.round((np.asarray(world) - p.origin_xyz) / p.spacing_xyz).astype(int)
    return tuple(ijk[::-1])


def test_same_seed_same_patient_and_arrays():
    a, b = _patient(7), _patient(7)
    assert a == b
    for x, y in zip(render_ct(a), render_ct(b)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(render_radiograph(a, 64), render_radiograph(b, 64)):
        np.testing.assert_array_equal(x, y)


def test_different_seeds_differ(scans):
    (p1, hu1, _), (p2, hu2, _) = scans[:2]
    assert p1 != p2
    assert p1.body_a != p2.body_a and p1.tree_seed != p2.tree_seed and p1.noise_seed != p2.noise_seed
    assert hu1.shape != hu2.shape or not np.array_equal(hu1, hu2)


def test_shapes_dtypes_and_geometry(scans):
    for p, hu, lab in scans:
        assert hu.dtype == np.int16 and lab.dtype == np.uint8
        assert hu.shape == lab.shape == p.shape_zyx
        assert p.shape_zyx[1:] == (SMALL.matrix, SMALL.matrix)
        assert p.spacing_xyz[0] == p.spacing_xyz[1] == pytest.approx(p.fov_mm / SMALL.matrix)
        assert p.spacing_xyz[2] in SMALL.slice_mm
        assert 255 <= p.shape_zyx[0] * p.spacing_xyz[2] <= 345
        assert set(np.unique(lab)) <= set(LABELS.values())


def test_padding_exactly_outside_the_fov_circle(scans):
    for p, hu, lab in scans:
        assert p.padding_hu in (-2000, -3024)
        n = p.shape_zyx[1]
        x = p.origin_xyz[0] + np.arange(n) * p.spacing_xyz[0]
        y = p.origin_xyz[1] + np.arange(n) * p.spacing_xyz[1]
        outside = (x[None] - p.fov_center_xy[0]) ** 2 + (y[:, None] - p.fov_center_xy[1]) ** 2 > (p.fov_mm / 2) ** 2
        assert (hu[:, outside] == p.padding_hu).all()
        assert (hu[:, ~outside] > -1500).all()
        assert (lab[:, outside] == 0).all()


def test_hu_ranges_per_label(scans):
    for _p, hu, lab in scans:
        assert np.median(hu[np.isin(lab, LUNGS)]) < -700
        assert 30 <= np.median(hu[lab == LABELS["liver"]]) <= 90
        assert np.median(hu[lab == LABELS["bone"]]) > 150
        for organ in ("heart", "aorta"):
            assert 0 <= np.median(hu[lab == LABELS[organ]]) <= 80
        assert np.median(hu[lab == LABELS["airway"]]) < -500
        # Air around the patient, inside the FOV, is about -1000 plus noise.
        assert -1050 < np.median(hu[(lab == 0) & (hu > -1500)]) < -950


def test_label_fractions_and_body_orientation(scans):
    for _p, _hu, lab in scans:
        body = lab > 0
        assert 0.10 < np.isin(lab, LUNGS).sum() / body.sum() < 0.40
        for name in ("airway", "vessel", "heart", "aorta", "bone", "liver", "nodule"):
            assert (lab == LABELS[name]).any(), name
        # x grows to the patient's left: right lung and liver at smaller x than left lung and heart.
        x_of = {
            name: np.nonzero(lab == LABELS[name])[2].mean() for name in ("lung_right", "lung_left", "liver", "heart")
        }
        assert x_of["lung_right"] < x_of["lung_left"] and x_of["liver"] < x_of["heart"]
        # y grows posteriorly: the spinal column (bone near the midline column) lies behind the heart.
        heart_y = np.nonzero(lab == LABELS["heart"])[1].mean()
        mid = lab[:, :, lab.shape[2] // 2 - 2 : lab.shape[2] // 2 + 3]
        assert np.nonzero(mid == LABELS["bone"])[1].mean() > heart_y


def test_liver_lies_under_the_right_lung(scans):
    """In every (y, x) column the liver is below the lowest right-lung voxel: the diaphragm separates them."""
    for _p, _hu, lab in scans:
        z = np.arange(lab.shape[0])[:, None, None]
        lowest_lung = np.where(lab == LABELS["lung_right"], z, lab.shape[0]).min(axis=0)
        liver_z, liver_y, liver_x = np.nonzero(lab == LABELS["liver"])
        assert np.mean(liver_z < lowest_lung[liver_y, liver_x]) > 0.97
        assert np.nonzero(lab == LABELS["liver"])[0].mean() < np.nonzero(np.isin(lab, LUNGS))[0].mean()


def test_nodule_centres_are_nodule_voxels_inside_the_lungs(scans):
    for p, _hu, lab in scans:
        assert 2 <= len(p.nodules) <= 3 and "Nodule" in p.findings
        lung_idx = np.nonzero(np.isin(lab, LUNGS))
        for n in p.nodules:
            assert 4.0 <= n.diameter_mm <= 20.0
            k = _voxel(p, n.center_mm)
            assert lab[k] == LABELS["nodule"]
            assert all(ax.min() <= i <= ax.max() for ax, i in zip(lung_idx, k))


def test_nodules_are_visible_and_small_ones_survive_coarse_voxels():
    p = _patient(5, dataclasses.replace(SMALL, matrix=48, nodules=(3, 3), nodule_diameter_mm=(3.0, 3.5)))
    hu, lab = render_ct(p)
    for n in p.nodules:
        assert lab[_voxel(p, n.center_mm)] == LABELS["nodule"]
    solid = [n for n in p.nodules if n.solid]
    if solid:
        assert np.mean([hu[_voxel(p, n.center_mm)] for n in solid]) > -700


def test_thick_slices():
    p = _patient(11, dataclasses.replace(SMALL, thick_slice_fraction=1.0))
    assert p.spacing_xyz[2] == 5.0
    assert 52 <= p.shape_zyx[0] <= 68


def test_findings_follow_the_settings():
    none = dataclasses.replace(SMALL, nodules=(0, 0), p_cardiomegaly=0, p_effusion=0, p_pneumothorax=0, p_emphysema=0)
    assert _patient(3, none).findings == ()
    every = dataclasses.replace(
        none, p_cardiomegaly=1, p_effusion=1, p_emphysema=1, nodules=(1, 1), nodule_diameter_mm=(30.0, 30.0)
    )
    p = _patient(3, every)
    assert p.findings == ("Cardiomegaly", "Effusion", "Emphysema", "Mass")
    assert p.emphysema and p.effusion_side in (-1, 1)
    hu, lab = render_ct(p)
    effusion = lab == LABELS["effusion"]
    assert effusion.any() and -30 < np.median(hu[effusion]) < 60
    # The fluid is dependent: behind the centre of its lung.
    lung = LABELS["lung_left"] if p.effusion_side > 0 else LABELS["lung_right"]
    assert np.nonzero(effusion)[1].mean() > np.nonzero(lab == lung)[1].mean()
    normal = _patient(3, none)
    assert np.prod(p.heart_axes) > 1.4 * np.prod(normal.heart_axes) * (p.body_a / normal.body_a) ** 3


def test_pneumothorax_in_ct_and_radiograph():
    settings = dataclasses.replace(SMALL, p_pneumothorax=1.0)
    sides = set()
    for seed in (1, 4, 6):
        p = _patient(seed, settings)
        assert "Pneumothorax" in p.findings
        hu, lab = render_ct(p)
        ptx = lab == LABELS["pneumothorax"]
        assert ptx.sum() > 50 and np.median(hu[ptx]) < -900
        image, mask = render_radiograph(p, 64)
        assert mask.dtype == np.uint8 and mask.shape == (64, 64) and set(np.unique(mask)) == {0, 1}
        # Column 0 is the patient's right: a left pneumothorax lies in the image's right half.
        assert (np.nonzero(mask)[1].mean() > 32) == (p.pneumothorax_side > 0)
        sides.add(p.pneumothorax_side)
    assert sides == {-1, 1}


def test_radiograph_looks_like_a_pa_chest_film():
    for seed in (1, 2):
        p = _patient(seed)
        image, mask = render_radiograph(p, 128)
        assert image.dtype == np.float32 and image.shape == (128, 128)
        assert image.min() >= 0 and image.max() <= 1
        assert not mask.any()
        rows = slice(45, 75)  # mid lung fields
        spine = image[rows, 60:68].mean()
        lungs = np.concatenate([image[rows, 25:45], image[rows, 83:103]], axis=1).mean()
        assert lungs < spine - 0.2
        assert image[:, :4].mean() < 0.1  # air beside the patient is dark
        assert image[110:120, 40:88].mean() > lungs + 0.2  # row 0 is the head end: the abdomen is at the bottom


def test_radiograph_follow_ups_differ_only_by_noise():
    p = _patient(2)
    a, _ = render_radiograph(p, 96)
    b, _ = render_radiograph(dataclasses.replace(p, noise_seed=p.noise_seed + 1), 96)
    assert not np.array_equal(a, b)
    assert np.abs(a - b).mean() < 0.05
