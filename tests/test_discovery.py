"""Self-discovery: exact neighbours, the air test, coordinates inside margins and the class table in both modes."""

import numpy as np
import pandas as pd
import pytest

from semantic_genesis.discovery.plan import (
    DiscoverySettings,
    air_acceptor,
    air_score,
    choose_coordinates,
    fit_inside,
    nearest_neighbours,
    passes_air_test,
    plan_classes,
    read_plan,
    start_range,
    write_plan,
)

SMALL = DiscoverySettings(classes=5, k=6, val_neighbours=3, crop_size_xyz=(16, 16, 8), min_distance=3.0, seed=1)


def air_score_loop(crop: np.ndarray, threshold: float = 0.425, lookahead: int = 3) -> float:
    """The released quadruple loop, on [z, y, x], with slices past the crop's end counting as below threshold."""
    nz, ny, nx = crop.shape
    d = np.zeros(crop.shape)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                for k in range(lookahead):
                    if z + k < nz and crop[z + k, y, x] >= threshold:
                        d[z, y, x] = k
                        break
                    if k == lookahead - 1:
                        d[z, y, x] = k
    return float(np.sum(1.0 - d / (lookahead - 1)))


def fake_set(n_train=12, n_val=6, n_test=3, dims=8, seed=0):
    """Latents, ids, splits and shapes of a small fake data set."""
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    ids = [f"p{i:03d}" for i in range(n)]
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    shapes = {sid: (int(rng.integers(40, 56)), int(rng.integers(60, 72)), int(rng.integers(60, 72))) for sid in ids}
    return rng.normal(size=(n, dims)), ids, splits, shapes


def accept_all(_sid: str):
    """An accept_factory that takes every coordinate."""
    return lambda start: True


@pytest.mark.parametrize("query_is_index", [True, False])
def test_neighbours_are_the_nearest(query_is_index):
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(60, 16)).astype(np.float32)
    candidates = np.sort(rng.choice(60, 40, replace=False))
    query = int(candidates[3]) if query_is_index else rng.normal(size=16)
    indices, distances = nearest_neighbours(latents, query, 7, candidates)
    vector = latents[query] if query_is_index else query
    brute = np.linalg.norm(latents[candidates].astype(np.float64) - vector, axis=1)
    order = np.argsort(brute, kind="stable")[:7]
    np.testing.assert_array_equal(indices, candidates[order])
    np.testing.assert_allclose(distances, brute[order], atol=1e-6)
    if query_is_index:
        assert indices[0] == query and distances[0] == 0.0


def test_reference_is_rank_zero_despite_a_duplicate():
    latents = np.zeros((5, 4))
    latents[3:] = 1.0
    indices, distances = nearest_neighbours(latents, 2, 3)
    assert indices[0] == 2 and set(indices[1:]) <= {0, 1} and distances.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="neighbours among"):
        nearest_neighbours(latents, 0, 6)


@pytest.mark.parametrize("shape", [(1, 5, 6), (2, 4, 4), (3, 3, 5), (7, 6, 5), (12, 4, 3)])
def test_vectorised_air_score_equals_the_loop(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(3):
        crop = rng.uniform(0, 1, shape)
        crop[-1, 0, 0] = 0.425  # exactly at the threshold counts as reaching it
        assert air_score(crop) == pytest.approx(air_score_loop(crop))
    image = rng.uniform(0, 1, shape[1:])
    assert air_score(image) == pytest.approx(air_score_loop(image[None]))  # 2D is a single slice


def test_air_score_values_and_threshold():
    crop = np.zeros((4, 1, 1))
    crop[2] = 1.0  # tissue two slices below the first voxel, one below the second, in the third
    assert air_score(crop) == pytest.approx(0.0 + 0.5 + 1.0 + 0.0)
    image = np.zeros((10, 10))
    image[:1, :5] = 1.0  # 5 % dense pixels pass, 20 % fail
    assert passes_air_test(image) and not passes_air_test(np.where(np.arange(10) < 2, 1.0, image.T).T)


def test_coordinates_respect_margins_distance_and_accept():
    settings = DiscoverySettings(crop_size_xyz=(16, 16, 8), min_distance=6.0)
    shape = (60, 80, 90)
    lo, hi = start_range(shape, settings)
    np.testing.assert_array_equal(lo, [np.ceil(30 / 256 * 60), np.ceil(100 / 512 * 80), np.ceil(100 / 512 * 90)])
    assert (hi + [8, 16, 16] <= np.floor(np.array(shape) * (1 - np.array([34 / 256, 101 / 512, 101 / 512])))).all()
    starts = choose_coordinates(shape, 12, settings, np.random.default_rng(0), accept=lambda s: s[2] % 2 == 0)
    array = np.array(starts)
    assert len(starts) == 12 and (array >= lo).all() and (array <= hi).all() and (array[:, 2] % 2 == 0).all()
    gaps = np.linalg.norm(array[:, None] - array[None], axis=-1)[np.triu_indices(12, 1)]
    assert gaps.min() >= 6.0
    with pytest.raises(RuntimeError, match="found only 0 of 2"):
        choose_coordinates(shape, 2, settings, np.random.default_rng(0), accept=lambda s: False)
    with pytest.raises(ValueError, match="no room"):
        start_range((8, 20, 20), settings)


def test_air_acceptor_crops_the_reference():
    volume = np.zeros((40, 64, 64), np.float32)
    volume[:, :, 32:] = 1.0  # right half dense
    accept = air_acceptor(lambda start, size: volume[tuple(slice(b, b + s) for b, s in zip(start, size))], SMALL)
    assert accept((10, 10, 5)) and not accept((10, 10, 30))


@pytest.mark.parametrize("selection", ["paper", "released"])
def test_plan_classes(selection):
    latents, ids, splits, shapes = fake_set()
    settings = DiscoverySettings(**{**SMALL.as_dict(), "selection": selection})
    plan = plan_classes(latents, ids, splits, settings, np.random.default_rng(0), accept_all, shapes)
    split_of = dict(zip(ids, splits))
    train, val = plan[plan.split == "train"], plan[plan.split == "val"]
    assert len(train) == 5 * 6 and len(val) == 5 * 3
    assert set(train.neighbour.map(split_of)) == {"train"} and set(val.neighbour.map(split_of)) == {"val"}
    assert not set(train.neighbour) & set(val.neighbour)
    first = train[train["rank"] == 0]
    assert (first.neighbour == first.reference).all() and (first.distance == 0).all()
    references = plan.groupby("class").reference.first()
    assert references.nunique() == 1 if selection == "paper" else len(references) == 5
    for _, rows in plan.groupby("class"):
        ref = rows[rows.neighbour == rows.reference].iloc[0]
        start = (ref.start_z, ref.start_y, ref.start_x)
        for row in rows.itertuples():
            # Same voxel coordinate in every neighbour, shifted inside only where that scan is too small.
            assert (row.start_z, row.start_y, row.start_x) == fit_inside(start, shapes[row.neighbour], (8, 16, 16))
        train_rows = rows[rows.split == "train"]
        brute = np.linalg.norm(latents - latents[ids.index(ref.reference)], axis=1)
        expected = sorted(range(12), key=lambda i: brute[i])[:6]
        assert [ids.index(n) for n in train_rows.neighbour] == expected
    starts = plan.drop_duplicates("class")[["start_z", "start_y", "start_x"]].to_numpy()
    assert np.linalg.norm(starts[:, None] - starts[None], axis=-1)[np.triu_indices(5, 1)].min() >= 3.0


def test_plan_is_seeded_and_round_trips(tmp_path):
    latents, ids, splits, shapes = fake_set()
    plans = [plan_classes(latents, ids, splits, SMALL, np.random.default_rng(3), accept_all, shapes) for _ in range(2)]
    pd.testing.assert_frame_equal(*plans)
    write_plan(plans[0], tmp_path / "plan.tsv")
    pd.testing.assert_frame_equal(read_plan(tmp_path / "plan.tsv"), plans[0])


def test_small_scans_are_left_out_and_too_few_raise():
    latents, ids, splits, shapes = fake_set()
    shapes[ids[0]] = (4, 64, 64)  # fewer slices than the crop
    plan = plan_classes(latents, ids, splits, SMALL, np.random.default_rng(0), accept_all, shapes)
    assert ids[0] not in set(plan.neighbour)
    with pytest.raises(ValueError, match="needs 20 train scans"):
        plan_classes(latents, ids, splits, DiscoverySettings(k=20), np.random.default_rng(0), accept_all, shapes)


def test_2d_plan():
    latents, ids, splits, _ = fake_set()
    margins = dict(margin_lo=(0.1, 0.1), margin_hi=(0.1, 0.1))
    settings = DiscoverySettings(classes=4, k=5, val_neighbours=2, crop_size_xyz=(16, 16), **margins)
    shapes = {sid: (64, 64) for sid in ids}
    plan = plan_classes(latents, ids, splits, settings, np.random.default_rng(0), accept_all, shapes)
    assert len(plan) == 4 * 7 and (plan.start_z == 0).all()
    assert plan.start_y.between(7, 64 - 7 - 16).all() and plan.start_x.between(7, 64 - 7 - 16).all()


def test_settings_validation_and_config():
    with pytest.raises(ValueError, match="selection"):
        DiscoverySettings(selection="other")
    with pytest.raises(ValueError, match="one value per axis"):
        DiscoverySettings(crop_size_xyz=(32, 32))
    cfg = {"classes": 3, "crop_size_xyz": [8, 8, 4], "unknown": 1}
    assert DiscoverySettings.from_dict(cfg).crop_zyx == (4, 8, 8)
