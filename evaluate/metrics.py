"""Metrics for action quality assessment on top of the per-run ones (docs/METHOD.md §1).

    from evaluate.metrics import spearman, l2, rl2, fisher_z_mean, bootstrap_ci

``spearman``, ``l2``, ``rl2`` and ``all_metrics`` are ``train_head.metrics``'s (re-exported here; that
module holds the one implementation and the one NaN policy: any non-finite value, an empty set, fewer
than 2 items or a constant side give NaN, never 0 and never an exception). This module adds what only
the tables need:

- ``fisher_z_mean(rhos)`` = ``tanh(mean(arctanh(rho)))``. ``|rho|`` is clipped to ``1 - 1e-7`` before
  ``arctanh`` so that a perfect correlation (common on tiny test sets) stays finite; note that such a
  value (z ~ 8.4) then dominates the average. NaN handling: ``nan_policy="propagate"`` (the default)
  returns NaN when any rho is NaN, because an "average over six classes" that silently skips one is a
  different number; ``nan_policy="omit"`` averages the defined ones and logs a warning with the count.
- ``bootstrap_ci``: percentile bootstrap over *videos* (resampled with replacement, seeded). With
  predictions of several seeds for the same test videos (``pred`` of shape ``[S, N]``), each bootstrap
  draw resamples the videos once and applies the same draw to every seed; the statistic is the mean of
  the seeds' rho (the "rho mean" of the tables), so the interval is the test-set sampling uncertainty
  of that mean, while the spread between seeds is reported separately as a std. Draws on which rho is
  undefined (a resample with constant scores) are left out of the percentiles; if more than half of
  the draws are undefined the interval is (NaN, NaN). Following the same NaN policy, a non-finite value
  in ``true`` or ``pred`` (or fewer than 2 videos) gives (NaN, NaN).
- ``summarize(pred, true)`` (= ``all_metrics``) and ``isnan(x)`` for table cells.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
from scipy.stats import rankdata

from train_head.metrics import all_metrics, l2, rl2, spearman

__all__ = ["spearman", "l2", "rl2", "all_metrics", "fisher_z_mean", "bootstrap_ci", "bootstrap_ci_fisher",
           "summarize", "isnan"]

log = logging.getLogger(__name__)

_RHO_CLIP = 1.0 - 1e-7


def _as_1d(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return a if a.ndim == 1 else a.reshape(-1)


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis; NaN where either row is constant.  a, b: (..., N)."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    saa = (a * a).sum(axis=-1)
    sbb = (b * b).sum(axis=-1)
    sab = (a * b).sum(axis=-1)
    denom = np.sqrt(saa * sbb)
    # a constant row has zero variance up to rounding; compare against its scale, not exact 0
    tiny = denom <= 1e-12 * np.maximum(1.0, np.abs(sab))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(tiny, np.nan, sab / np.where(tiny, 1.0, denom))
    return np.clip(r, -1.0, 1.0)


def _rank_const_aware(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis."""
    return rankdata(x, method="average", axis=-1)


def fisher_z_mean(rhos: Sequence[float], *, nan_policy: str = "propagate") -> float:
    """tanh(mean(arctanh(rho))), |rho| clipped to 1 - 1e-7 first.

    nan_policy: "propagate" (default) -> NaN if any rho is NaN; "omit" -> ignore NaN rhos and log a
    warning with how many were ignored (NaN if none is left). An empty list gives NaN.
    """
    r = np.asarray(list(rhos), dtype=np.float64).reshape(-1)
    if nan_policy not in ("propagate", "omit"):
        raise ValueError(f"nan_policy must be 'propagate' or 'omit', got {nan_policy!r}")
    bad = np.isnan(r)
    if bad.any():
        if nan_policy == "propagate":
            return float("nan")
        log.warning("fisher_z_mean: ignoring %d undefined (NaN) rho of %d", int(bad.sum()), r.size)
        r = r[~bad]
    if r.size == 0:
        return float("nan")
    z = np.arctanh(np.clip(r, -_RHO_CLIP, _RHO_CLIP))
    return float(np.tanh(z.mean()))


def _fisher_rows(r: np.ndarray) -> np.ndarray:
    """Fisher-z mean over axis 0 with NaN propagation. r: (K, B) -> (B,)."""
    z = np.arctanh(np.clip(r, -_RHO_CLIP, _RHO_CLIP))
    return np.tanh(z.mean(axis=0))


def _boot_rhos(true: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """rho of each seed on each resample, mean over seeds.

    true (N,), pred (S, N), idx (B, N) -> (B,)  (NaN where any seed's rho is undefined).
    """
    rt = _rank_const_aware(true[idx])                                # (B, N)
    rp = _rank_const_aware(pred[:, idx])                             # (S, B, N)
    return _rowwise_pearson(rp, rt[None]).mean(axis=0)               # (B,)


def _prep_item(true, pred) -> tuple[np.ndarray, np.ndarray]:
    t = _as_1d(true)
    p = np.asarray(pred, dtype=np.float64)
    if p.ndim == 1:
        p = p[None]
    if p.ndim != 2 or p.shape[1] != t.size:
        raise ValueError(f"pred must be [N] or [S, N] with N = {t.size}, got shape {p.shape}")
    return t, p


def _percentile_ci(stats: np.ndarray, level: float) -> tuple[float, float]:
    ok = ~np.isnan(stats)
    if ok.sum() * 2 < stats.size or ok.sum() == 0:
        return float("nan"), float("nan")
    if not ok.all():
        log.info("bootstrap: %d of %d draws had undefined rho and were left out", int((~ok).sum()), stats.size)
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(stats[ok], [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def bootstrap_ci(true, pred, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 chunk: int = 250) -> tuple[float, float]:
    """Percentile bootstrap CI of Spearman's rho, resampling videos with replacement.

    true: (N,) scores; pred: (N,) or (S, N) predictions of S seeds for the same videos (same order).
    The statistic per draw is the mean over seeds of rho. Returns (lo, hi); (NaN, NaN) when undefined
    (fewer than 2 videos, a non-finite value in ``true`` or ``pred``, or mostly undefined draws).
    """
    t, p = _prep_item(true, pred)
    return bootstrap_ci_fisher([(t, p)], n_boot=n_boot, level=level, seed=seed, chunk=chunk)


def bootstrap_ci_fisher(items: Sequence[tuple], *, n_boot: int = 1000, level: float = 0.95,
                        seed: int = 0, chunk: int = 250) -> tuple[float, float]:
    """Bootstrap CI of a Fisher-z average of per-group rho (e.g. the six AQA-7 classes).

    items: a list of (true (N_k,), pred (N_k,) or (S_k, N_k)). Each draw resamples the videos of every
    group independently (stratified by group), takes each group's mean-over-seeds rho and combines the
    groups with the Fisher-z mean (NaN propagates, so a draw with an undefined group is left out).
    With one group this is exactly ``bootstrap_ci``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    prepped = [_prep_item(t, p) for t, p in items]
    if not prepped or any(t.size < 2 for t, _ in prepped):
        return float("nan"), float("nan")
    if not all(np.isfinite(t).all() and np.isfinite(p).all() for t, p in prepped):
        return float("nan"), float("nan")                           # the NaN policy of train_head.metrics
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        per_group = np.stack([
            _boot_rhos(t, p, rng.integers(0, t.size, size=(b, t.size))) for t, p in prepped
        ])                                                           # (K, b)
        out[start:start + b] = per_group[0] if len(prepped) == 1 else _fisher_rows(per_group)
    return _percentile_ci(out, level)


def summarize(pred, true) -> dict[str, float]:
    """{"rho", "l2", "rl2"} of one prediction set (rl2 as a fraction): ``train_head.metrics.all_metrics``."""
    return all_metrics(pred, true)


def isnan(x) -> bool:
    """True for None, NaN and anything that is not a number (a missing table cell)."""
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True
