"""The per-run metrics: Spearman rho, L2 and relative L2 (docs/METHOD.md §1). The one implementation.

    from train_head.metrics import spearman, l2, rl2, all_metrics

The trainer logs them every epoch; `evaluate.metrics` re-exports them and adds what only the tables
need (Fisher-z means, bootstrap intervals). train_head must not import evaluate (data flows one way), so
they live here, in the lowest layer that needs them.

Definitions:

- ``spearman(pred, true)``: ``scipy.stats.spearmanr(pred, true).statistic``, i.e. the Pearson
  correlation of the ranks, ties getting their average rank.
- ``l2 = mean((pred - true)**2)`` on the evaluation scale.
- ``rl2 = mean(((pred - true) / (max(true) - min(true)))**2)`` as a *fraction* (tables multiply by 100
  when they show it); the range is taken over the evaluated set.
- ``all_metrics(pred, true) -> {"rho", "l2", "rl2"}``.

NaN policy (one policy for all three; "undefined" is NaN, never 0 and never an exception):

- the inputs are flattened to float64; ``pred`` and ``true`` of different lengths raise ``ValueError``
  (that is a bug in the caller, not an undefined metric);
- any non-finite value (NaN or +-inf) in ``pred`` or in ``true`` makes all three NaN: a diverged head
  or a missing score gives an undefined metric instead of a ranking of NaNs or an infinite error;
- an empty set makes all three NaN;
- ``spearman`` is also NaN for fewer than 2 items or when either side is constant (all predictions
  equal, or all true scores equal);
- ``rl2`` is also NaN when the true scores span no range (``max(true) == min(true)``).

For finite input the values are exactly those of the formulas above (scipy's rho, numpy's mean).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

__all__ = ["spearman", "l2", "rl2", "all_metrics"]


def _pair(pred, true) -> tuple[np.ndarray, np.ndarray, bool]:
    """(pred, true) as flat float64 arrays, and whether the metrics are defined at all (non-empty, finite)."""
    p = np.asarray(pred, dtype=np.float64).ravel()
    t = np.asarray(true, dtype=np.float64).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred and true differ in length: {p.size} vs {t.size}")
    ok = p.size > 0 and bool(np.isfinite(p).all()) and bool(np.isfinite(t).all())
    return p, t, ok


def spearman(pred, true) -> float:
    """Spearman's rank correlation (scipy's); NaN when undefined (see the module's NaN policy)."""
    p, t, ok = _pair(pred, true)
    if not ok or p.size < 2 or np.ptp(p) == 0 or np.ptp(t) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(p, t).statistic
    return float(rho)


def l2(pred, true) -> float:
    """Mean squared error ``mean((pred - true)**2)``; NaN for an empty set or non-finite input."""
    p, t, ok = _pair(pred, true)
    if not ok:
        return math.nan
    return float(np.mean((p - t) ** 2))


def rl2(pred, true) -> float:
    """Relative L2 ``mean(((pred - true) / (max(true) - min(true)))**2)`` as a fraction.

    NaN for an empty set, non-finite input, or true scores that span no range.
    """
    p, t, ok = _pair(pred, true)
    if not ok:
        return math.nan
    span = float(np.max(t) - np.min(t))
    if span == 0:
        return math.nan
    return float(np.mean(((p - t) / span) ** 2))


def all_metrics(pred, true) -> dict[str, float]:
    """{"rho", "l2", "rl2"} for one evaluated set."""
    return {"rho": spearman(pred, true), "l2": l2(pred, true), "rl2": rl2(pred, true)}
