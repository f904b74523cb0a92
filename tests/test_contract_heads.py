"""Contract of every registered head (train_head/heads.py), parametrised over ``HEADS``: a new head is
covered as soon as it is registered.

For each head: ``loss`` is a finite scalar with a matching ``stats["loss"]``; after ``backward`` every
parameter that requires grad has a finite gradient (the batch covers every leaf of a tree head, because
the tree's loss only runs the true leaf's regressor); a state dict round trip into a fresh head gives the
same predictions; batched prediction equals per-query and per-voter prediction, and ``predict_indexed``
equals ``predict`` on the gathered exemplars. Heads that learn the judges (``judges``) get judge-shaped
targets (B, n_judges) of half points in [0, 10] and must refuse score-shaped ones.
"""
import numpy as np
import pytest
import torch

from train_head.groups import build_groups, leaf_labels
from train_head.heads import HEADS, Head, Prediction, build_head

D, THETA, DEPTH, HIDDEN = 6, 100.0, 3, 8
B, M, P = 5, 4, 9                      # queries, voters per query, pool size
TOL = dict(rtol=1e-10, atol=1e-10)     # float64 heads: only rounding differs between the paths


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def _train_targets() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, THETA, size=40)


def _build(name: str, seed: int = 0, with_groups: bool = True) -> Head:
    torch.manual_seed(seed)
    cls = HEADS[name]
    groups = build_groups(_train_targets(), depth=DEPTH, theta=THETA) if cls.tree and with_groups else None
    head = build_head(name, feat_dim=D, theta=THETA, depth=DEPTH, hidden=HIDDEN, groups=groups)
    assert isinstance(head, Head) and head.name == name
    return head.double()


def _loss_batch(head: Head):
    """(f_q, t_q, f_e, t_e); for tree heads the pairs' relative scores hit every leaf (both directions)."""
    g = torch.Generator().manual_seed(1)
    if head.tree:
        groups = head.groups.numpy()
        half = len(groups) // 2
        deltas = groups[half:].mean(axis=1)                    # the middle of every positive leaf
        t_e = torch.full((half,), 0.0, dtype=torch.float64)
        t_q = t_e + torch.from_numpy(deltas)                   # e vs q gives the mirrored negative leaves
        leaf, _, _ = leaf_labels(torch.cat([t_q - t_e, t_e - t_q]), groups)
        assert set(leaf.tolist()) == set(range(len(groups))), "the batch must cover every leaf"
    elif head.judges:
        t_q = torch.randint(0, 21, (B, head.n_judges), generator=g).double() / 2      # half points 0..10
        t_e = None
    else:
        t_q = torch.rand(B, generator=g, dtype=torch.float64) * THETA
        t_e = torch.rand(B, generator=g, dtype=torch.float64) * THETA
    n = len(t_q)
    f_q = torch.randn(n, D, generator=g, dtype=torch.float64)
    f_e = torch.randn(n, D, generator=g, dtype=torch.float64)
    return f_q, t_q, f_e, t_e


def _voters():
    """Queries, a pool and a voter draw with some masked slots (every row keeps voter 0)."""
    g = torch.Generator().manual_seed(2)
    f_q = torch.randn(B, D, generator=g, dtype=torch.float64)
    pool_f = torch.randn(P, D, generator=g, dtype=torch.float64)
    pool_t = torch.rand(P, generator=g, dtype=torch.float64) * THETA
    idx = torch.stack([torch.randperm(P, generator=g)[:M] for _ in range(B)])        # (B, M) distinct
    mask = torch.rand(B, M, generator=g) > 0.3
    mask[:, 0] = True
    mask[1] = True                                                                   # one full row
    return f_q, pool_f, pool_t, idx, mask


def _predict(head: Head, f_q, pool_f, pool_t, idx, mask) -> Prediction:
    with torch.no_grad():
        if head.pairwise:
            return head.predict(f_q, pool_f[idx], pool_t[idx], mask)
        return head.predict(f_q)


NAMES = sorted(HEADS)


def test_registry_is_not_empty():
    assert NAMES, "no head registered"


@pytest.mark.parametrize("name", NAMES)
def test_loss_is_a_finite_scalar(name):
    head = _build(name)
    f_q, t_q, f_e, t_e = _loss_batch(head)
    loss, stats = head.loss(f_q, t_q, f_e, t_e) if head.pairwise else head.loss(f_q, t_q)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and loss.requires_grad
    assert torch.isfinite(loss), loss
    assert isinstance(stats, dict) and stats["loss"] == pytest.approx(loss.item())
    assert all(np.isfinite(float(v)) for v in stats.values()), stats


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_finite_gradient(name):
    head = _build(name)
    f_q, t_q, f_e, t_e = _loss_batch(head)
    loss, _ = head.loss(f_q, t_q, f_e, t_e) if head.pairwise else head.loss(f_q, t_q)
    loss.backward()
    params = [(n, p) for n, p in head.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradient in {bad}"


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_identical_predictions(name):
    head = _build(name, seed=0).eval()
    fresh = _build(name, seed=123, with_groups=False).eval()     # other init; a tree head's groups unset
    data = _voters()
    before = _predict(fresh, *data) if not fresh.tree else None
    fresh.load_state_dict(head.state_dict())
    a, b = _predict(head, *data), _predict(fresh, *data)
    assert torch.equal(a.target, b.target)
    if before is not None:
        assert not torch.equal(before.target, a.target)          # the load changed something
    for x, y in ((a.per_voter, b.per_voter), (a.leaf, b.leaf)):
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(torch.nan_to_num(x, nan=-1.0), torch.nan_to_num(y, nan=-1.0))


@pytest.mark.parametrize("name", NAMES)
def test_prediction_shapes_and_vote(name):
    head = _build(name).eval()
    f_q, pool_f, pool_t, idx, mask = _voters()
    p = _predict(head, f_q, pool_f, pool_t, idx, mask)
    assert isinstance(p, Prediction) and p.target.shape == (B,) and torch.isfinite(p.target).all()
    if not head.pairwise:
        assert p.per_voter is None and p.leaf is None
        return
    assert p.per_voter.shape == (B, M)
    assert torch.isnan(p.per_voter[~mask]).all() and torch.isfinite(p.per_voter[mask]).all()
    torch.testing.assert_close(p.target, torch.nanmean(p.per_voter, dim=1), **TOL)   # mean over valid voters
    if head.tree:
        assert p.leaf.shape == (B, M) and p.leaf.dtype == torch.int64
        assert (p.leaf[~mask] == -1).all()
        assert ((p.leaf[mask] >= 0) & (p.leaf[mask] < len(head.groups))).all()
    else:
        assert p.leaf is None


@pytest.mark.parametrize("name", NAMES)
def test_predict_indexed_equals_predict_on_gathered_exemplars(name):
    head = _build(name).eval()
    f_q, pool_f, pool_t, idx, mask = _voters()
    with torch.no_grad():
        a = _predict(head, f_q, pool_f, pool_t, idx, mask)
        b = head.predict_indexed(f_q, pool_f, pool_t, idx, mask)
    torch.testing.assert_close(b.target, a.target, **TOL)
    if head.pairwise:
        torch.testing.assert_close(b.per_voter, a.per_voter, equal_nan=True, **TOL)
    if head.tree:
        assert torch.equal(b.leaf, a.leaf)


@pytest.mark.parametrize("name", NAMES)
def test_batched_equals_one_query_at_a_time(name):
    head = _build(name).eval()
    f_q, pool_f, pool_t, idx, mask = _voters()
    full = _predict(head, f_q, pool_f, pool_t, idx, mask)
    for q in range(B):
        one = _predict(head, f_q[q:q + 1], pool_f, pool_t, idx[q:q + 1], mask[q:q + 1])
        torch.testing.assert_close(one.target, full.target[q:q + 1], **TOL)
        if head.pairwise:
            torch.testing.assert_close(one.per_voter, full.per_voter[q:q + 1], equal_nan=True, **TOL)


@pytest.mark.parametrize("name", NAMES)
def test_each_voter_alone_gives_its_per_voter_prediction(name):
    head = _build(name).eval()
    f_q, pool_f, pool_t, idx, mask = _voters()
    full = _predict(head, f_q, pool_f, pool_t, idx, mask)
    if not head.pairwise:                      # exemplars are ignored: the same prediction with or without them
        with torch.no_grad():
            torch.testing.assert_close(head.predict(f_q, pool_f[idx], pool_t[idx], mask).target, full.target,
                                       rtol=0, atol=0)
        return
    for q in range(B):
        for m in range(M):
            if not mask[q, m]:
                continue
            one = _predict(head, f_q[q:q + 1], pool_f, pool_t, idx[q:q + 1, m:m + 1],
                           torch.ones(1, 1, dtype=torch.bool))
            torch.testing.assert_close(one.target[0], full.per_voter[q, m], **TOL)
            if head.tree:
                assert one.leaf[0, 0] == full.leaf[q, m]


@pytest.mark.parametrize("name", [n for n in NAMES if HEADS[n].judges])
def test_judge_heads_refuse_one_score_per_video(name):
    head = _build(name)
    f_q, _, _, _ = _loss_batch(head)
    with pytest.raises(ValueError, match="judges"):
        head.loss(f_q, torch.rand(len(f_q), dtype=torch.float64) * THETA)


@pytest.mark.parametrize("name", NAMES)
def test_target_problem_accepts_the_contract_targets(name):
    """The head's own range check (run before a run starts) passes the targets these tests train on."""
    head = _build(name)
    _, t_q, _, _ = _loss_batch(head)
    assert HEADS[name].target_problem(t_q.numpy(), THETA) is None


@pytest.mark.parametrize("name", list(HEADS))
def test_one_pair_gives_every_parameter_a_gradient(name):
    """The training loop sets gradients to None between steps (train_head.loop.run); Adam skips a parameter
    whose gradient is None but decays the moments of one whose gradient is zero, so a head must give every
    trainable parameter a gradient (zeros where unused) even from a batch of one pair, which reaches one
    leaf of a tree head only: otherwise gradients set to None would change the training."""
    head = _build(name)
    f_q, t_q, f_e, t_e = (None if x is None else x[:1] for x in _loss_batch(head))
    head.loss(f_q, t_q, f_e, t_e)[0].backward()
    missing = [n for n, p in head.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
