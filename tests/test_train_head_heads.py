"""Regression tree and heads (docs/METHOD.md §4 and §5)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from train_head import pairs
from train_head.groups import build_groups
from train_head.heads import HEADS, Prediction, build_head
from train_head.tree import RegressionTree


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


G4 = np.array([[-100, -3], [-3, 0], [0, 3], [3, 100]], dtype=np.float64)   # build_groups([0,1,3,6], depth=3)


@pytest.mark.parametrize("depth", [2, 3, 5])
def test_tree_shapes_and_normalised(depth):
    torch.manual_seed(0)
    tree = RegressionTree(in_dim=9, hidden=16, depth=depth)
    logp, reg = tree(torch.randn(6, 9))
    L = 2 ** (depth - 1)
    assert logp.shape == reg.shape == (6, L)
    torch.testing.assert_close(torch.logsumexp(logp, 1), torch.zeros(6), atol=1e-5, rtol=0)
    (logp.sum() + reg.sum()).backward()
    assert all(p.grad is not None for p in tree.parameters())


def test_leaves_are_linear_by_default_and_sigmoid_on_request():
    """The reference tree's leaf regressors are plain linear layers: the default; the sigmoid is an option."""
    assert RegressionTree(in_dim=9, hidden=16, depth=3).leaf_activation == "identity"
    torch.manual_seed(0)
    lin = RegressionTree(in_dim=9, hidden=16, depth=3)
    with torch.no_grad():
        lin.regressors.bias.fill_(3.0)                      # a linear leaf passes 3 + w.h straight through
    torch.manual_seed(0)
    sig = RegressionTree(in_dim=9, hidden=16, depth=3, leaf_activation="sigmoid")
    sig.load_state_dict(lin.state_dict())
    x = torch.randn(6, 9)
    _, reg_lin = lin(x)
    _, reg_sig = sig(x)
    assert (reg_lin > 1).any()                               # not squashed
    torch.testing.assert_close(reg_sig, torch.sigmoid(reg_lin))
    assert ((reg_sig > 0) & (reg_sig < 1)).all()
    h0 = F.relu(lin.stem(x))
    leaf = torch.tensor([0, 1, 2, 3, 0, 3])
    torch.testing.assert_close(sig.forward_at(h0, leaf)[1], torch.sigmoid(lin.forward_at(h0, leaf)[1]))
    for name in ("core", "core_dd"):
        assert build_head(name, feat_dim=4, depth=3, hidden=8, groups=G4).tree_net.leaf_activation == "identity"
        h = build_head(name, feat_dim=4, depth=3, hidden=8, groups=G4, leaf_activation="sigmoid")
        assert h.tree_net.leaf_activation == "sigmoid"
    with pytest.raises(ValueError, match="leaf_activation"):
        build_head("core", feat_dim=4, depth=3, hidden=8, groups=G4, leaf_activation="tanh")
    with pytest.raises(ValueError, match="unknown option"):
        build_head("core", feat_dim=4, depth=3, hidden=8, groups=G4, leaf_activaton="sigmoid")
    assert build_head("mlp", feat_dim=4, hidden=8, leaf_activation="sigmoid").name == "mlp"   # not a tree: ignored


def test_tree_matches_per_node_reference():
    """The batched level computation equals a plain loop over nodes with the same weights."""
    torch.manual_seed(1)
    tree = RegressionTree(in_dim=5, hidden=4, depth=4, leaf_activation="identity")
    x = torch.randn(3, 5)
    logp, reg = tree(x)
    nodes = [(F.relu(tree.stem(x)), torch.zeros(3))]
    for cls, split in zip(tree.classifiers, tree.splits):
        children = []
        for i, (h, lp) in enumerate(nodes):
            step = F.log_softmax(h @ cls.weight[i] + cls.bias[i], dim=-1)
            hh = F.relu(h @ split.weight[i] + split.bias[i])
            children += [(hh[:, :4], lp + step[:, 0]), (hh[:, 4:], lp + step[:, 1])]
        nodes = children
    ref_logp = torch.stack([lp for _, lp in nodes], 1)
    ref_reg = torch.stack([h @ tree.regressors.weight[k, :, 0] + tree.regressors.bias[k, 0]
                           for k, (h, _) in enumerate(nodes)], 1)
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(reg, ref_reg)


def test_registry_and_flags():
    assert set(HEADS) == {"mlp", "mlp_dd", "contrastive_mlp", "core", "core_dd", "usdl", "musdl"}
    flags = {n: (c.pairwise, c.dd, c.tree, c.judges) for n, c in HEADS.items()}
    assert flags == {"mlp": (False, False, False, False), "mlp_dd": (False, True, False, False),
                     "contrastive_mlp": (True, False, False, False), "core": (True, False, True, False),
                     "core_dd": (True, True, True, False), "usdl": (False, False, False, False),
                     "musdl": (False, True, False, True)}
    with pytest.raises(ValueError, match="unknown head"):
        build_head("nope")
    with pytest.raises(ValueError, match="shape"):
        build_head("core", groups=G4)                        # depth 5 needs 16 leaves


def _hand_set_core(name="core", leaf_activation="identity"):
    """depth 3 tree that always picks leaf 2 ([0, 3]) with in-leaf position 0.25."""
    h = build_head(name, feat_dim=4, depth=3, hidden=8, groups=G4, leaf_activation=leaf_activation)
    t = h.tree_net
    with torch.no_grad():
        for p in t.parameters():
            p.zero_()
        t.classifiers[0].bias[0] = torch.tensor([0.0, 10.0])      # root -> right child (node 1)
        t.classifiers[1].bias[1] = torch.tensor([10.0, 0.0])      # node 1 -> its left child = leaf 2
        t.regressors.bias[:, 0] = math.log(0.25 / 0.75) if leaf_activation == "sigmoid" else 0.25
    return h


@pytest.mark.parametrize("leaf_activation", ["identity", "sigmoid"])
def test_core_inference_formula_and_voting_mask(leaf_activation):
    h = _hand_set_core(leaf_activation=leaf_activation)
    f_q = torch.randn(2, 4)
    f_e = torch.randn(2, 3, 4)
    t_e = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    p = h.predict(f_q, f_e, t_e, mask)
    assert isinstance(p, Prediction)
    rel = 0.0 + (3.0 - 0.0) * 0.25
    torch.testing.assert_close(p.target, torch.tensor([15.0 + rel, 50.0 + rel]))
    torch.testing.assert_close(p.per_voter[0, :2], torch.tensor([10.0 + rel, 20.0 + rel]))
    assert torch.isnan(p.per_voter[0, 2])
    assert p.leaf.tolist() == [[2, 2, -1], [2, 2, 2]]
    with pytest.raises(ValueError, match="no valid voter"):
        h.predict(f_q, f_e, t_e, torch.zeros(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("leaf_activation", ["identity", "sigmoid"])
def test_core_loss_by_hand_both_directions(leaf_activation):
    h = _hand_set_core(leaf_activation=leaf_activation)
    f_q, f_e = torch.randn(1, 4), torch.randn(1, 4)
    loss, stats = h.loss(f_q, torch.tensor([11.0]), f_e, torch.tensor([10.0]))
    # q vs e: delta 1 -> leaf 2 [0,3), pos 1/3;  e vs q: delta -1 -> leaf 1 (-3,0], pos 2/3
    root = F.log_softmax(torch.tensor([0.0, 10.0]), 0)
    lp2 = root[1] + F.log_softmax(torch.tensor([10.0, 0.0]), 0)[0]
    lp1 = root[0] + math.log(0.5)                              # node 0 has zero logits
    nll = -(lp2 + lp1) / 2
    mse = ((0.25 - 1 / 3) ** 2 + (0.25 - 2 / 3) ** 2) / 2
    assert stats["nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert stats["mse"] == pytest.approx(mse, rel=1e-5)
    assert loss.item() == pytest.approx(nll.item() + mse, rel=1e-5)
    assert stats["leaf_acc"] == 0.5 and stats["n_clamped"] == 0
    _, s2 = h.loss(f_q, torch.tensor([200.0]), f_e, torch.tensor([10.0]))
    assert s2["n_clamped"] == 2                                 # +190 and -190, both directions


@pytest.mark.parametrize("name", ["contrastive_mlp", "core"])
def test_pairwise_loss_symmetric_in_direction(name):
    torch.manual_seed(0)
    h = build_head(name, feat_dim=6, hidden=16, depth=3, groups=G4)
    f_q, f_e = torch.randn(5, 6), torch.randn(5, 6)
    t_q, t_e = torch.rand(5) * 100, torch.rand(5) * 100
    a, _ = h.loss(f_q, t_q, f_e, t_e)
    b, _ = h.loss(f_e, t_e, f_q, t_q)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="exemplar"):
        h.loss(f_q, t_q)


def test_groups_saved_in_state_dict():
    h = _hand_set_core("core_dd")
    sd = h.state_dict()
    assert "groups" in sd
    h2 = build_head("core_dd", feat_dim=4, depth=3, hidden=8)
    with pytest.raises(RuntimeError, match="groups are not set"):
        h2.predict(torch.randn(1, 4), torch.randn(1, 2, 4), torch.ones(1, 2))
    h2.load_state_dict(sd)
    torch.testing.assert_close(h2.groups, torch.as_tensor(G4))
    f_q, f_e, t_e = torch.randn(2, 4), torch.randn(2, 3, 4), torch.rand(2, 3) * 10
    torch.testing.assert_close(h2.predict(f_q, f_e, t_e).target, h.predict(f_q, f_e, t_e).target)


@pytest.mark.parametrize("name", ["mlp", "mlp_dd"])
def test_mlp_heads_ignore_exemplars(name):
    torch.manual_seed(0)
    h = build_head(name, feat_dim=6, hidden=16)
    f_q = torch.randn(4, 6)
    p = h.predict(f_q)
    assert p.target.shape == (4,) and p.per_voter is None and p.leaf is None
    torch.testing.assert_close(h.predict(f_q, torch.randn(4, 3, 6), torch.rand(4, 3)).target, p.target)
    loss, stats = h.loss(f_q, torch.rand(4) * 100)
    assert loss.ndim == 0 and stats["mse"] == pytest.approx(loss.item() * 100 ** 2, rel=1e-5)


def test_contrastive_mlp_voting():
    torch.manual_seed(0)
    h = build_head("contrastive_mlp", feat_dim=3, hidden=8)
    f_q, f_e, t_e = torch.randn(2, 3), torch.randn(2, 4, 3), torch.rand(2, 4) * 100
    mask = torch.tensor([[True, False, True, False], [True, True, True, True]])
    p = h.predict(f_q, f_e, t_e, mask)
    delta = h(f_q[0].expand(4, 3), f_e[0], t_e[0])
    torch.testing.assert_close(p.target[0], ((t_e[0] + delta)[[0, 2]]).mean())
    assert p.leaf is None and torch.isnan(p.per_voter[0, 1])
    torch.testing.assert_close(h.predict(f_q, f_e, t_e, mask.numpy()).target, p.target)   # numpy mask (draw_voters)


@pytest.mark.parametrize("name", ["core", "contrastive_mlp"])
def test_learns_known_relation(name):
    """A few hundred steps on tiny synthetic features: the pairwise heads recover s = 50 + 15 f0 + 5 f1."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def make(n):
        f = rng.normal(size=(n, 8)).astype(np.float32)
        return torch.from_numpy(f), torch.from_numpy(np.clip(50 + 15 * f[:, 0] + 5 * f[:, 1], 0, 100))

    f_tr, s_tr = make(200)
    f_te, s_te = make(100)
    h = build_head(name, feat_dim=8, hidden=32, depth=4, groups=build_groups(s_tr.numpy(), depth=4))
    opt = torch.optim.Adam(h.parameters(), lr=3e-3)
    for _ in range(200):
        q, e, _ = pairs.train_pairs(200, rng)
        b = rng.choice(200, 32, replace=False)
        loss, stats = h.loss(f_tr[q[b]], s_tr[q[b]], f_tr[e[b]], s_tr[e[b]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    idx, mask = pairs.draw_voters(200, 100, 10, rng)
    with torch.no_grad():
        p = h.predict(f_te, f_tr[idx], s_tr[idx], torch.from_numpy(mask))
    rho = spearmanr(p.target.numpy(), s_te.numpy())[0]
    mse = float(((p.target - s_te) ** 2).mean())
    assert rho > 0.95 and mse < 25.0, (rho, mse, stats)      # score variance is ~250


def test_fast_paths_match_full_tree_and_concat_input():
    """forward_at/forward_best skip the unused leaves' last split; pair_input_proj/predict_indexed
    split the first layer: all equal the plain computation up to float rounding."""
    import numpy as np
    from train_head.groups import build_groups
    from train_head.heads import build_head
    torch.manual_seed(0)
    groups = build_groups(np.random.default_rng(0).random(40) * 100, depth=4, theta=100.0)
    for name in ("core", "contrastive_mlp"):
        h = build_head(name, feat_dim=6, theta=100.0, depth=4, hidden=8, groups=groups).double()
        pool_f, pool_t = torch.randn(9, 6, dtype=torch.double), torch.rand(9, dtype=torch.double) * 100
        f_q = torch.randn(5, 6, dtype=torch.double)
        idx = torch.randint(0, 9, (5, 3))
        mask = torch.rand(5, 3) > 0.3
        mask[:, 0] = True
        a, b = h.predict(f_q, pool_f[idx], pool_t[idx], mask), h.predict_indexed(f_q, pool_f, pool_t, idx, mask)
        torch.testing.assert_close(a.target, b.target)
        # the plain concat path
        fq = f_q.unsqueeze(1).expand(5, 3, 6).reshape(15, 6)
        if name == "core":
            logp, reg = h(fq, pool_f[idx].reshape(15, 6), pool_t[idx].reshape(15))
            k = logp.argmax(1)
            assert torch.equal(torch.where(mask, k.reshape(5, 3), -1), a.leaf)
            g = h.groups
            rel = (g[k, 0] + (g[k, 1] - g[k, 0]) * reg.gather(1, k[:, None])[:, 0]).reshape(5, 3)
        else:
            rel = h(fq, pool_f[idx].reshape(15, 6), pool_t[idx].reshape(15)).reshape(5, 3)
        per = pool_t[idx] + rel
        torch.testing.assert_close(a.per_voter[mask], per[mask])
