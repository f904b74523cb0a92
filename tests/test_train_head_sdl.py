"""USDL and MUSDL (train_head/heads_sdl.py): targets, loss, the prediction rules, the judges' scores from
the cache, training end to end on a tiny learnable cache, and the refusals before anything is written."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cache import load_cache
from cache.store import VideoRecord, write_cache
from tests._cachefixture import DEFAULT_VIEWS, learnable_cache, learnable_features
from train_head.config import resolve_config
from train_head.heads import build_head
from train_head.heads_sdl import counted_judges, gaussian_targets, judge_matrix, n_judges_of
from train_head.protocol import TrainError
from train_head.trainer import load_cache_data, train

SMALL = dict(hidden=32, batch_size=16, threads=1)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def judge_cache(path, n=90, n_judges=7, dim=16, seed=0, with_judges=True):
    """A cache whose features carry each dive's execution; 7 judges award half points around it; score =
    sum of the middle three x difficulty (as MTL-AQA's final scores are made)."""
    rng = np.random.default_rng(seed)
    execution = rng.uniform(3.0, 9.5, size=n)
    judges = np.clip(np.round((execution[:, None] + rng.normal(0, 0.3, (n, n_judges))) * 2) / 2, 0, 10)
    difficulty = rng.choice([2.0, 2.5, 3.0, 3.5], size=n)
    scores = np.sort(judges, axis=1)[:, counted_judges(n_judges)].sum(1) * difficulty
    feats = learnable_features(execution * 10, n_views=3, n_clips=2, dim=dim, seed=seed, noise=0.2)
    split = np.where(rng.random(n) < 0.3, "test", "train")
    recs = [VideoRecord(i, f"d{i:03d}", feats[i], float(scores[i]), float(difficulty[i]), str(split[i]),
                        "mtl_aqa", {}, {"judge_scores": judges[i].tolist()} if with_judges else {})
            for i in range(n)]
    attrs = {"dataset": "mtl_aqa", "backbone": "i3d", "weights_source": "random", "weights_sha256": "random",
             "normalization": "imagenet", "clip_rule": json.dumps({"T": 103, "n_clips": 2, "clip_len": 16}),
             "frame_config": "{}", "views": DEFAULT_VIEWS[:3], "code_version": "test"}
    return write_cache(path, recs, [], attrs)


@pytest.fixture(scope="module")
def jcache(tmp_path_factory):
    return judge_cache(tmp_path_factory.mktemp("judges") / "j.h5")


# ------------------------------------------------------------------------------------- the pieces
def test_gaussian_targets_are_normalised_and_peak_at_the_score():
    centres = torch.linspace(0, 10, 21, dtype=torch.float64)
    p = gaussian_targets(torch.tensor([0.0, 7.5, 10.0, 30.0], dtype=torch.float64), centres, 2.5)
    torch.testing.assert_close(p.sum(-1), torch.ones(4, dtype=torch.float64))
    assert p.argmax(-1).tolist() == [0, 15, 20, 20]                 # the mode is the score (or the edge)
    assert torch.isfinite(p).all()                                  # far outside the range: still finite
    z = (centres - 7.5) / 2.5
    torch.testing.assert_close(p[1], torch.exp(-z * z / 2) / torch.exp(-z * z / 2).sum())
    # the mean of a target cut off at the range's end is pulled inwards: why the prediction is the argmax
    assert float((p[2] * centres).sum()) < 9.0


def test_usdl_loss_is_the_kl_divergence_and_bins_span_theta():
    torch.manual_seed(0)
    h = build_head("usdl", feat_dim=6, hidden=16, theta=50.0)
    assert h.centres[0] == 0 and h.centres[-1] == 50.0 and len(h.centres) == 101
    assert h.sigma == pytest.approx(5 * 50.0 / 100)
    f, t = torch.randn(4, 6), torch.tensor([0.0, 12.3, 25.0, 50.0])
    loss, stats = h.loss(f, t)
    logq = h(f)
    p = gaussian_targets(t, h.centres, h.sigma)
    kl = (torch.xlogy(p, p) - p * logq).sum(1).mean()
    torch.testing.assert_close(loss, kl.float(), rtol=1e-4, atol=1e-5)
    assert stats["kl"] == pytest.approx(loss.item())


def _fixed_distribution(head, logits):
    """Zero every weight and set the last bias: the head then outputs softmax(logits) for any input."""
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        if head.name == "usdl":
            head.mlp[-1].bias.copy_(logits)
        else:
            head.layer3.bias.copy_(logits)


def test_usdl_prediction_argmax_by_default_mean_on_request():
    logits = torch.full((101,), -30.0)
    logits[40], logits[60] = 2.0, 1.0                                # bins 40 (most probable) and 60
    for pred, expect in (("argmax", 40.0), ("mean", None)):
        h = build_head("usdl", feat_dim=3, hidden=8, theta=100.0, prediction=pred)
        _fixed_distribution(h, logits)
        out = h.predict(torch.randn(2, 3)).target
        if expect is None:
            q = torch.softmax(logits, 0)
            expect = float((q * torch.linspace(0, 100, 101)).sum())
        torch.testing.assert_close(out, torch.full((2,), expect), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="prediction"):
        build_head("usdl", prediction="median")


@pytest.mark.parametrize("awards,expect", [([9.5, 3.0, 7.0, 7.5, 8.0, 10.0, 6.5], 7.0 + 7.5 + 8.0),
                                           ([5.0, 9.0, 2.0, 6.0, 8.5], 5.0 + 6.0 + 8.5)])
def test_musdl_drops_highest_and_lowest_judges(awards, expect):
    """7 judges: the two highest and two lowest go; 5 judges: one of each; the middle three are summed."""
    h = build_head("musdl", feat_dim=3, hidden=8, n_judges=len(awards))
    logits = torch.full((len(awards), 21), -30.0)
    for j, a in enumerate(awards):
        logits[j, int(a * 2)] = 5.0
    _fixed_distribution(h, logits)
    f = torch.randn(3, 3)
    torch.testing.assert_close(h.judge_scores(f), torch.tensor(awards).expand(3, -1))
    torch.testing.assert_close(h.predict(f).target, torch.full((3,), expect))
    with pytest.raises(ValueError, match="odd number of judges"):
        build_head("musdl", n_judges=6)
    assert n_judges_of(h.state_dict(), 8) == len(awards)


def test_musdl_judges_are_independent_networks():
    """Judge j's output depends only on judge j's weights (one batched product, no mixing)."""
    torch.manual_seed(0)
    h = build_head("musdl", feat_dim=5, hidden=8, n_judges=5)
    f = torch.randn(4, 5)
    before = h(f)
    with torch.no_grad():
        h.layer3.weight[2].add_(torch.randn(h.layer3.weight[2].shape))
        h.w1[:, 8 * 1:8 * 2].add_(1.0)                                  # judge 1's first layer
    after = h(f)
    changed = [not torch.allclose(before[:, j], after[:, j]) for j in range(5)]
    assert changed == [False, True, True, False, False]


def test_judge_matrix_reads_extra():
    m = judge_matrix([{"judge_scores": [1, 2, 3]}, {}, {"judge_scores": [4.5, 5]}, {"judge_scores": "x"}])
    assert m.shape == (4, 3)
    np.testing.assert_array_equal(m[0], [1, 2, 3])
    assert np.isnan(m[1]).all() and np.isnan(m[2, 2]) and np.isnan(m[3]).all()
    assert judge_matrix([{}, {"other": 1}]) is None


# ---------------------------------------------------------------------------------------- training
def test_cache_data_carries_the_judges(jcache):
    data = load_cache_data(jcache, "mtl_aqa")
    c = load_cache(jcache)
    assert data.judges.shape == (len(c.video_ids), 7)
    np.testing.assert_array_equal(data.judges[5], c.extra[5]["judge_scores"])


def test_musdl_learns_and_reports_middle_judges_times_difficulty(jcache, tmp_path):
    cfg = resolve_config("mtl_aqa_dd", cache=str(jcache), out=str(tmp_path), head="musdl", epochs=30, **SMALL)
    run = train(cfg, progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] and summary["voters"] == 0
    assert summary["final"]["rho"] > 0.8, summary["final"]
    # rebuild the final model's predictions from the run folder: middle-three sum x the query's difficulty
    c = load_cache(jcache)
    feats = torch.from_numpy(c.mean_over_clips()[:, c.test_view_index])
    head = build_head("musdl", feat_dim=feats.shape[1], hidden=cfg.hidden, n_judges=7)
    head.load_state_dict(torch.load(run / "model_final.pt", map_location="cpu", weights_only=True))
    head.eval()
    p = pd.read_csv(run / "predictions.csv", keep_default_na=False)
    pos = np.array([list(c.video_ids).index(v) for v in p["video_id"]])
    with torch.no_grad():
        awards = head.judge_scores(feats[pos]).sort(1).values.numpy()
    expect = awards[:, 2:5].sum(1) * c.difficulty[pos]
    np.testing.assert_allclose(p["pred_final"].to_numpy(float), expect, rtol=1e-5)
    assert np.all(c.difficulty[pos] >= 2.0)                        # the factor is visible


def test_usdl_learns_on_a_plain_cache(tmp_path):
    path = learnable_cache(tmp_path / "u.h5", n=100, dim=16, seed=3)
    cfg = resolve_config("synthetic", cache=str(path), out=str(tmp_path / "runs"), head="usdl", epochs=30, **SMALL)
    summary = json.loads((train(cfg, progress=False) / "summary.json").read_text())
    assert summary["final"]["rho"] > 0.8, summary["final"]


def test_musdl_refuses_a_cache_without_judges_before_writing(tmp_path):
    path = judge_cache(tmp_path / "nj.h5", n=30, with_judges=False)
    out = tmp_path / "runs"
    cfg = resolve_config("mtl_aqa_dd", cache=str(path), out=str(out), head="musdl", epochs=1, **SMALL)
    with pytest.raises(TrainError, match="has no judge scores.*use 'usdl'"):
        train(cfg, progress=False)
    assert not out.exists()                                         # nothing written


def test_usdl_refuses_scores_beyond_theta_before_writing(tmp_path):
    path = learnable_cache(tmp_path / "u.h5", n=30, dim=8, seed=1)      # scores up to ~100
    out = tmp_path / "runs"
    cfg = resolve_config("synthetic", cache=str(path), out=str(out), head="usdl", theta=50.0, epochs=1, **SMALL)
    with pytest.raises(TrainError, match=r"theta=50.*at least"):
        train(cfg, progress=False)
    assert not out.exists()


def test_musdl_refuses_judges_outside_0_10(tmp_path):
    path = judge_cache(tmp_path / "j.h5", n=30)
    c = load_cache(path)
    recs = [VideoRecord(i, v, c.features[i], float(c.scores[i]), float(c.difficulty[i]), c.split[i], c.cls[i],
                        {}, {"judge_scores": [x * 2 for x in c.extra[i]["judge_scores"]]})
            for i, v in enumerate(c.video_ids)]
    bad = write_cache(tmp_path / "bad.h5", recs, [], dict(c.attrs))
    cfg = resolve_config("mtl_aqa_dd", cache=str(bad), out=str(tmp_path / "r"), head="musdl", epochs=1, **SMALL)
    with pytest.raises(TrainError, match=r"\[0, 10\]"):
        train(cfg, progress=False)


def test_kl_matches_torch_for_musdl():
    torch.manual_seed(1)
    h = build_head("musdl", feat_dim=4, hidden=8, n_judges=5)
    f, t = torch.randn(3, 4), torch.randint(0, 21, (3, 5)).float() / 2
    loss, _ = h.loss(f, t)
    p = gaussian_targets(t, h.centres, h.sigma)
    expect = F.kl_div(h(f), p, reduction="sum") / 3                 # sum over judges and bins, mean over videos
    torch.testing.assert_close(loss, expect)
    assert math.isclose(h.sigma, 2.5)


# ------------------------------------------------------------------------------------------ presets
def test_presets_for_the_distribution_heads_and_the_reference_schedules():
    from train_head.presets import PRESETS, default_preset

    assert default_preset("mtl_aqa", "musdl") == "mtl_aqa_dd"              # a dd head
    assert default_preset("mtl_aqa", "usdl") == "mtl_aqa/usdl"
    assert resolve_config("mtl_aqa/usdl", cache="c.h5").theta == 104.5
    for name, bs in [("mtl_aqa/reference", 1), ("mtl_aqa_dd/reference", 1), ("aqa7/reference", 2),
                     ("aqa7/gym_vault/reference", 2)]:
        cfg = resolve_config(name, cache="c.h5")
        plain = resolve_config(name.rsplit("/", 1)[0], cache="c.h5")
        assert (cfg.batch_size, cfg.grad_accum) == (bs, 2), name
        assert cfg.replace(batch_size=plain.batch_size, grad_accum=plain.grad_accum) == plain, name
    assert sum(k.startswith("aqa7/") and k.endswith("/reference") for k in PRESETS) == 1 + 6   # + per class
    assert default_preset("finediving", "musdl") == "finediving_dd" and default_preset("finediving", "usdl") == "finediving"
