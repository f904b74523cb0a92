"""Metrics against hand-computed values.  Run: .venv/bin/python -m pytest tests/test_evaluate_metrics.py -q"""
import logging
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from evaluate.metrics import (bootstrap_ci, bootstrap_ci_fisher, fisher_z_mean, isnan, l2, rl2, spearman,
                              summarize)


def test_rho_l2_rl2_are_train_heads():
    """One implementation: the values and the NaN policy are tested in tests/test_train_head_metrics.py."""
    import train_head.metrics as tm
    assert (spearman, l2, rl2) == (tm.spearman, tm.l2, tm.rl2)
    s = summarize([1, 2], [0, 4])
    assert s == tm.all_metrics([1, 2], [0, 4]) and set(s) == {"rho", "l2", "rl2"}
    assert isnan(None) and isnan(float("nan")) and isnan("x") and not isnan(0.0)


def test_fisher_z_mean_hand_computed():
    assert fisher_z_mean([0.5, -0.5]) == pytest.approx(0.0)
    assert fisher_z_mean([0.5]) == pytest.approx(0.5)              # a single class is itself
    # mean(arctanh) = (ln 9 + ln 4) / 4 = ln(6) / 2, tanh(ln(6)/2) = 5/7
    assert fisher_z_mean([0.8, 0.6]) == pytest.approx(5 / 7)


def test_fisher_z_mean_reproduces_spec_per_class_averages():
    # docs/METHOD.md §5: USDL's six classes give 0.8102, CoRe's six give 0.8433; TPT publishes 0.8715 and its
    # six rounded per-class values give 0.87136 (the paper averaged unrounded values), hence the looser bound
    assert fisher_z_mean([0.8099, 0.7570, 0.6538, 0.7109, 0.9166, 0.8878]) == pytest.approx(0.8102, abs=6e-5)
    assert fisher_z_mean([0.8969, 0.8043, 0.7336, 0.6965, 0.9456, 0.9545]) == pytest.approx(0.8715, abs=2e-4)
    assert fisher_z_mean([0.8824, 0.7746, 0.7115, 0.6624, 0.9442, 0.9078]) == pytest.approx(0.8433, abs=6e-5)


def test_fisher_z_mean_clips_perfect_rho_and_handles_nan(caplog):
    v = fisher_z_mean([1.0, 1.0])
    assert math.isfinite(v) and v == pytest.approx(1.0, abs=1e-6)
    assert math.isfinite(fisher_z_mean([1.0, 0.0]))
    assert math.isnan(fisher_z_mean([0.5, float("nan")]))                        # default: propagate
    with caplog.at_level(logging.WARNING, logger="evaluate.metrics"):
        assert fisher_z_mean([0.5, float("nan")], nan_policy="omit") == pytest.approx(0.5)
    assert "ignoring 1 undefined" in caplog.text
    assert math.isnan(fisher_z_mean([]))
    with pytest.raises(ValueError):
        fisher_z_mean([0.1], nan_policy="zero")


def _data(n=40, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=n)
    return t, t + noise * rng.normal(size=n)


def test_bootstrap_matches_a_naive_loop():
    t, p = _data()
    lo, hi = bootstrap_ci(t, p, n_boot=200, seed=3)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, t.size, size=(200, t.size))
    stats = [spearmanr(p[i], t[i]).statistic for i in idx]
    elo, ehi = np.percentile(stats, [2.5, 97.5])
    assert (lo, hi) == pytest.approx((elo, ehi))
    assert lo < spearman(p, t) < hi


def test_bootstrap_seeded_and_options():
    t, p = _data()
    a = bootstrap_ci(t, p, n_boot=300, seed=1)
    assert a == bootstrap_ci(t, p, n_boot=300, seed=1, chunk=70)   # chunking does not change the draws
    assert a != bootstrap_ci(t, p, n_boot=300, seed=2)
    narrow = bootstrap_ci(t, p, n_boot=300, seed=1, level=0.5)
    assert a[0] < narrow[0] < narrow[1] < a[1]


def test_bootstrap_several_seeds_and_groups():
    t, p = _data()
    one = bootstrap_ci(t, p, n_boot=200, seed=0)
    assert bootstrap_ci(t, np.stack([p, p]), n_boot=200, seed=0) == pytest.approx(one)
    assert bootstrap_ci_fisher([(t, p)], n_boot=200, seed=0) == pytest.approx(one)   # a single class
    t2, p2 = _data(seed=5, noise=0.3)
    lo, hi = bootstrap_ci_fisher([(t, p), (t2, p2)], n_boot=200, seed=0)
    point = fisher_z_mean([spearman(p, t), spearman(p2, t2)])
    assert lo < point < hi


def test_bootstrap_undefined_cases():
    t, _ = _data(n=10)
    assert bootstrap_ci(t, np.full(10, 3.0), n_boot=50) == pytest.approx((np.nan, np.nan), nan_ok=True)
    assert all(math.isnan(v) for v in bootstrap_ci([1.0], [1.0], n_boot=10))
    assert bootstrap_ci(t, 2 * t + 1, n_boot=50) == pytest.approx((1.0, 1.0))
    # the NaN policy of train_head.metrics: a non-finite value anywhere -> undefined, not an exception
    p = t.copy()
    p[3] = np.nan
    assert all(math.isnan(v) for v in bootstrap_ci(t, p, n_boot=50))
    assert all(math.isnan(v) for v in bootstrap_ci(np.where(np.arange(10) == 0, np.inf, t), t, n_boot=50))
    assert all(math.isnan(v) for v in bootstrap_ci_fisher([(t, t), (t, p)], n_boot=50))
    with pytest.raises(ValueError):
        bootstrap_ci(t, t[:5])
