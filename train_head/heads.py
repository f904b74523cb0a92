"""Stage-two heads: the CoRe head and the baselines of SPEC section 5, behind one registry.

::

    head = build_head("core", feat_dim=1024, theta=100.0, depth=5, groups=build_groups(train_scores))
    loss, stats = head.loss(f_q, t_q, f_e, t_e)             # (B, D), (B,), (B, D), (B,)
    pred = head.predict(f_q, f_e, t_e, mask)                # (B, D), (B, M, D), (B, M), (B, M)
    pred.target   # (B,) mean over valid voters

Names: ``mlp``, ``mlp_dd``, ``contrastive_mlp``, ``core``, ``core_dd``.

Targets ``t`` are what the head regresses: scores, or completeness ``score / difficulty`` for ``dd`` heads.
The heads never see difficulty: the trainer divides scores by difficulty before ``loss``/``predict`` and
multiplies ``Prediction.target`` (and ``per_voter``) by the query's difficulty afterwards.

Scaling: the MLP heads regress ``target / theta`` (or ``delta / theta``) so their outputs are O(1); their
loss is the MSE on that scale and ``predict`` multiplies back by theta.
"""
from __future__ import annotations

import logging
from typing import Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from train_head.groups import leaf_labels
from train_head.tree import RegressionTree

__all__ = ["HEADS", "Head", "Prediction", "build_head", "register_head",
           "MLPHead", "MLPDDHead", "ContrastiveMLPHead", "CoReHead", "CoReDDHead"]

log = logging.getLogger(__name__)

HEADS: dict[str, type["Head"]] = {}


def register_head(name: str) -> Callable[[type["Head"]], type["Head"]]:
    """Class decorator adding a head to ``HEADS`` under ``name``."""
    def deco(cls: type[Head]) -> type[Head]:
        if name in HEADS:
            raise ValueError(f"head {name!r} registered twice")
        cls.name = name
        HEADS[name] = cls
        return cls
    return deco


class Prediction(NamedTuple):
    """What ``Head.predict`` returns.

    target: (B,) predicted target (completeness for dd heads), mean over the valid voters.
    per_voter: (B, M) one prediction per exemplar (NaN where the mask is False); None for non-pairwise heads.
    leaf: (B, M) int64 most probable leaf per voter (-1 where masked); None for heads without a tree.
    """
    target: torch.Tensor
    per_voter: torch.Tensor | None = None
    leaf: torch.Tensor | None = None


def _mlp(in_dim: int, hidden: int) -> nn.Sequential:
    """in_dim -> hidden -> hidden // 2 -> 1 with ReLU (1024 -> 256 -> 128 -> 1 by default)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(),
                         nn.Linear(hidden, max(hidden // 2, 1)), nn.ReLU(),
                         nn.Linear(max(hidden // 2, 1), 1))


class Head(nn.Module):
    """Base class. Subclasses set the class flags and implement ``loss`` and ``predict``."""
    name: ClassVar[str] = ""
    pairwise: ClassVar[bool] = False   # needs exemplars (contrastive heads)
    dd: ClassVar[bool] = False         # targets are completeness = score / difficulty; score = target * difficulty
    tree: ClassVar[bool] = False       # has leaves/groups

    def __init__(self, *, feat_dim: int = 1024, theta: float = 100.0, depth: int = 5, hidden: int = 256,
                 groups=None):
        super().__init__()
        self.feat_dim, self.theta, self.depth, self.hidden = int(feat_dim), float(theta), int(depth), int(hidden)
        if not self.theta > 0:
            raise ValueError(f"{type(self).__name__}: theta must be positive, got {theta}")

    # --- pair helpers -------------------------------------------------------------------------------
    def _pair_input(self, f_a: torch.Tensor, f_b: torch.Tensor, t_b: torch.Tensor) -> torch.Tensor:
        """x = concat(f_query, f_exemplar, t_exemplar / theta): (N, 2D + 1)."""
        return torch.cat([f_a, f_b, (t_b / self.theta).unsqueeze(-1).to(f_a.dtype)], dim=-1)

    def pair_input_proj(self, first: nn.Linear, f_q: torch.Tensor, f_e: torch.Tensor, t_e: torch.Tensor,
                        idx: torch.Tensor | None = None) -> torch.Tensor:
        """``first(concat(f_q, f_e, t_e / theta))`` for every query x voter pair, without building the pairs.

        The first layer is split as ``W_q f_q + W_e f_e + w_s t_e / theta + b``: each query (and each
        exemplar) is projected once, and the projections are combined per pair, instead of running the
        (2D+1) x hidden product on every one of the B*M pairs. f_q (B, D); with ``idx`` None f_e is (B, M, D)
        and t_e (B, M); with ``idx`` (B, M) f_e is a pool (P, D), t_e its targets (P,), and pair (b, m) uses
        pool entry ``idx[b, m]`` (the pool is projected once). Returns (B, M, hidden), before the activation.
        Equal to the concatenated form up to float rounding.
        """
        D = f_q.shape[-1]
        w = first.weight                                                  # (hidden, 2D + 1)
        pq = f_q @ w[:, :D].t()                                           # (B, hidden)
        pe = f_e @ w[:, D:2 * D].t()                                      # (B, M, hidden) | (P, hidden)
        ts = (t_e / self.theta).to(pq.dtype)
        if idx is not None:
            pe, ts = pe[idx], ts[idx]                                     # (B, M, hidden), (B, M)
        return torch.addcmul(pe + first.bias, ts.unsqueeze(-1), w[:, 2 * D]) + pq.unsqueeze(1)

    @staticmethod
    def _both_directions(f_q, t_q, f_e, t_e):
        """Stack (q vs e) and (e vs q): 2B rows; a mean over them averages the two directions."""
        if f_e is None or t_e is None:
            raise ValueError("pairwise head: loss() needs exemplar features f_e and targets t_e")
        return torch.cat([f_q, f_e]), torch.cat([t_q, t_e]), torch.cat([f_e, f_q]), torch.cat([t_e, t_q])

    @staticmethod
    def _check_voters(f_q, f_e, t_e, mask):
        if f_e is None or t_e is None:
            raise ValueError("pairwise head: predict() needs exemplar features f_e (B, M, D) and targets t_e (B, M)")
        if f_e.ndim != 3 or t_e.shape != f_e.shape[:2] or f_e.shape[0] != f_q.shape[0]:
            raise ValueError(f"pairwise head: expected f_e (B, M, D) and t_e (B, M) with B={f_q.shape[0]}, "
                             f"got {tuple(f_e.shape)} and {tuple(t_e.shape)}")
        if mask is None:
            mask = torch.ones(t_e.shape, dtype=torch.bool, device=t_e.device)
        mask = torch.as_tensor(mask, device=t_e.device).to(torch.bool)
        if mask.shape != t_e.shape:
            raise ValueError(f"pairwise head: mask has shape {tuple(mask.shape)}, expected {tuple(t_e.shape)}")
        empty = ~mask.any(dim=1)
        if empty.any():
            raise ValueError(f"pairwise head: {int(empty.sum())} queries have no valid voter in mask")
        return mask

    @staticmethod
    def _vote(per_voter: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over valid voters; masked entries of per_voter become NaN."""
        zero = torch.zeros_like(per_voter)
        target = torch.where(mask, per_voter, zero).sum(1) / mask.sum(1).to(per_voter.dtype)
        return target, torch.where(mask, per_voter, torch.full_like(per_voter, float("nan")))

    def loss(self, f_q, t_q, f_e=None, t_e=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, f_q, f_e=None, t_e=None, mask=None) -> Prediction:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_indexed(self, f_q, pool_f, pool_t, idx, mask=None) -> Prediction:
        """``predict(f_q, pool_f[idx], pool_t[idx], mask)``; pairwise heads override it to project each
        pool video once (see ``pair_input_proj``)."""
        if not self.pairwise:
            return self.predict(f_q)
        return self.predict(f_q, pool_f[idx], pool_t[idx], mask)

    def extra_repr(self) -> str:
        return f"name={self.name}, feat_dim={self.feat_dim}, theta={self.theta:g}"


@register_head("mlp")
class MLPHead(Head):
    """I3D+MLP: regress the target from the video feature ``f`` alone; exemplars are ignored.

    MLP feat_dim -> hidden -> hidden/2 -> 1 (ReLU), output = target / theta; loss = MSE on that scale.
    """

    def __init__(self, **kw):
        super().__init__(**kw)
        self.mlp = _mlp(self.feat_dim, self.hidden)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.mlp(f).squeeze(-1) * self.theta                  # (B,) in target units

    def loss(self, f_q, t_q, f_e=None, t_e=None):
        out = self.mlp(f_q).squeeze(-1)
        mse = F.mse_loss(out, t_q.to(out.dtype) / self.theta)
        return mse, {"loss": mse.item(), "mse": mse.item() * self.theta ** 2}

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
        self.mlp = _mlp(2 * self.feat_dim + 1, self.hidden)

    def forward(self, f_q, f_e, t_e) -> torch.Tensor:
        """(N, D), (N, D), (N,) -> predicted delta (N,) in target units."""
        return self.mlp(self._pair_input(f_q, f_e, t_e)).squeeze(-1) * self.theta

    def loss(self, f_q, t_q, f_e=None, t_e=None):
        fa, ta, fb, tb = self._both_directions(f_q, t_q, f_e, t_e)
        out = self.mlp(self._pair_input(fa, fb, tb)).squeeze(-1)
        mse = F.mse_loss(out, (ta - tb).to(out.dtype) / self.theta)
        return mse, {"loss": mse.item(), "mse": mse.item() * self.theta ** 2}

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
    """CoRe: contrastive regression with the group-aware regression tree (SPEC section 4).

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

    def __init__(self, **kw):
        groups = kw.pop("groups", None)
        super().__init__(**kw)
        self.n_leaves = 2 ** (self.depth - 1)
        self.tree_net = RegressionTree(2 * self.feat_dim + 1, hidden=self.hidden, depth=self.depth)
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
        return loss, {"loss": loss.item(), "nll": nll.item(), "mse": mse.item(),
                      "leaf_acc": acc.item(), "n_clamped": float(n_clamped)}

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
               groups=None) -> Head:
    """Build a registered head by name; see the module docstring."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {sorted(HEADS)}")
    cls = HEADS[name]
    if not cls.tree and groups is not None:
        log.debug("build_head: head %r has no tree; groups ignored", name)
    kw = dict(feat_dim=feat_dim, theta=theta, depth=depth, hidden=hidden)
    if cls.tree:
        kw["groups"] = groups
    return cls(**kw)
