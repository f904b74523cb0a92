"""DD heads: the trainer reports score = predicted completeness x the query's difficulty.

The heads regress completeness = score / difficulty and never see difficulty (train_head/heads.py);
the multiplication happens when the trainer evaluates. This test rebuilds every test prediction of a
trained run from its run folder alone (model_selected.pt, groups.json, the exemplar ids in
predictions.csv, the cache) and checks that predictions.csv holds the head's completeness times the
query's difficulty. The cache's difficulties are 2.0 .. 3.5, far from 1, so a missing (or doubled)
multiplication cannot pass. Parametrised over every registered dd head.
"""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from cache import load_cache
from tests._cachefixture import learnable_cache
from train_head.config import resolve_config
from train_head.heads import HEADS, build_head
from train_head.trainer import train

DD_HEADS = sorted(n for n, c in HEADS.items() if c.dd and not c.judges)   # musdl: tests/test_train_head_sdl.py
SMALL = dict(depth=3, hidden=32, voters=4, batch_size=16, epochs=3, threads=1)


@pytest.fixture(scope="module")
def dd_cache(tmp_path_factory):
    return learnable_cache(tmp_path_factory.mktemp("dd") / "d.h5", n=48, dim=16, seed=2, dd=True,
                           dataset="mtl_aqa")


def test_there_are_dd_heads():
    assert DD_HEADS, "no dd head registered"


@pytest.mark.parametrize("name", DD_HEADS)
def test_predictions_are_completeness_times_difficulty(dd_cache, tmp_path, name):
    cfg = resolve_config("mtl_aqa_dd", cache=str(dd_cache), out=str(tmp_path), head=name, **SMALL)
    run = train(cfg, progress=False)
    conf = json.loads((run / "config.json").read_text())
    head_cls = HEADS[name]
    groups = json.loads((run / "groups.json").read_text())["groups"] if head_cls.tree else None
    c = load_cache(dd_cache)
    feats = torch.from_numpy(c.mean_over_clips()[:, c.test_view_index])          # (N, D) float32
    head = build_head(name, feat_dim=feats.shape[1], theta=float(conf["theta"]), depth=int(conf["depth"]),
                      hidden=int(conf["hidden"]), groups=groups)
    head.load_state_dict(torch.load(run / "model_selected.pt", map_location="cpu", weights_only=True))
    head.eval()
    pos = {v: i for i, v in enumerate(c.video_ids)}
    completeness = c.scores / c.difficulty

    p = pd.read_csv(run / "predictions.csv", keep_default_na=False)
    assert len(p) >= 5
    diff = p["difficulty"].to_numpy(float)
    assert np.all(diff >= 2.0), diff                         # far from 1: the factor is visible
    for row, d in zip(p.itertuples(), diff):
        q = torch.from_numpy(np.array([pos[row.video_id]]))
        with torch.no_grad():
            if head_cls.pairwise:
                ex = np.array([pos[v] for v in row.exemplars.split()])
                t_e = torch.from_numpy(completeness[ex][None]).float()
                pv = head.predict(feats[q], feats[torch.from_numpy(ex)][None], t_e).per_voter[0].double().numpy()
                got_pv = np.array(row.exemplar_preds.split(), dtype=float)
                np.testing.assert_allclose(got_pv, pv * d, rtol=1e-4, atol=1e-3)
                comp = pv.mean()
            else:
                comp = float(head.predict(feats[q]).target[0])
        assert row.pred == pytest.approx(comp * d, rel=1e-4, abs=1e-3), (row.video_id, comp, d)
