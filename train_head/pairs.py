"""Training pairs and test voters (docs/METHOD.md §3). All indices are positions in the arrays passed in.

::

    rng = np.random.default_rng(seed)
    q, e, n_dropped = train_pairs(n_train, rng, difficulty=train_difficulty_or_None)
    idx, mask = draw_voters(train_difficulty_or_None, test_difficulty_or_None, m=10, rng=rng)

"Difficulty" arrays follow the cache's convention: ``None`` or an all-NaN array means "no difficulty";
a partly NaN array is an error. Equal difficulty means exactly equal float values (MTL-AQA degrees are
read from one source, so this is safe there).

Everything is vectorised: per-query draws are one ``rng.integers`` call with an array of upper bounds;
sampling m distinct voters loops over the m voter slots (not over queries), mapping each draw to the
r-th not-yet-chosen member by stepping over the sorted earlier picks.
"""
from __future__ import annotations

import logging

import numpy as np

__all__ = ["train_pairs", "draw_voters"]

log = logging.getLogger(__name__)


def _difficulty(x, what: str) -> np.ndarray | None:
    if x is None:
        return None
    d = np.asarray(x, dtype=np.float64).ravel()
    nan = np.isnan(d)
    if d.size and nan.all():
        return None
    if nan.any():
        raise ValueError(f"{what}: difficulty is NaN for {int(nan.sum())} of {d.size} videos; give a "
                         "difficulty for every video or none")
    return d


def _groups(d: np.ndarray):
    """Sort positions by difficulty: (values, inverse, order, starts, counts)."""
    values, inverse, counts = np.unique(d, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return values, inverse.ravel(), order, starts, counts.astype(np.int64)


def train_pairs(n: int, rng: np.random.Generator, difficulty=None):
    """One exemplar per training query, uniform over the other training videos (same difficulty if given).

    Args:
        n: number of training videos.
        rng: numpy Generator (the only source of randomness).
        difficulty: optional (n,) difficulty degrees.

    Returns:
        ``(query_idx (K,) int64, exemplar_idx (K,) int64, n_dropped)``: queries in ascending order; a query
        with no valid partner (the only video, or the only one of its difficulty) is dropped and counted
        (and logged), never silently.
    """
    n = int(n)
    d = _difficulty(difficulty, "train_pairs")
    if d is not None and d.size != n:
        raise ValueError(f"train_pairs: difficulty has {d.size} values for n={n}")
    if d is None:
        if n < 2:
            if n:
                log.warning("train_pairs: a single training video has no partner; dropped")
            return np.empty(0, np.int64), np.empty(0, np.int64), n
        q = np.arange(n, dtype=np.int64)
        e = rng.integers(0, n - 1, size=n).astype(np.int64)
        e += e >= q                                        # skip self: uniform over the other n-1
        return q, e, 0

    _, inverse, order, starts, counts = _groups(d)
    rank = np.empty(n, np.int64)                           # position of each video inside its group
    rank[order] = np.arange(n) - np.repeat(starts, counts)
    c = counts[inverse]                                    # group size per video
    q = np.flatnonzero(c >= 2).astype(np.int64)
    n_dropped = int(n - q.size)
    if n_dropped:
        log.warning("train_pairs: %d of %d queries dropped (no other training video of the same difficulty)",
                    n_dropped, n)
    r = rng.integers(0, c[q] - 1).astype(np.int64) if q.size else np.empty(0, np.int64)
    r += r >= rank[q]
    e = order[starts[inverse[q]] + r].astype(np.int64)
    return q, e, n_dropped


def _distinct_draws(c: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """For each row, min(m, c) distinct uniform picks from range(c) in slots 0..; other slots -1."""
    B = c.size
    out = np.full((B, m), -1, np.int64)
    for j in range(m):                                     # loop over voter slots, vectorised over queries
        active = np.flatnonzero(c > j)
        if active.size == 0:
            break
        r = rng.integers(0, c[active] - j).astype(np.int64)
        prev = np.sort(out[active, :j], axis=1)
        for t in range(j):                                 # step over earlier picks, smallest first
            r += r >= prev[:, t]
        out[active, j] = r
    return out


def draw_voters(pool_difficulty, query_difficulty, m: int, rng: np.random.Generator, *,
                n_pool: int | None = None, n_query: int | None = None):
    """``m`` distinct exemplars (voters) from the pool per query.

    Args:
        pool_difficulty: (P,) pool (training set) difficulties, or None / all-NaN / an int P for "no
            difficulty" (None needs ``n_pool``: with None there is nothing to read the pool size from).
        query_difficulty: (B,) query difficulties, or None / all-NaN / an int B (None needs ``n_query``).
        m: voters per query (>= 1).
        rng: numpy Generator.
        n_pool, n_query: sizes, only needed when the matching difficulty argument is None.

    Returns:
        ``(idx (B, m) int64, mask (B, m) bool)``. With difficulty, voters share the query's difficulty;
        when fewer than m exist, all of them are used and ``mask`` marks the valid slots. Masked slots repeat
        the row's first voter, so gathering with ``idx`` is always safe. When the pool has *no* video of a
        query's difficulty, that query falls back to the pool videos of the nearest difficulty value (the
        lower one on a tie); how many queries did so is logged as a warning. The pool is the training set,
        so a test query is never its own voter.
    """
    m = int(m)
    if m < 1:
        raise ValueError(f"draw_voters: m must be >= 1, got {m}")

    def size_and_diff(x, n, what):
        if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
            return int(x), None
        if x is None:
            if n is None:
                raise ValueError(f"draw_voters: {what}_difficulty is None; pass n_{what}= (or an int size)")
            return int(n), None
        arr = np.asarray(x, dtype=np.float64).ravel()
        return arr.size, _difficulty(arr, f"draw_voters ({what})")

    P, dp = size_and_diff(pool_difficulty, n_pool, "pool")
    B, dq = size_and_diff(query_difficulty, n_query, "query")
    if P == 0:
        raise ValueError("draw_voters: the exemplar pool is empty")
    if (dp is None) != (dq is None):
        raise ValueError("draw_voters: give difficulty for both the pool and the queries, or for neither")

    if dp is None:
        local = _distinct_draws(np.full(B, P, np.int64), m, rng)
        idx = local
    else:
        values, inverse, order, starts, counts = _groups(dp)
        g = np.searchsorted(values, dq)                    # exact match when present
        gc = np.clip(g, 0, values.size - 1)
        found = values[gc] == dq
        if not found.all():
            # nearest difficulty value; ties go to the lower value
            lo = np.clip(g - 1, 0, values.size - 1)
            hi = np.clip(g, 0, values.size - 1)
            pick_hi = np.abs(values[hi] - dq) < np.abs(values[lo] - dq)
            near = np.where(pick_hi, hi, lo)
            gc = np.where(found, gc, near)
            log.warning("draw_voters: %d of %d queries have no pool video of their difficulty; they use the "
                        "nearest difficulty value instead", int((~found).sum()), B)
        local = _distinct_draws(counts[gc], m, rng)
        idx = np.where(local >= 0, order[starts[gc][:, None] + np.maximum(local, 0)], -1)

    mask = local >= 0
    idx = np.where(mask, idx, idx[:, :1]).astype(np.int64)
    return idx, mask
