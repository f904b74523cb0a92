"""Prediction of a fixed query set (validation or test videos) against a fixed voter draw.

Every evaluation of a run uses the same draw (`Streams.voters()`), so epochs are compared on the same
exemplars. All queries x voters go through the head in a few large batches of `INFER_PAIRS` pairs.
"""
from __future__ import annotations

import numpy as np
import torch

from train_head.metrics import all_metrics
from train_head.pairs import draw_voters
from train_head.protocol import NAN_METRICS

# Query x voter pairs per inference batch: bounds memory (B*M*(2D+1) floats) while keeping batches big.
INFER_PAIRS = 16384


class Evaluator:
    """Predicts a fixed query set against a fixed voter draw from the training pool (module docstring)."""

    def __init__(self, head_cls, q_feats: torch.Tensor, q_scores: np.ndarray, q_diff: np.ndarray | None,
                 pool_feats: torch.Tensor, pool_t: torch.Tensor, pool_diff: np.ndarray | None, voters: int,
                 rng: np.random.Generator):
        self.q_feats, self.q_scores, self.q_diff = q_feats, q_scores, q_diff    # (B, D), (B,), (B,)|None
        self.pool_feats, self.pool_t = pool_feats, pool_t                        # (P, D), (P,)
        self.pairwise, self.dd = head_cls.pairwise, head_cls.dd
        self.idx = self.mask = None
        if self.pairwise and len(q_scores):
            idx, mask = draw_voters(pool_diff if self.dd else None, q_diff if self.dd else None,
                                    voters, rng, n_pool=len(pool_t), n_query=len(q_scores))
            dev = q_feats.device
            self.idx = torch.from_numpy(idx).to(dev)                             # (B, M)
            self.mask = torch.from_numpy(mask).to(dev)                           # (B, M)
        self._scale = (torch.from_numpy(q_diff).to(q_feats) if self.dd else None)

    def __len__(self) -> int:
        return len(self.q_scores)

    @torch.inference_mode()
    def predict(self, head) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(score (B,), per-voter score (B, M) | None, leaf (B, M) | None) on the evaluation scale."""
        was_training = head.training
        head.eval()
        B = len(self)
        if not self.pairwise:
            step = INFER_PAIRS
            t = torch.cat([head.predict(self.q_feats[s:s + step]).target for s in range(0, B, step)])
            pv = leaf = None
        else:
            M = self.idx.shape[1]
            step = max(1, INFER_PAIRS // M)
            outs, pvs, leaves = [], [], []
            for s in range(0, B, step):
                idx = self.idx[s:s + step]
                # pool indices, not gathered features: the head projects each pool video once
                p = head.predict_indexed(self.q_feats[s:s + step], self.pool_feats, self.pool_t, idx,
                                         self.mask[s:s + step])
                outs.append(p.target)
                pvs.append(p.per_voter)
                if p.leaf is not None:
                    leaves.append(p.leaf)
            t, pv = torch.cat(outs), torch.cat(pvs)
            leaf = torch.cat(leaves) if leaves else None
        if self.dd:
            t = t * self._scale
            pv = pv * self._scale[:, None] if pv is not None else None
        head.train(was_training)
        return (t.double().cpu().numpy(), None if pv is None else pv.double().cpu().numpy(),
                None if leaf is None else leaf.cpu().numpy())

    def metrics(self, head) -> dict[str, float]:
        if not len(self):
            return dict(NAN_METRICS)
        return all_metrics(self.predict(head)[0], self.q_scores)



def predictions_frame(labels, unit, ev: Evaluator, sel, fin):
    """predictions.csv's table: one row per test video with the selected and final model's score and
    the exemplars it was compared with (`sel`/`fin` = Evaluator.predict results)."""
    import pandas as pd

    (sel_pred, sel_pv, _), (fin_pred, fin_pv, _) = sel, fin
    pool_ids = labels.video_ids[unit.train]
    n = len(unit.test)
    if ev.idx is not None:
        idx, mask = ev.idx.cpu().numpy(), ev.mask.cpu().numpy()
        exemplars = [" ".join(pool_ids[idx[i][mask[i]]]) for i in range(n)]
        ex_sel = [" ".join(repr(float(x)) for x in sel_pv[i][mask[i]]) for i in range(n)]
        ex_fin = [" ".join(repr(float(x)) for x in fin_pv[i][mask[i]]) for i in range(n)]
        n_voters = mask.sum(1)
    else:
        exemplars = ex_sel = ex_fin = [""] * n
        n_voters = np.zeros(n, dtype=int)
    return pd.DataFrame({
        "video_id": labels.video_ids[unit.test], "true": labels.scores[unit.test], "pred": sel_pred,
        "pred_final": fin_pred, "difficulty": labels.difficulty[unit.test], "n_voters": n_voters,
        "exemplars": exemplars, "exemplar_preds": ex_sel, "exemplar_preds_final": ex_fin,
    })
