"""The base of every stage-two head: the registry, ``Prediction`` and the ``Head`` class with its pair
and voting helpers. The heads themselves live in ``train_head/heads.py`` (MLP, contrastive MLP, CoRe)
and ``train_head/heads_sdl.py`` (USDL, MUSDL); import them from ``train_head.heads``.
"""
from __future__ import annotations

from typing import Callable, ClassVar, NamedTuple

import torch
from torch import nn

__all__ = ["HEADS", "Head", "Prediction", "register_head", "mlp_layers"]

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


def mlp_layers(in_dim: int, hidden: int, out_dim: int = 1) -> nn.Sequential:
    """in_dim -> hidden -> hidden // 2 -> out_dim with ReLU (1024 -> 256 -> 128 -> 1 by default)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(),
                         nn.Linear(hidden, max(hidden // 2, 1)), nn.ReLU(),
                         nn.Linear(max(hidden // 2, 1), out_dim))


class Head(nn.Module):
    """Base class. Subclasses set the class flags and implement ``loss`` and ``predict``."""
    name: ClassVar[str] = ""
    pairwise: ClassVar[bool] = False   # needs exemplars (contrastive heads)
    dd: ClassVar[bool] = False         # targets are completeness = score / difficulty; score = target * difficulty
    tree: ClassVar[bool] = False       # has leaves/groups
    judges: ClassVar[bool] = False     # targets are the judges' scores (B, J), not one score per video
    # keyword arguments of build_head this head takes besides feat_dim/theta/depth/hidden
    build_keys: ClassVar[tuple[str, ...]] = ()

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

    @classmethod
    def target_problem(cls, targets, theta: float) -> str | None:
        """What is wrong with these training targets for this head (None: nothing); the trainer refuses
        the run with it before anything is written. Heads with a fixed target range override it."""
        return None

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
