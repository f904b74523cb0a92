"""Leaf intervals ("groups") of the regression tree and the leaf labels of relative scores (docs/METHOD.md §4).

A tree with depth ``D`` has ``L = 2**(D-1)`` leaves. Half of them cover negative relative scores, half
positive ones; the positive edges are quantiles of the pairwise absolute score differences of the training
set, the negative leaves are their mirror image::

    groups = build_groups(train_scores, depth=5, theta=100.0)   # (16, 2) float64, rows [a, b]
    leaf, pos, n_clamped = leaf_labels(deltas, groups)          # deltas (B,), numpy or torch

Layout of ``groups`` (``H = L // 2``): rows ``0..H-1`` are the negative leaves from most negative to
most positive, rows ``H..L-1`` the positive ones; ``groups[H + k] = [e_k, e_{k+1}]`` and
``groups[H - 1 - k] = [-e_{k+1}, -e_k]`` where ``e_0 = 0``, ``e_H = theta`` and
``e_k = sorted_diffs[int(k / H * (n - 1))]`` for ``0 < k < H``.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

__all__ = ["build_groups", "leaf_labels"]

log = logging.getLogger(__name__)


def _pairwise_abs_diffs(scores: np.ndarray, difficulty: np.ndarray | None) -> np.ndarray:
    """|s_i - s_j| over unordered pairs i < j (only pairs with equal difficulty when given)."""
    if difficulty is None:
        i, j = np.triu_indices(scores.size, k=1)
        return np.abs(scores[i] - scores[j])
    # One vectorised block per difficulty value: a handful of groups, not a loop per sample.
    _, inverse = np.unique(difficulty, return_inverse=True)
    parts = []
    for g in range(int(inverse.max()) + 1 if inverse.size else 0):
        s = scores[inverse == g]
        i, j = np.triu_indices(s.size, k=1)
        parts.append(np.abs(s[i] - s[j]))
    return np.concatenate(parts) if parts else np.empty(0)


def build_groups(scores, depth: int = 5, theta: float = 100.0, difficulty=None) -> np.ndarray:
    """Leaf intervals from training scores.

    Args:
        scores: (N,) training targets (completeness scores with DD).
        depth: tree depth D >= 2; the tree has ``L = 2**(D-1)`` leaves (a single leaf could not mirror
            positive and negative relative scores, so D = 1 is rejected).
        theta: score range; the outermost edges are ``-theta`` and ``theta``.
        difficulty: optional (N,) difficulty degrees; only pairs with exactly equal difficulty count.
            An all-NaN array (the cache's "no difficulty") is treated as None.

    Returns:
        (L, 2) float64 array of ``[a, b]`` rows, see the module docstring.

    Raises:
        ValueError: bad depth/theta, NaN scores, no pairs at all, or an inner edge above theta (the scores
            are not on a scale whose range is theta; raise theta).
    """
    depth = int(depth)
    if depth < 2:
        raise ValueError(f"build_groups: depth must be >= 2 (got {depth}); a tree with one leaf has no "
                         "negative/positive mirror")
    theta = float(theta)
    if not np.isfinite(theta) or theta <= 0:
        raise ValueError(f"build_groups: theta must be a positive number (got {theta})")
    s = np.asarray(scores, dtype=np.float64).ravel()
    if np.isnan(s).any():
        raise ValueError("build_groups: scores contain NaN")
    d = None
    if difficulty is not None:
        d = np.asarray(difficulty, dtype=np.float64).ravel()
        if d.shape != s.shape:
            raise ValueError(f"build_groups: difficulty has {d.size} values for {s.size} scores")
        nan = np.isnan(d)
        if nan.all():
            d = None
        elif nan.any():
            raise ValueError(f"build_groups: difficulty is NaN for {int(nan.sum())} of {d.size} videos; "
                             "give a difficulty for every video or none")

    diffs = np.sort(_pairwise_abs_diffs(s, d))
    n = diffs.size
    if n == 0:
        what = "two training videos with the same difficulty" if d is not None else "two training videos"
        raise ValueError(f"build_groups: no score pairs ({s.size} scores); need at least {what}")

    half = 2 ** (depth - 1) // 2
    edges = np.array([diffs[int(k / half * (n - 1))] for k in range(half + 1)], dtype=np.float64)
    edges[0] = 0.0
    edges[half] = theta
    if (edges[1:half] > theta).any():
        raise ValueError(f"build_groups: pairwise score differences reach {diffs[-1]:g} > theta={theta:g}; "
                         "theta must be the score range (set theta to at least the largest difference)")
    pos = np.stack([edges[:-1], edges[1:]], axis=1)          # (H, 2)
    neg = -pos[::-1, ::-1] + 0.0                             # (H, 2): [-b, -a], most negative first (+0.0: no -0.0)
    return np.ascontiguousarray(np.concatenate([neg, pos], axis=0))


def leaf_labels(deltas, groups):
    """Leaf index and in-leaf position for each relative score ``d``.

    Rules (deterministic, vectorised with searchsorted):

    * ``d >= 0``: the positive leaf ``[a, b)`` holding d, i.e. the *last* positive leaf with ``a <= d``.
      Zero-width leaves ``[x, x]`` (repeated edges) are therefore skipped in favour of the next leaf
      starting at ``x``; ``d == 0`` goes to the last positive leaf starting at 0.
    * ``d < 0``: the negative leaf ``(a, b]`` holding d, i.e. the *first* negative leaf with ``b >= d``
      (the exact mirror of the positive rule).
    * The outer edges are closed: ``d == theta`` is in the last positive leaf (pos 1), ``d == -theta`` in
      the first negative leaf (pos 0); neither is counted as clamped.
    * ``|d| > theta``: clamped to ``+-theta`` before labelling, so it lands in the outer leaf with pos 1
      (positive) or 0 (negative), and is counted in ``n_clamped``.
    * ``pos = (d - a) / (b - a)``, or ``d - a`` for a zero-width leaf (only reachable when the outer
      leaf is ``[theta, theta]``, giving 0).

    Args:
        deltas: (B,) relative scores, numpy array or torch tensor.
        groups: (L, 2) intervals from ``build_groups`` (numpy or torch).

    Returns:
        ``(leaf, pos, n_clamped)``: leaf int64 (B,), pos float (B,) and the number of clamped deltas (an
        int for numpy input; a 0-dim int64 tensor for torch input, so a training step needs no host sync).
        Torch input gives tensors on the input's device (pos in the input's float dtype, float32 for
        integer input); numpy input gives numpy arrays (pos float64).
    """
    is_torch = isinstance(deltas, torch.Tensor)
    if is_torch:
        device = deltas.device
        out_dtype = deltas.dtype if deltas.is_floating_point() else torch.float32
        d = deltas.detach().reshape(-1).to(torch.float64)
    else:
        d = torch.from_numpy(np.asarray(deltas, dtype=np.float64).reshape(-1).copy())
        device = d.device
    g = torch.as_tensor(groups, dtype=torch.float64, device=d.device)
    if g.ndim != 2 or g.shape[1] != 2 or g.shape[0] < 2 or g.shape[0] % 2:
        raise ValueError(f"leaf_labels: groups must have shape (L, 2) with L even, got {tuple(g.shape)}")
    if not is_torch and torch.isnan(d).any():      # (torch input: no host synchronisation per step;
        raise ValueError("leaf_labels: deltas contain NaN")   # a NaN target stops the run at its loss)
    half = g.shape[0] // 2
    lo, hi = g[0, 0], g[-1, 1]
    clamped = (d < lo) | (d > hi)
    n_clamped = clamped.sum() if is_torch else int(clamped.sum().item())
    d = torch.clamp(d, min=lo, max=hi)

    # positive: last leaf with a <= d  ->  searchsorted(right) on the left edges, minus one
    k_pos = half + torch.searchsorted(g[half:, 0].contiguous(), d, right=True) - 1
    k_pos = k_pos.clamp(min=half, max=2 * half - 1)
    # negative: first leaf with b >= d  ->  searchsorted(left) on the right edges
    k_neg = torch.searchsorted(g[:half, 1].contiguous(), d, right=False).clamp(max=half - 1)
    leaf = torch.where(d >= 0, k_pos, k_neg)

    a, b = g[leaf, 0], g[leaf, 1]
    width = b - a
    pos = torch.where(width > 0, (d - a) / torch.where(width > 0, width, torch.ones_like(width)), d - a)
    if n_clamped:
        log.debug("leaf_labels: clamped %d of %d relative scores into the outer leaves", n_clamped, d.numel())

    if is_torch:
        return leaf.to(device), pos.to(device=device, dtype=out_dtype), n_clamped
    return leaf.numpy().astype(np.int64), pos.numpy(), n_clamped
