"""Evaluation metrics of the target tasks: ROC AUC (classification) and IoU / Dice (segmentation), in numpy.

AUC is the Mann-Whitney statistic on average ranks, so ties count one half, as in scikit-learn's roc_auc_score. IoU
and Dice are computed globally over every voxel of a set (one intersection and one union for the whole test split),
which is how Models Genesis reports its segmentation scores; per_case_iou gives the per-sample values as well.
An empty prediction of an empty target is a perfect score (1.0) everywhere.
"""

from __future__ import annotations

import numpy as np


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of values, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def roc_auc(y_true, y_score) -> float:
    """Area under the ROC curve of binary labels y_true for scores y_score; NaN unless both classes are present."""
    y_true, y_score = np.asarray(y_true).reshape(-1), np.asarray(y_score, np.float64).reshape(-1)
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true has {y_true.size} values but y_score {y_score.size}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must be binary (0/1 or bool)")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score holds non-finite values")
    positive = y_true.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _ranks(y_score)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def mean_auc(targets, scores) -> tuple[float, list[float]]:
    """(mean AUC over the labels that have both classes, per-label AUC with NaN for the others) of [n, L] arrays.

    The mean is NaN when no label has both classes."""
    targets, scores = np.asarray(targets), np.asarray(scores)
    if targets.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(f"targets and scores must both be [n, labels]; got {targets.shape} and {scores.shape}")
    per_label = [roc_auc(targets[:, j], scores[:, j]) for j in range(targets.shape[1])]
    defined = [value for value in per_label if not np.isnan(value)]
    return (float(np.mean(defined)) if defined else float("nan")), per_label


def overlap_counts(pred, target, axis=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(|pred & target|, |pred|, |target|) of boolean arrays, summed over axis (None: all)."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    return (
        np.logical_and(pred, target).sum(axis=axis, dtype=np.int64),
        pred.sum(axis=axis, dtype=np.int64),
        target.sum(axis=axis, dtype=np.int64),
    )


def iou_from_counts(intersection, predicted, actual):
    """Intersection over union from overlap counts; 1.0 where both sets are empty."""
    intersection, union = np.asarray(intersection, np.float64), np.asarray(predicted) + np.asarray(actual)
    union = union - intersection
    result = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    return float(result) if result.ndim == 0 else result


def dice_from_counts(intersection, predicted, actual):
    """Dice coefficient (F1) from overlap counts; 1.0 where both sets are empty."""
    total = np.asarray(predicted, np.float64) + np.asarray(actual)
    result = np.where(total > 0, 2.0 * np.asarray(intersection) / np.maximum(total, 1), 1.0)
    return float(result) if result.ndim == 0 else result


def iou(pred, target) -> float:
    """Global intersection over union of two boolean arrays (every voxel of the set); 1.0 when both are empty."""
    return iou_from_counts(*overlap_counts(pred, target))


def dice(pred, target) -> float:
    """Global Dice coefficient of two boolean arrays (every voxel of the set); 1.0 when both are empty."""
    return dice_from_counts(*overlap_counts(pred, target))


def per_case_iou(preds, targets) -> np.ndarray:
    """IoU of each case (first axis) of [n, ...] boolean arrays; 1.0 where a case's prediction and target are empty."""
    preds, targets = np.asarray(preds, bool), np.asarray(targets, bool)
    if preds.ndim < 1:
        raise ValueError("per_case_iou needs arrays with a case axis")
    axes = tuple(range(1, preds.ndim))
    return np.atleast_1d(np.asarray(iou_from_counts(*overlap_counts(preds, targets, axis=axes)), np.float64))
