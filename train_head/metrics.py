"""The three per-run metrics the trainer logs every epoch (Spearman rho, L2, relative L2).

Kept minimal on purpose: `evaluate.metrics` has the richer set (Fisher-z means, bootstrap CIs) and
train_head must not import evaluate (data flows one way). RL2 is returned as a fraction; tables
multiply by 100 when they show it.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats


def spearman(pred, true) -> float:
    """Spearman's rank correlation; NaN (not an exception) when either side is constant or n < 2."""
    pred = np.asarray(pred, dtype=np.float64).ravel()
    true = np.asarray(true, dtype=np.float64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"spearman: shapes differ {pred.shape} vs {true.shape}")
    if pred.size < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0 or not np.all(np.isfinite(pred)):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(pred, true).statistic
    return float(rho)


def l2(pred, true) -> float:
    """Mean squared error `mean((pred - true)**2)`; NaN for an empty set."""
    pred = np.asarray(pred, dtype=np.float64).ravel()
    true = np.asarray(true, dtype=np.float64).ravel()
    if pred.size == 0:
        return math.nan
    return float(np.mean((pred - true) ** 2))


def rl2(pred, true) -> float:
    """Relative L2 `mean(((pred - true) / (max(true) - min(true)))**2)` as a fraction (SPEC section 1).

    The range is taken over the evaluated set; NaN when it is zero or the set is empty.
    """
    pred = np.asarray(pred, dtype=np.float64).ravel()
    true = np.asarray(true, dtype=np.float64).ravel()
    if pred.size == 0:
        return math.nan
    span = float(np.max(true) - np.min(true))
    if span == 0:
        return math.nan
    return float(np.mean(((pred - true) / span) ** 2))


def all_metrics(pred, true) -> dict[str, float]:
    """{"rho", "l2", "rl2"} for one evaluated set."""
    return {"rho": spearman(pred, true), "l2": l2(pred, true), "rl2": rl2(pred, true)}
