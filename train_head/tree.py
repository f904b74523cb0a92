"""The group-aware regression tree of CoRe (docs/METHOD.md §4).

::

    tree = RegressionTree(in_dim=2049, hidden=256, depth=5)
    leaf_logp, leaf_reg = tree(x)          # x (B, 2049) -> (B, 16), (B, 16)

Structure: ``Linear(in_dim, hidden) + ReLU`` gives the root's hidden vector. Level ``l`` (``0 <= l < D-1``)
has ``2**l`` nodes; every node owns a 2-way classifier ``Linear(hidden, 2)`` and a split
``Linear(hidden, 2*hidden) + ReLU`` whose output halves are its two children's hidden vectors (first half
= left child = child ``2i``). Log-probabilities add down the tree,
``logp(child) = logp(parent) + log_softmax(classifier(parent))``, so ``logsumexp`` over the leaves is 0.
Each of the ``L = 2**(D-1)`` leaves has a scalar regressor ``Linear(hidden, 1)``.

All nodes of a level run at once as one batched matrix product over per-node weight tensors
``(n_nodes, in, out)``; there is no Python loop over nodes (only over the D-1 levels), and no grouped
convolution (measured ~6x slower on CPU). Inside the tree the activations keep the nodes as the first
dimension, ``(n_nodes, B, hidden)``, so every level is one ``torch.baddbmm`` (bias fused) on contiguous
per-node matrices; the only copy per level is the one that interleaves the two children of each node
(``(n, B, 2, H)`` -> ``(2n, B, H)``). An einsum over ``(B, n, H)`` permuted its input and output every level
(about 2x slower on CPU).

``forward_hidden(h0)`` runs the tree from the root's hidden vector (after the stem's ReLU); the heads
use it at inference to run the stem as a sum of per-video projections (see ``heads.CoReHead``).

Leaf regressors: linear, as in the official CoRe code (each leaf's regressor is a plain linear layer
whose output is compared with the in-leaf position by a squared error; nothing squashes it), so
``leaf_activation="identity"`` is the default. The in-leaf position target lies in [0, 1] and inference
maps the output to ``a + (b - a) * r``; a linear ``r`` may fall slightly outside [0, 1], i.e. outside its
leaf's interval. ``leaf_activation="sigmoid"`` squashes ``r`` into (0, 1), which keeps every prediction
inside its leaf (this package's default before issue 14; runs trained with it record it in their config).

Init: every linear map (including each node's slice of the per-node tensors) uses PyTorch's
``nn.Linear`` default, i.e. weights and biases uniform in ``+-1/sqrt(fan_in)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RegressionTree", "NodeLinear", "LEAF_ACTIVATIONS"]

LEAF_ACTIVATIONS = ("identity", "sigmoid")     # the first is the default


class NodeLinear(nn.Module):
    """``n_nodes`` independent linear maps applied to ``(B, n_nodes, in_dim)`` -> ``(B, n_nodes, out_dim)``."""

    def __init__(self, n_nodes: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_nodes, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n_nodes, out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default init amounts to U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bni,nio->bno", h, self.weight) + self.bias

    def forward_nodes_first(self, h: torch.Tensor) -> torch.Tensor:
        """``(n_nodes, B, in_dim)`` -> ``(n_nodes, B, out_dim)`` (one baddbmm, bias fused)."""
        return torch.baddbmm(self.bias.unsqueeze(1), h, self.weight)


class RegressionTree(nn.Module):
    """Binary classification tree with per-leaf regressors; see the module docstring."""

    def __init__(self, in_dim: int, hidden: int = 256, depth: int = 5, leaf_activation: str = "identity"):
        super().__init__()
        if int(depth) < 2:
            raise ValueError(f"RegressionTree: depth must be >= 2 (got {depth})")
        if leaf_activation not in LEAF_ACTIVATIONS:
            raise ValueError(f"RegressionTree: leaf_activation must be one of {LEAF_ACTIVATIONS}, "
                             f"got {leaf_activation!r}")
        self.in_dim, self.hidden, self.depth = int(in_dim), int(hidden), int(depth)
        self.n_leaves = 2 ** (self.depth - 1)
        self.leaf_activation = leaf_activation
        self.stem = nn.Linear(self.in_dim, self.hidden)
        self.classifiers = nn.ModuleList(NodeLinear(2 ** l, self.hidden, 2) for l in range(self.depth - 1))
        self.splits = nn.ModuleList(NodeLinear(2 ** l, self.hidden, 2 * self.hidden)
                                    for l in range(self.depth - 1))
        self.regressors = NodeLinear(self.n_leaves, self.hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, in_dim) -> (leaf log-probabilities (B, L), leaf regressions (B, L))."""
        return self.forward_hidden(F.relu(self.stem(x)))

    def forward_hidden(self, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Root hidden vectors h0 (B, H) (the stem's output after ReLU) -> as ``forward``."""
        logp, h = self._internal(h0)
        n, B, H = h.shape
        s = self.splits[-1].forward_nodes_first(h).relu_()                             # (n, B, 2H)
        h = s.view(n, B, 2, H).transpose(1, 2).reshape(2 * n, B, H)                   # (L, B, H)
        reg = self.regressors.forward_nodes_first(h).squeeze(-1)     # (L, B)
        return logp, self._activate(reg.t().contiguous())

    def forward_at(self, h0: torch.Tensor, leaf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(leaf log-probabilities (B, L), regression of leaf ``leaf[b]`` only (B,)).

        Equal to ``logp, reg.gather(1, leaf[:, None])[:, 0]`` of ``forward_hidden`` up to float rounding,
        but the last split (half of the tree's work) runs only for the one leaf each row needs."""
        logp, h = self._internal(h0)
        return logp, self._leaf_regression(h, leaf)

    def forward_best(self, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(leaf log-probabilities (B, L), most probable leaf k (B,), its regression (B,)); inference."""
        logp, h = self._internal(h0)
        k = logp.argmax(1)
        return logp, k, self._leaf_regression(h, k)

    # --- pieces -----------------------------------------------------------------------------------
    def _activate(self, reg: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(reg) if self.leaf_activation == "sigmoid" else reg

    def _internal(self, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every classifier, and every split but the last: (leaf log-probs (B, L), hidden vectors of the
        leaves' parents, nodes first (L/2, B, H))."""
        B, H = h0.shape
        h = h0.unsqueeze(0)                                          # (1, B, H): nodes first
        logp = h0.new_zeros(1, B)                                    # (n, B) node log-probs
        last = len(self.classifiers) - 1
        for lvl, (cls, split) in enumerate(zip(self.classifiers, self.splits)):
            n = h.shape[0]
            step = F.log_softmax(cls.forward_nodes_first(h), dim=-1)                   # (n, B, 2)
            logp = (logp.unsqueeze(-1) + step).transpose(1, 2).reshape(2 * n, B)      # child 2i, 2i+1
            if lvl < last:
                s = split.forward_nodes_first(h).relu_()                               # (n, B, 2H)
                h = s.view(n, B, 2, H).transpose(1, 2).reshape(2 * n, B, H)           # (2n, B, H)
        return logp.t().contiguous(), h

    def _leaf_regression(self, h: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
        """Regression (after the activation) of leaf ``leaf[b]`` for every row b: (B,).

        h: the leaves' parents' hidden vectors, nodes first (L/2, B, H). Rows are sorted by parent and
        each parent present runs its split on its own rows only (one addmm); each row then keeps its
        leaf's half and its leaf's regressor. The other 7/8 of the last split (half of the tree's work)
        never run. Weights are taken with unbind (views; autograd stacks their gradients once) and the
        rows with one index_select, so no per-parent full-size gradient buffers."""
        n, B, H = h.shape
        if B == 0:
            return h.new_zeros(0)
        leaf = leaf.to(device=h.device, dtype=torch.long)
        order = torch.argsort(leaf, stable=True)
        ls = leaf[order]                                                         # sorted leaves
        parent = ls // 2
        counts = torch.bincount(parent, minlength=n).tolist()
        split = self.splits[-1]
        rows = h.reshape(n * B, H).index_select(0, parent * B + order)           # (B, H), by parent
        pieces = [torch.addmm(b_p, x_p, W_p)                                     # (c, 2H)
                  for x_p, W_p, b_p, c in zip(rows.split(counts), split.weight.unbind(0),
                                              split.bias.unbind(0), counts) if c]
        hs = torch.cat(pieces).relu_().view(B, 2, H)
        hl = hs.gather(1, (ls % 2).view(B, 1, 1).expand(B, 1, H)).squeeze(1)    # (B, H) the leaf's half
        reg = (hl * self.regressors.weight.squeeze(-1)[ls]).sum(1) + self.regressors.bias[ls, 0]
        return self._activate(torch.empty_like(reg).index_copy(0, order, reg))

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, hidden={self.hidden}, depth={self.depth}, leaves={self.n_leaves}, "
                f"leaf_activation={self.leaf_activation}")
