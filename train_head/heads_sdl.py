"""Score-distribution heads: USDL and MUSDL (Tang et al., "Uncertainty-aware Score Distribution Learning
for Action Quality Assessment", CVPR 2020), on the cached video feature (the mean over clips).

Both are non-pairwise: each video's feature alone gives a distribution over score bins.

``usdl``: one distribution over the video's score.

* Bins: ``bins = 101`` centres ``c_k = k * theta / (bins - 1)``, k = 0..100, spread evenly over the score
  range ``[0, theta]``; theta is the config's score range (AQA-7 100, JIGSAWS 30, MTL-AQA 104.5 with the
  preset ``mtl_aqa/usdl``: its highest final score). A training score outside ``[0, theta]`` is refused
  before the run starts (``target_problem``); validation/test predictions cannot leave the range.
* Target: a Gaussian centred on the true score with a fixed standard deviation of ``sigma = 5`` bins
  (5 % of theta: 5.2 points on MTL-AQA), evaluated at the bin centres and normalised to sum to 1.
* Network: MLP feat_dim -> hidden -> hidden/2 -> bins (ReLU), log-softmax over the bins.
* Loss: the KL divergence KL(target || predicted), summed over the bins, mean over the videos.

``musdl``: one distribution per judge (``n_judges``: 7 on MTL-AQA, 5 on FineDiving; the trainer reads
it from the cache's ``judge_scores``).

* Bins: 21 centres 0, 0.5, ..., 10: judges award half points from 0 to 10, so the range is fixed and
  theta is not used. Target per judge: the Gaussian above, ``sigma = 5`` bins (2.5 points).
* Network: one MLP as above per judge (independent weights, computed as batched matrix products).
* Loss: the sum over judges of each judge's KL divergence, mean over the videos.
* Prediction: each judge's score, sorted; the highest and lowest are dropped and the middle three
  summed, as diving's rules do (7 judges: the two highest and two lowest dropped; 5 judges: one of
  each; MTL-AQA's final score is that sum times the difficulty). The head's target is therefore the sum
  = score / difficulty: it is a ``dd`` head and the trainer multiplies by the query's difficulty.

Prediction = the centre of the most probable bin (argmax), as the published method does, and because
the target's mode is the true score everywhere while its mean is not: the Gaussian is cut off at the
ends of the range, so its mean is pulled inwards (a judge's 9.5 becomes a target mean of 7.96 with 21
bins and sigma 5 bins; a score of 0 under usdl becomes 3.7 bins), which would bias the predictions of
the best and worst dives. For musdl the argmax also lands on the judges' own half-point grid. The cost
is quantisation (usdl: steps of theta/100, so some predictions tie). ``prediction="mean"`` gives the
distribution's mean instead (continuous, biased at the ends as above).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train_head.head_base import Head, Prediction, mlp_layers, register_head
from train_head.tree import NodeLinear

__all__ = ["USDLHead", "MUSDLHead", "gaussian_targets", "judge_matrix", "counted_judges", "n_judges_of",
           "USDL_BINS", "JUDGE_BINS", "JUDGE_MAX", "SIGMA_BINS", "COUNTED_JUDGES", "PREDICTIONS"]

USDL_BINS = 101            # bins over [0, theta]
JUDGE_BINS = 21            # 0, 0.5, ..., 10
JUDGE_MAX = 10.0           # a judge's award lies in [0, JUDGE_MAX]
SIGMA_BINS = 5.0           # the target Gaussian's standard deviation, in bins
COUNTED_JUDGES = 3         # the middle three judges count
PREDICTIONS = ("argmax", "mean")


def gaussian_targets(t: torch.Tensor, centres: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian of standard deviation `sigma` centred on each target, at the bin `centres`, normalised:
    t (...) -> (..., K). Computed as a softmax of -z^2/2, so a target far outside the bins stays finite."""
    z = (centres - t.to(centres.dtype).unsqueeze(-1)) / sigma
    return torch.softmax(-0.5 * z * z, dim=-1)


def counted_judges(n_judges: int) -> slice:
    """The positions, in the sorted awards, of the judges that count (the middle three)."""
    lo = (n_judges - COUNTED_JUDGES) // 2
    return slice(lo, lo + COUNTED_JUDGES)


def judge_matrix(extras: Sequence[Mapping]) -> np.ndarray | None:
    """(N, J) float64 judges' scores from each video's `extra["judge_scores"]` (the MTL-AQA reader's
    key), or `extra["counted_awards"]` where a reader gives it (FineDiving: panels of 7, 5 and 3 awards
    reduced to the 3 that make the score, data.finediving.counted_awards); J = the longest list, rows with
    fewer, unreadable or no scores are NaN-padded; None when no video has any."""
    rows = [(e.get("counted_awards") or e.get("judge_scores")) if isinstance(e, Mapping) else None
            for e in extras]
    vals: list[np.ndarray | None] = []
    for r in rows:
        try:
            v = np.asarray(r, dtype=np.float64).ravel() if r is not None else None
        except (TypeError, ValueError):
            v = None
        vals.append(v if v is not None and v.size else None)
    n_j = max((v.size for v in vals if v is not None), default=0)
    if not n_j:
        return None
    out = np.full((len(vals), n_j), np.nan)
    for i, v in enumerate(vals):
        if v is not None:
            out[i, :v.size] = v
    return out


def n_judges_of(state: Mapping[str, torch.Tensor], hidden: int) -> int:
    """The number of judges a saved musdl state dict was trained with (its first layer is (D, J*hidden)),
    for rebuilding the head from a run folder: ``build_head("musdl", ..., n_judges=n_judges_of(sd, H))``."""
    return int(state["w1"].shape[1]) // int(hidden)


class _DistributionHead(Head):
    """Shared parts: bin centres, the Gaussian targets, the KL loss and the prediction rule."""
    build_keys = ("bins", "sigma", "prediction")
    n_bins: int
    span: float | None = None      # the range is [0, span]; None: [0, theta]

    def __init__(self, *, bins: int | None = None, sigma: float = SIGMA_BINS, prediction: str = "argmax", **kw):
        super().__init__(**kw)
        if prediction not in PREDICTIONS:
            raise ValueError(f"{self.name}: prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.n_bins = int(bins or self.n_bins)
        self.span = float(self.span if self.span is not None else self.theta)
        if self.n_bins < 2 or not sigma > 0:
            raise ValueError(f"{self.name}: need bins >= 2 and sigma > 0, got {bins}, {sigma}")
        self.sigma_bins, self.prediction = float(sigma), prediction
        self.register_buffer("centres", torch.linspace(0.0, self.span, self.n_bins, dtype=torch.float64)
                             .to(torch.get_default_dtype()), persistent=False)
        self.sigma = self.sigma_bins * self.span / (self.n_bins - 1)          # in score units

    def _kl(self, logq: torch.Tensor, t: torch.Tensor):
        """Mean over videos (first dimension) of the KL divergence summed over everything else."""
        p = gaussian_targets(t, self.centres, self.sigma).to(logq.dtype)
        kl = F.kl_div(logq, p, reduction="sum") / max(1, logq.shape[0])
        return kl, {"loss": kl.detach(), "kl": kl.detach()}

    def _point(self, logq: torch.Tensor) -> torch.Tensor:
        """(..., K) log-probabilities -> (...) the predicted value (argmax bin's centre, or the mean)."""
        if self.prediction == "argmax":
            return self.centres[logq.argmax(-1)]
        return (logq.exp() * self.centres).sum(-1)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, bins={self.n_bins}, range=[0, {self.span:g}], "
                f"sigma={self.sigma_bins:g} bins, prediction={self.prediction}")


@register_head("usdl")
class USDLHead(_DistributionHead):
    """USDL: one score distribution per video over ``bins`` bins on [0, theta] (module docstring)."""
    n_bins = USDL_BINS

    def __init__(self, **kw):
        super().__init__(**kw)
        self.mlp = mlp_layers(self.feat_dim, self.hidden, self.n_bins)

    @classmethod
    def target_problem(cls, targets, theta: float) -> str | None:
        t = np.asarray(targets, dtype=np.float64)
        lo, hi = float(np.min(t)), float(np.max(t))
        if lo < 0 or hi > theta:
            return (f"head 'usdl' spreads the score over bins on [0, theta={theta:g}], but the training scores "
                    f"range over {lo:g}..{hi:g}; set theta to the score range, at least {math.ceil(hi * 10) / 10:g} "
                    "(--set theta=...; MTL-AQA: --preset mtl_aqa/usdl)")
        return None

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """(B, D) -> log-probabilities over the bins (B, bins)."""
        return F.log_softmax(self.mlp(f), dim=-1)

    def loss(self, f_q, t_q, f_e=None, t_e=None):
        return self._kl(self(f_q), t_q)

    def predict(self, f_q, f_e=None, t_e=None, mask=None) -> Prediction:
        return Prediction(self._point(self(f_q)))


@register_head("musdl")
class MUSDLHead(_DistributionHead):
    """MUSDL: one distribution per judge over 0, 0.5, ..., 10; predicts the sum of the middle three
    judges (completeness; module docstring). Targets ``t`` are the judges' scores (B, n_judges)."""
    dd = True
    judges = True
    build_keys = _DistributionHead.build_keys + ("n_judges",)
    n_bins = JUDGE_BINS
    span = JUDGE_MAX

    def __init__(self, *, n_judges: int = 7, **kw):
        super().__init__(**kw)
        self.n_judges = int(n_judges)
        if self.n_judges < COUNTED_JUDGES or self.n_judges % 2 == 0:
            raise ValueError(f"musdl: needs an odd number of judges >= {COUNTED_JUDGES} (the middle three "
                             f"count), got {n_judges}")
        J, D, H, H2 = self.n_judges, self.feat_dim, self.hidden, max(self.hidden // 2, 1)
        # first layer of every judge's MLP as one (D, J*H) matrix: one product for all judges
        self.w1 = nn.Parameter(torch.empty(D, J * H))
        self.b1 = nn.Parameter(torch.empty(J * H))
        bound = 1.0 / math.sqrt(D)                       # nn.Linear's default init, per judge
        nn.init.uniform_(self.w1, -bound, bound)
        nn.init.uniform_(self.b1, -bound, bound)
        self.layer2 = NodeLinear(J, H, H2)
        self.layer3 = NodeLinear(J, H2, self.n_bins)

    @classmethod
    def target_problem(cls, targets, theta: float) -> str | None:
        t = np.asarray(targets, dtype=np.float64)
        if t.ndim != 2:
            return "head 'musdl' needs the judges' scores as targets"
        if t.size and (t.min() < 0 or t.max() > JUDGE_MAX):
            return (f"head 'musdl' expects judges' scores in [0, {JUDGE_MAX:g}] (diving's awards), but they "
                    f"range over {t.min():g}..{t.max():g}; use 'usdl' or 'mlp_dd' for this dataset")
        return None

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """(B, D) -> log-probabilities per judge (B, n_judges, bins)."""
        B = f.shape[0]
        h = torch.addmm(self.b1, f, self.w1).relu_().view(B, self.n_judges, -1).transpose(0, 1)   # (J, B, H)
        h = self.layer2.forward_nodes_first(h).relu_()                                           # (J, B, H2)
        out = self.layer3.forward_nodes_first(h).transpose(0, 1)                                 # (B, J, K)
        return F.log_softmax(out, dim=-1)

    def loss(self, f_q, t_q, f_e=None, t_e=None):
        if t_q.ndim != 2 or t_q.shape[1] != self.n_judges:
            raise ValueError(f"musdl: targets must be the judges' scores (B, {self.n_judges}), "
                             f"got shape {tuple(t_q.shape)}")
        return self._kl(self(f_q), t_q)

    def judge_scores(self, f_q: torch.Tensor) -> torch.Tensor:
        """(B, n_judges) each judge's predicted award."""
        return self._point(self(f_q))

    def predict(self, f_q, f_e=None, t_e=None, mask=None) -> Prediction:
        awards = self.judge_scores(f_q).sort(dim=1).values
        return Prediction(awards[:, counted_judges(self.n_judges)].sum(1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, judges={self.n_judges}"
