"""Stage-two heads: the CoRe head and the baselines of docs/METHOD.md §5, behind one registry.

::

    head = build_head("core", feat_dim=1024, theta=100.0, depth=5, groups=build_groups(train_scores))
    loss, stats = head.loss(f_q, t_q, f_e, t_e)             # (B, D), (B,), (B, D), (B,)
    pred = head.predict(f_q, f_e, t_e, mask)                # (B, D), (B, M, D), (B, M), (B, M)
    pred.target   # (B,) mean over valid voters

Names: ``mlp``, ``mlp_dd``, ``contrastive_mlp``, ``core``, ``core_dd``, and the score-distribution heads
``usdl`` and ``musdl`` (``train_head/heads_sdl.py``).

Targets ``t`` are what the head regresses: scores, or completeness ``score / difficulty`` for ``dd`` heads.
The heads never see difficulty: the trainer divides scores by difficulty before ``loss``/``predict`` and
multiplies ``Prediction.target`` (and ``per_voter``) by the query's difficulty afterwards. Heads with
``judges`` set (``musdl``) take the judges' scores ``(B, J)`` as ``t`` instead and predict the sum of the
counted judges (a dd head: the trainer multiplies it by difficulty).

Scaling: the MLP heads regress ``target / theta`` (or ``delta / theta``) so their outputs are O(1); their
loss is the MSE on that scale and ``predict`` multiplies back by theta.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from train_head.groups import leaf_labels
from train_head.head_base import HEADS, Head, Prediction, mlp_layers, register_head
from train_head.tree import LEAF_ACTIVATIONS, RegressionTree

__all__ = ["HEADS", "Head", "Prediction", "build_head", "register_head",
           "MLPHead", "MLPDDHead", "ContrastiveMLPHead", "CoReHead", "CoReDDHead", "USDLHead", "MUSDLHead",
           "LEAF_ACTIVATIONS"]

log = logging.getLogger(__name__)


@register_head("mlp")
class MLPHead(Head):
    """I3D+MLP: regress the target from the video feature ``f`` alone; exemplars are ignored.

    MLP feat_dim -> hidden -> hidden/2 -> 1 (ReLU), output = target / theta; loss = MSE on that scale.
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.mlp = mlp_layers(self.feat_dim, self.hidden)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.mlp(f).squeeze(-1) * self.theta                  # (B,) in target units

    def loss(self, f_q, t_q, f_e=None, t_e=None):
        out = self.mlp(f_q).squeeze(-1)
        mse = F.mse_loss(out, t_q.to(out.dtype) / self.theta)
        return mse, {"loss": mse.detach(), "mse": mse.detach() * self.theta ** 2}

    def predict(self, f_q, f_e=None, t_e=None, mask=None) -> Prediction:
        return Prediction(self(f_q))


@register_head("mlp_dd")
class MLPDDHead(MLPHead):
    """I3D+MLP w/ DD: as ``mlp`` on completeness targets; the trainer multiplies by the query's difficulty."""
    dd = True


@register_head("contrastive_mlp")
class ContrastiveMLPHead(Head):
    """Contrastive regression without the tree: MLP on ``x = [f_q, f_e, t_e / theta]`` -> ``delta / theta``.

    loss: MSE of ``delta / theta`` over both pair directions. predict: ``t_e + delta`` averaged over voters.
    """
    pairwise = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.mlp = mlp_layers(2 * self.feat_dim + 1, self.hidden)

    def forward(self, f_q, f_e, t_e) -> torch.Tensor:
        """(N, D), (N, D), (N,) -> predicted delta (N,) in target units."""
        return self.mlp(self._pair_input(f_q, f_e, t_e)).squeeze(-1) * self.theta

    def loss(self, f_q, t_q, f_e=None, t_e=None):
        fa, ta, fb, tb = self._both_directions(f_q, t_q, f_e, t_e)
        out = self.mlp(self._pair_input(fa, fb, tb)).squeeze(-1)
        mse = F.mse_loss(out, (ta - tb).to(out.dtype) / self.theta)
        return mse, {"loss": mse.detach(), "mse": mse.detach() * self.theta ** 2}

    def predict(self, f_q, f_e=None, t_e=None, mask=None) -> Prediction:
        mask = self._check_voters(f_q, f_e, t_e, mask)
        return self._predict_proj(self.pair_input_proj(self.mlp[0], f_q, f_e, t_e), t_e, mask)

    def predict_indexed(self, f_q, pool_f, pool_t, idx, mask=None) -> Prediction:
        t_e = pool_t[idx]
        mask = self._check_voters(f_q, pool_f.new_empty((*idx.shape, 0)), t_e, mask)
        return self._predict_proj(self.pair_input_proj(self.mlp[0], f_q, pool_f, pool_t, idx), t_e, mask)

    def _predict_proj(self, h, t_e, mask) -> Prediction:
        """h (B, M, hidden): the first layer's output for every pair."""
        B, M, _ = h.shape
        delta = self.mlp[1:](h).squeeze(-1) * self.theta                 # (B, M)
        target, per_voter = self._vote(t_e.to(delta.dtype) + delta, mask)
        return Prediction(target, per_voter, None)


@register_head("core")
class CoReHead(Head):
    """CoRe: contrastive regression with the group-aware regression tree (docs/METHOD.md §4).

    ``groups`` (L, 2) from ``build_groups`` (L = 2**(depth-1)) is kept as a buffer, so it is saved in and
    restored from the state dict; ``groups=None`` leaves it NaN until ``load_state_dict`` fills it.
    loss (mean over both pair directions): NLL of the true leaf + squared error of that leaf's regression
    against the in-leaf position (labels from ``leaf_labels``; deltas beyond theta are clamped and
    counted in ``stats["n_clamped"]``, which counts both directions, so one such pair counts 2).
    stats: loss, nll, mse (on the in-leaf position scale), leaf_acc (argmax leaf == true leaf), n_clamped. predict: most probable leaf k, relative = a_k + (b_k - a_k) * r_k,
    per voter ``t_e + relative``, mean over valid voters.
    """
    pairwise = True
    tree = True
    build_keys = ("groups", "leaf_activation")

    def __init__(self, *, groups=None, leaf_activation: str = LEAF_ACTIVATIONS[0], **kw):
        super().__init__(**kw)
        self.n_leaves = 2 ** (self.depth - 1)
        self.tree_net = RegressionTree(2 * self.feat_dim + 1, hidden=self.hidden, depth=self.depth,
                                       leaf_activation=leaf_activation)
        g = torch.full((self.n_leaves, 2), float("nan"), dtype=torch.float64)
        if groups is not None:
            groups = torch.as_tensor(groups, dtype=torch.float64)
            if tuple(groups.shape) != (self.n_leaves, 2):
                raise ValueError(f"{self.name}: groups must have shape ({self.n_leaves}, 2) for depth "
                                 f"{self.depth}, got {tuple(groups.shape)}")
            g = groups.clone()
        self.register_buffer("groups", g)

    def _groups(self) -> torch.Tensor:
        if torch.isnan(self.groups).any():
            raise RuntimeError(f"{self.name}: groups are not set; pass groups=build_groups(...) to build_head "
                               "or load a state dict that holds them")
        return self.groups

    def forward(self, f_q, f_e, t_e):
        """(N, D), (N, D), (N,) -> leaf log-probs (N, L), leaf regressions (N, L)."""
        return self.tree_net(self._pair_input(f_q, f_e, t_e))

    def loss(self, f_q, t_q, f_e=None, t_e=None):
        groups = self._groups()
        fa, ta, fb, tb = self._both_directions(f_q, t_q, f_e, t_e)
        leaf, pos, n_clamped = leaf_labels((ta - tb).detach(), groups)
        leaf = leaf.to(fa.device)
        # the loss needs only the true leaf's regression: the tree skips the other leaves' last split
        tree = self.tree_net
        logp, r = tree.forward_at(F.relu(tree.stem(self._pair_input(fa, fb, tb))), leaf)
        nll = F.nll_loss(logp, leaf)
        mse = F.mse_loss(r, pos.to(r.dtype))
        loss = nll + mse
        acc = (logp.argmax(1) == leaf).float().mean()
        return loss, {"loss": loss.detach(), "nll": nll.detach(), "mse": mse.detach(),
                      "leaf_acc": acc.detach(), "n_clamped": n_clamped}

    def predict(self, f_q, f_e=None, t_e=None, mask=None) -> Prediction:
        groups = self._groups()
        mask = self._check_voters(f_q, f_e, t_e, mask)
        return self._predict_proj(self.pair_input_proj(self.tree_net.stem, f_q, f_e, t_e), t_e, mask, groups)

    def predict_indexed(self, f_q, pool_f, pool_t, idx, mask=None) -> Prediction:
        groups = self._groups()
        t_e = pool_t[idx]
        mask = self._check_voters(f_q, pool_f.new_empty((*idx.shape, 0)), t_e, mask)
        h = self.pair_input_proj(self.tree_net.stem, f_q, pool_f, pool_t, idx)
        return self._predict_proj(h, t_e, mask, groups)

    def _predict_proj(self, h, t_e, mask, groups) -> Prediction:
        """h (B, M, hidden): the stem's output (before ReLU) for every pair."""
        B, M, H = h.shape
        _, k, r = self.tree_net.forward_best(F.relu(h.reshape(B * M, H)))   # (B*M,), (B*M,)
        g = groups.to(r.dtype)
        a, b = g[k, 0], g[k, 1]
        relative = (a + (b - a) * r).reshape(B, M)
        target, per_voter = self._vote(t_e.to(relative.dtype) + relative, mask)
        leaf = torch.where(mask, k.reshape(B, M), torch.full_like(k.reshape(B, M), -1))
        return Prediction(target, per_voter, leaf)


@register_head("core_dd")
class CoReDDHead(CoReHead):
    """CoRe w/ DD: as ``core`` on completeness targets (groups from same-difficulty pairs, theta 30 for
    MTL-AQA); the trainer multiplies the prediction by the query's difficulty."""
    dd = True


def build_head(name: str, *, feat_dim: int = 1024, theta: float = 100.0, depth: int = 5, hidden: int = 256,
               groups=None, **options) -> Head:
    """Build a registered head by name; see the module docstring.

    options: keywords only some heads take (their ``build_keys``), e.g. ``leaf_activation``
    ("identity" (default, the reference's linear leaves) | "sigmoid") for the tree heads, ``n_judges``,
    ``bins``, ``sigma``, ``prediction`` for the score-distribution heads; a head ignores the others.
    An option no head takes is refused."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {sorted(HEADS)}")
    known = {k for c in HEADS.values() for k in c.build_keys}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"build_head: unknown option(s) {unknown}; options: {sorted(known - {'groups'})}")
    cls = HEADS[name]
    if "groups" not in cls.build_keys and groups is not None:
        log.debug("build_head: head %r has no tree; groups ignored", name)
    kw = dict(feat_dim=feat_dim, theta=theta, depth=depth, hidden=hidden)
    given = {"groups": groups, **options}
    kw.update({k: v for k, v in given.items() if k in cls.build_keys and v is not None})
    return cls(**kw)


# the score-distribution heads register themselves here, after the heads above (registry order)
from train_head.heads_sdl import MUSDLHead, USDLHead  # noqa: E402
