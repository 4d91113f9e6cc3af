"""Metrics agree with scikit-learn on random data, ties included, and handle the degenerate cases."""

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score, roc_auc_score

from semantic_genesis.finetune.metrics import dice, iou, mean_auc, overlap_counts, per_case_iou, roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_scikit_learn_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    continuous = rng.normal(size=200) + y
    tied = np.round(continuous)  # a handful of distinct values: many ties within and across classes
    for scores in (continuous, tied, tied.astype(np.float16)):
        assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_auc_extremes_and_single_class():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(roc_auc([], []))
    with pytest.raises(ValueError, match="binary"):
        roc_auc([0, 2], [0.1, 0.2])


def test_mean_auc_skips_labels_with_one_class():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, (100, 4))
    targets[:, 2] = 0  # label 2 has no positive case
    scores = rng.random((100, 4)) + 0.5 * targets
    mean, per_label = mean_auc(targets, scores)
    assert len(per_label) == 4 and math.isnan(per_label[2])
    expected = [roc_auc_score(targets[:, j], scores[:, j]) for j in (0, 1, 3)]
    np.testing.assert_allclose([per_label[j] for j in (0, 1, 3)], expected)
    assert mean == pytest.approx(np.mean(expected))
    assert math.isnan(mean_auc(np.zeros((5, 2)), rng.random((5, 2)))[0])


@pytest.mark.parametrize("seed", range(3))
def test_iou_and_dice_match_scikit_learn_globally(seed):
    rng = np.random.default_rng(seed)
    target = rng.random((6, 8, 16, 16)) < 0.3
    pred = np.where(rng.random(target.shape) < 0.8, target, ~target)
    assert iou(pred, target) == pytest.approx(jaccard_score(target.ravel(), pred.ravel()))
    assert dice(pred, target) == pytest.approx(f1_score(target.ravel(), pred.ravel()))
    cases = per_case_iou(pred, target)
    expected = [jaccard_score(t.ravel(), p.ravel()) for p, t in zip(pred, target)]
    np.testing.assert_allclose(cases, expected)
    # Global IoU is one ratio over the whole set, not the mean of the per-case ratios.
    intersection, predicted, actual = overlap_counts(pred, target)
    assert iou(pred, target) == intersection / (predicted + actual - intersection)


def test_empty_sets_score_one_and_disjoint_sets_zero():
    empty = np.zeros((2, 4, 4), bool)
    full = np.ones((2, 4, 4), bool)
    assert iou(empty, empty) == 1.0 and dice(empty, empty) == 1.0
    assert iou(full, empty) == 0.0 and dice(empty, full) == 0.0
    mixed_pred = np.stack([empty[0], full[0]])
    np.testing.assert_array_equal(per_case_iou(mixed_pred, empty), [1.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        iou(empty, full[0])
