"""Training pairs and test voters (docs/METHOD.md §3)."""
import logging

import numpy as np
import pytest

from train_head import pairs


def rng(seed=0):
    return np.random.default_rng(seed)


def test_train_pairs_never_self_and_uniform():
    q, e, dropped = pairs.train_pairs(4, rng())
    assert dropped == 0 and q.dtype == np.int64 and e.dtype == np.int64
    np.testing.assert_array_equal(q, np.arange(4))
    r = rng(1)
    counts = np.zeros((4, 4), int)
    for _ in range(3000):
        q, e, _ = pairs.train_pairs(4, r)
        np.add.at(counts, (q, e), 1)
    assert (np.diag(counts) == 0).all()
    off = counts[~np.eye(4, dtype=bool)]
    assert (np.abs(off - 1000) < 120).all()          # each of the 3 partners ~1/3 (sd ~26)


def test_train_pairs_deterministic():
    a = pairs.train_pairs(50, rng(7), difficulty=np.repeat([1.0, 2.0, 3.5], [20, 20, 10]))
    b = pairs.train_pairs(50, rng(7), difficulty=np.repeat([1.0, 2.0, 3.5], [20, 20, 10]))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_train_pairs_same_difficulty_and_dropped(caplog):
    d = np.array([3.0, 2.0, 3.0, 9.0, 2.0, 3.0, 2.0])      # 9.0 is alone
    with caplog.at_level(logging.WARNING):
        q, e, dropped = pairs.train_pairs(7, rng(), difficulty=d)
    assert dropped == 1 and "dropped" in caplog.text
    np.testing.assert_array_equal(q, [0, 1, 2, 4, 5, 6])
    assert (q != e).all() and (d[q] == d[e]).all()
    r = rng(3)
    seen = set()
    for _ in range(200):
        q, e, _ = pairs.train_pairs(7, r, difficulty=d)
        assert (q != e).all() and (d[q] == d[e]).all()
        seen.update(zip(q.tolist(), e.tolist()))
    # every same-difficulty ordered pair appears
    want = {(i, j) for i in range(7) for j in range(7) if i != j and d[i] == d[j]}
    assert seen == want


def test_train_pairs_small_and_nan():
    q, e, dropped = pairs.train_pairs(1, rng())
    assert q.size == e.size == 0 and dropped == 1
    q, e, dropped = pairs.train_pairs(3, rng(), difficulty=[np.nan] * 3)   # all NaN = no difficulty
    assert dropped == 0 and (q != e).all()
    with pytest.raises(ValueError, match="NaN"):
        pairs.train_pairs(3, rng(), difficulty=[1.0, np.nan, 1.0])


def test_draw_voters_no_difficulty_distinct_and_uniform():
    idx, mask = pairs.draw_voters(8, 5, 3, rng())
    assert idx.shape == mask.shape == (5, 3) and idx.dtype == np.int64 and mask.all()
    assert all(len(set(row)) == 3 for row in idx.tolist()) and ((0 <= idx) & (idx < 8)).all()
    # None + n_pool / n_query and all-NaN arrays mean the same thing as ints
    idx2, _ = pairs.draw_voters(None, None, 3, rng(), n_pool=8, n_query=5)
    idx3, _ = pairs.draw_voters(np.full(8, np.nan), np.full(5, np.nan), 3, rng())
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_array_equal(idx, idx3)
    idx, _ = pairs.draw_voters(5, 5000, 2, rng(2))
    freq = np.bincount(idx.ravel(), minlength=5) / 5000
    np.testing.assert_allclose(freq, 2 / 5, atol=0.03)   # each pool member in a row with prob m/P
    assert (idx[:, 0] != idx[:, 1]).all()


def test_draw_voters_fewer_than_m_uses_all_and_masks():
    idx, mask = pairs.draw_voters(3, 4, 5, rng())
    np.testing.assert_array_equal(mask, np.tile([True, True, True, False, False], (4, 1)))
    for row in idx:
        assert sorted(row[:3].tolist()) == [0, 1, 2]
        assert (row[3:] == row[0]).all()                 # masked slots repeat the first voter


def test_draw_voters_same_difficulty_fallback_and_tie(caplog):
    pool = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 1.0])
    query = np.array([2.0, 1.0, 3.0, 4.0, 1.5])          # 4.0 -> nearest 3.0; 1.5 -> tie 1.0 / 2.0 -> 1.0
    with caplog.at_level(logging.WARNING):
        idx, mask = pairs.draw_voters(pool, query, 2, rng())
    assert "2 of 5 queries" in caplog.text
    np.testing.assert_array_equal(mask, [[1, 1], [1, 1], [1, 0], [1, 0], [1, 1]])
    want = np.array([2.0, 1.0, 3.0, 3.0, 1.0])
    assert (pool[idx] == want[:, None]).all()
    assert all(len(set(r[m].tolist())) == m.sum() for r, m in zip(idx, mask))
    a = pairs.draw_voters(pool, query, 2, rng(5))
    b = pairs.draw_voters(pool, query, 2, rng(5))
    np.testing.assert_array_equal(a[0], b[0])


def test_draw_voters_errors():
    with pytest.raises(ValueError, match="both"):
        pairs.draw_voters([1.0, 2.0], None, 2, rng(), n_query=3)
    with pytest.raises(ValueError, match="n_pool"):
        pairs.draw_voters(None, 3, 2, rng())
    with pytest.raises(ValueError, match="m must"):
        pairs.draw_voters(3, 3, 0, rng())
    with pytest.raises(ValueError, match="empty"):
        pairs.draw_voters(0, 3, 2, rng())
    with pytest.raises(ValueError, match="NaN"):
        pairs.draw_voters([1.0, np.nan], [1.0], 2, rng())
