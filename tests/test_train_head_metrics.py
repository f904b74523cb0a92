"""The one implementation of rho / L2 / RL2 and its NaN policy (train_head/metrics.py docstring).

evaluate.metrics re-exports these functions; the policy is tested here, at the lowest layer, once.
"""
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from train_head.metrics import all_metrics, l2, rl2, spearman

NAN, INF = float("nan"), float("inf")


def test_spearman_perfect_and_reversed():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([4, 3, 2, 1], [10, 20, 30, 40]) == pytest.approx(-1.0)


def test_spearman_no_ties_hand_computed():
    # ranks (3,1,2) vs (1,2,3): sum d^2 = 4+1+1 = 6, rho = 1 - 6*6/(3*(9-1)) = -0.5
    assert spearman([3.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(-0.5)


def test_spearman_ties_use_average_ranks():
    # pred ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): Pearson of ranks = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))


def test_spearman_is_scipys_value_exactly():
    """The trainer's metrics.csv depends on it: bit-identical to scipy for finite input."""
    rng = np.random.default_rng(0)
    for n in (2, 3, 17, 200):
        t = rng.normal(size=n)
        p = np.round(t + rng.normal(size=n), 1)              # ties included
        assert spearman(p, t) == float(spearmanr(p, t).statistic)
    # any array-like, any shape with the same number of items
    assert spearman(np.arange(6.0).reshape(2, 3), [1, 2, 3, 4, 6, 5]) == float(
        spearmanr(np.arange(6.0), [1, 2, 3, 4, 6, 5]).statistic)


def test_l2_and_rl2_hand_computed():
    assert l2([1, 2], [0, 4]) == pytest.approx(2.5)                     # (1 + 4) / 2
    assert rl2([1, 2], [0, 4]) == pytest.approx((1 / 16 + 4 / 16) / 2)  # span 4 -> 0.15625, a fraction
    assert l2([3.0], [1.0]) == 4.0 and math.isnan(rl2([3.0], [1.0]))   # one video: no range
    s = all_metrics([1, 2], [0, 4])
    assert set(s) == {"rho", "l2", "rl2"} and s["rho"] == pytest.approx(1.0)
    assert s["l2"] == l2([1, 2], [0, 4]) and s["rl2"] == rl2([1, 2], [0, 4])


# --------------------------------------------------------------------------------------- NaN policy

@pytest.mark.parametrize("pred,true,why", [
    ([5, 5, 5, 5], [1, 2, 3, 4], "constant predictions"),
    ([1, 2, 3, 4], [7, 7, 7, 7], "constant truth (a single-score set)"),
    ([1.0], [2.0], "one video"),
    ([], [], "empty"),
    ([1, NAN, 3], [1, 2, 3], "NaN prediction"),
    ([1, 2, 3], [1, NAN, 3], "NaN true score"),
    ([1, INF, 3], [1, 2, 3], "inf prediction"),
    ([1, 2, 3], [-INF, 2, 3], "-inf true score"),
])
def test_spearman_undefined_is_nan(pred, true, why):
    assert math.isnan(spearman(pred, true)), why


@pytest.mark.parametrize("pred,true", [
    ([], []),
    ([1, NAN], [1, 2]),
    ([1, 2], [NAN, 2]),
    ([1, INF], [1, 2]),
    ([1, 2], [1, -INF]),
])
def test_l2_and_rl2_nan_on_empty_or_non_finite(pred, true):
    assert math.isnan(l2(pred, true)) and math.isnan(rl2(pred, true))
    assert all(math.isnan(v) for v in all_metrics(pred, true).values())


def test_rl2_nan_on_zero_range_only():
    assert math.isnan(rl2([1, 2], [3, 3]))
    assert l2([1, 2], [3, 3]) == pytest.approx(2.5)                     # L2 is still defined
    assert rl2([3, 3], [1, 2]) == pytest.approx((4 + 1) / 2)             # constant *predictions* are fine


def test_length_mismatch_raises():
    for f in (spearman, l2, rl2, all_metrics):
        with pytest.raises(ValueError, match="length"):
            f([1, 2, 3], [1, 2])


def test_evaluate_reexports_the_same_functions():
    import evaluate.metrics as em
    import train_head.metrics as tm
    assert em.spearman is tm.spearman and em.l2 is tm.l2 and em.rl2 is tm.rl2
    assert em.all_metrics is tm.all_metrics and em.summarize([1, 2], [0, 4]) == tm.all_metrics([1, 2], [0, 4])
