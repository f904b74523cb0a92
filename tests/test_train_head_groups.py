"""Leaf intervals and leaf labels (docs/METHOD.md §4). Expected values are computed by hand in the comments."""
import numpy as np
import pytest
import torch

from train_head.groups import build_groups, leaf_labels

# scores 0, 1, 3, 6 -> |differences| of the 6 unordered pairs: 1, 3, 6, 2, 5, 3 -> sorted 1, 2, 3, 3, 5, 6 (n = 6)
SCORES = [0.0, 1.0, 3.0, 6.0]


def test_groups_depth3_by_hand():
    # L = 4, H = 2: q(1) = sorted[int(1/2 * 5)] = sorted[2] = 3; edges 0 (forced), 3, 100 (forced)
    g = build_groups(SCORES, depth=3, theta=100.0)
    assert g.dtype == np.float64 and g.shape == (4, 2)
    np.testing.assert_array_equal(g, [[-100, -3], [-3, 0], [0, 3], [3, 100]])
    assert not np.signbit(g[g == 0]).any()             # no -0.0 edges (groups.json readability)


def test_groups_depth4_repeated_edges_by_hand():
    # L = 8, H = 4: q(1) = sorted[int(1.25)] = 2, q(2) = sorted[int(2.5)] = 3, q(3) = sorted[int(3.75)] = 3
    g = build_groups(SCORES, depth=4, theta=100.0)
    np.testing.assert_array_equal(g, [[-100, -3], [-3, -3], [-3, -2], [-2, 0],
                                      [0, 2], [2, 3], [3, 3], [3, 100]])


def test_groups_depth2_and_theta():
    np.testing.assert_array_equal(build_groups(SCORES, depth=2, theta=30.0), [[-30, 0], [0, 30]])


def test_groups_dd_uses_same_difficulty_pairs_only():
    # difficulty 1: (10, 12) -> 2; difficulty 2: (20, 21) -> 1; difficulty 3 alone: no pair.
    # sorted 1, 2 (n = 2); q(1) = sorted[int(0.5 * 1)] = 1 -> edges 0, 1, 30
    g = build_groups([10, 12, 20, 21, 50], depth=3, theta=30.0, difficulty=[1, 1, 2, 2, 3])
    np.testing.assert_array_equal(g, [[-30, -1], [-1, 0], [0, 1], [1, 30]])
    # all-NaN difficulty is the cache's "no difficulty": all 10 pairs count
    g2 = build_groups([10, 12, 20, 21, 50], depth=3, theta=100.0, difficulty=[np.nan] * 5)
    np.testing.assert_array_equal(g2, build_groups([10, 12, 20, 21, 50], depth=3, theta=100.0))


def test_groups_errors():
    with pytest.raises(ValueError, match="no score pairs"):
        build_groups([5.0])
    with pytest.raises(ValueError, match="same difficulty"):
        build_groups([1.0, 2.0], difficulty=[1.0, 2.0])
    with pytest.raises(ValueError, match="depth"):
        build_groups(SCORES, depth=1)
    with pytest.raises(ValueError, match="theta"):
        build_groups([0.0, 150.0, 151.0], depth=3, theta=100.0)
    with pytest.raises(ValueError, match="NaN"):
        build_groups(SCORES, difficulty=[1.0, np.nan, 1.0, 1.0])


def test_groups_are_quantiles_of_realistic_scores():
    rng = np.random.default_rng(0)
    s = rng.uniform(20, 100, size=300)
    g = build_groups(s, depth=5)
    assert g.shape == (16, 2)
    np.testing.assert_array_equal(g[:8], -g[8:][::-1, ::-1])          # mirror
    assert (np.diff(g[:, 0]) >= 0).all() and (g[1:, 0] == g[:-1, 1]).all()
    i, j = np.triu_indices(300, 1)
    d = np.abs(s[i] - s[j])
    frac = np.histogram(d, bins=np.r_[g[8:, 0], 100.0])[0] / d.size  # each positive leaf ~1/8 of the pairs
    np.testing.assert_allclose(frac, 1 / 8, atol=1e-3)


def test_labels_boundaries_by_hand():
    g = build_groups(SCORES, depth=3)      # [-100,-3] [-3,0] [0,3] [3,100]
    d = np.array([0.0, 1.0, 3.0, 5.0, 100.0, -0.5, -3.0, -100.0])
    leaf, pos, n = leaf_labels(d, g)
    assert leaf.dtype == np.int64 and n == 0
    np.testing.assert_array_equal(leaf, [2, 2, 3, 3, 3, 1, 0, 0])
    #  0 in [0,3): 0;  1: 1/3;  3 in [3,100): 0;  5: 2/97;  theta itself: last leaf, pos 1 (closed outer edge)
    #  -0.5 in (-3,0]: 2.5/3;  -3 in (-100,-3]: 1;  -100: first leaf, pos 0
    np.testing.assert_allclose(pos, [0, 1 / 3, 0, 2 / 97, 1, 2.5 / 3, 1, 0])


def test_labels_clamp_and_count():
    g = build_groups(SCORES, depth=3)
    leaf, pos, n = leaf_labels([150.0, -150.0, 100.0, -100.0, 2.0], g)
    assert n == 2                                         # only beyond +-theta counts
    np.testing.assert_array_equal(leaf, [3, 0, 3, 0, 2])
    np.testing.assert_allclose(pos, [1, 0, 1, 0, 2 / 3])  # clamped to +-theta


def test_labels_repeated_edges_skip_zero_width_leaf():
    g = build_groups(SCORES, depth=4)      # [-100,-3] [-3,-3] [-3,-2] [-2,0] | [0,2] [2,3] [3,3] [3,100]
    leaf, pos, n = leaf_labels([3.0, -3.0, 2.0, -2.0, 2.5, -1.0, 0.0], g)
    # 3 -> [3,100) not the empty [3,3); -3 -> (-100,-3]; 2 -> [2,3); -2 -> (-3,-2]
    np.testing.assert_array_equal(leaf, [7, 0, 5, 2, 5, 3, 4])
    np.testing.assert_allclose(pos, [0, 1, 0, 1, 0.5, 0.5, 0])
    assert n == 0


def test_labels_zero_width_outer_leaf():
    # scores 0 and 100: one pair, difference 100 = theta -> edges 0, 100, 100: leaves [0,100] [100,100]
    g = build_groups([0.0, 100.0], depth=3)
    np.testing.assert_array_equal(g, [[-100, -100], [-100, 0], [0, 100], [100, 100]])
    leaf, pos, n = leaf_labels([100.0, -100.0, 120.0, 50.0], g)
    np.testing.assert_array_equal(leaf, [3, 0, 3, 2])
    np.testing.assert_allclose(pos, [0, 0, 0, 0.5])       # zero width: d - a
    assert n == 1


def test_labels_torch_in_torch_out_and_random_property():
    g = build_groups(SCORES, depth=4)
    d = torch.linspace(-120, 120, 2001, dtype=torch.float32)
    leaf, pos, n = leaf_labels(d, torch.as_tensor(g))
    assert isinstance(leaf, torch.Tensor) and leaf.dtype == torch.int64 and pos.dtype == torch.float32
    leaf_np, pos_np, n_np = leaf_labels(d.numpy(), g)
    np.testing.assert_array_equal(leaf.numpy(), leaf_np)
    np.testing.assert_allclose(pos.numpy(), pos_np, atol=1e-6)
    assert int(n) == n_np == int((d.abs() > 100).sum()) and isinstance(n, torch.Tensor)
    dc = d.double().clamp(-100, 100).numpy()
    a, b = g[leaf_np, 0], g[leaf_np, 1]
    assert ((a <= dc) & (dc <= b)).all()
    assert ((pos_np >= 0) & (pos_np <= 1)).all()
    np.testing.assert_allclose(a + (b - a) * pos_np, dc, atol=1e-9)   # the inference formula inverts the label
    with pytest.raises(ValueError, match="NaN"):
        leaf_labels([np.nan], g)
