"""evaluate on run folders from real (tiny) training, and scoring a video file with a random-weights I3D.

    .venv/bin/python -m pytest tests/test_evaluate_pipeline.py -q

Caches come from tests/_cachefixture.py (features that carry the score); for scoring, one test video's
features in the cache are the random-init I3D's features of a video file this test writes, so that
`evaluate score` on that file must reproduce the trainer's own prediction for it.
"""
import json
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from evaluate.__main__ import cli
from evaluate.metrics import fisher_z_mean, spearman
from evaluate.plots import plot_run
from evaluate.score import ScoreError, score_video
from evaluate.tables import results_table
from tests._cachefixture import DEFAULT_VIEWS, learnable_cache, learnable_features, write_fake_cache

SEL = "val-selected"
TINY = dict(epochs=3, hidden=16, depth=3, device="cpu", batch_size=16)


def _train(cache, out, **kw):
    from train_head.config import resolve_config
    from train_head.trainer import train
    return train(resolve_config(None, cache=str(cache), out=str(out), **{**TINY, **kw}), progress=False)


# ------------------------------------------------------------------------------- tables on real runs
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    runs = tmp / "runs"
    aqa = learnable_cache(tmp / "aqa7.h5", n=48, dim=16, dataset="aqa7", classes=["diving", "gym_vault"])
    for c in ("diving", "gym_vault"):
        for seed in (0, 1):
            _train(aqa, runs, dataset="aqa7", cls=c, head="core", seed=seed)
    folds = [{"4fold": str((i // 2) % 2)} for i in range(40)]   # classes alternate, so folds go in pairs
    jig = learnable_cache(tmp / "jig.h5", n=40, dim=16, dataset="jigsaws", classes=["Suturing", "Knot_Tying"],
                          folds=folds)
    for task in ("Suturing", "Knot_Tying"):
        for f in ("0", "1"):
            _train(jig, runs, dataset="jigsaws", cls=task, protocol="4fold", fold=f, head="mlp", theta=30.0)
    return runs


def test_tables_from_trained_runs(trained):
    df, skipped = results_table([trained], n_boot=100)
    assert skipped == []
    sel = df[df["protocol"] == SEL]
    for c in ("diving", "gym_vault"):
        row = sel[(sel["class/fold"] == c)].iloc[0]
        summ = [json.loads((trained / "aqa7" / c / "core" / f"seed{k}" / "summary.json").read_text()) for k in (0, 1)]
        rhos = [s["selected"]["rho"] for s in summ]
        assert row["rho"] == pytest.approx(np.mean(rhos)) and row["n_runs"] == 2
        assert row["rho_std"] == pytest.approx(np.std(rhos, ddof=1))
        assert row["RL2x100"] == pytest.approx(100 * np.mean([s["selected"]["rl2"] for s in summ]))
        assert row["n_test"] == summ[0]["n_test"]
        # the trainer's summary and predictions.csv agree, so no mismatch note; the CI brackets rho
        assert "!=" not in row["note"]
        assert row["rho_ci_lo"] <= row["rho"] <= row["rho_ci_hi"]
    avg = sel[sel["class/fold"] == "avg (Fisher z, 2/6 classes)"].iloc[0]
    per_class = [sel[sel["class/fold"] == c]["rho"].iloc[0] for c in ("diving", "gym_vault")]
    assert avg["rho"] == pytest.approx(fisher_z_mean(per_class))
    assert math.isfinite(avg["rho_ci_lo"]) and avg["rho_ci_lo"] < avg["rho_ci_hi"]
    jig = sel[sel["dataset"] == "jigsaws"]
    labels = set(jig["class/fold"])
    assert {"Suturing 4fold fold 0", "Knot_Tying 4fold fold 1", "Suturing avg (Fisher z, 2 4fold folds)",
            "avg (Fisher z, 2 tasks x 2 4fold folds)"} <= labels
    folds = jig[jig["class/fold"].str.contains(" fold ")]["rho"]
    overall = jig[jig["class/fold"] == "avg (Fisher z, 2 tasks x 2 4fold folds)"]["rho"].iloc[0]
    assert overall == pytest.approx(fisher_z_mean(list(folds)))


def test_plots_from_trained_runs(trained):
    from PIL import Image
    run = trained / "aqa7" / "diving" / "core" / "seed0"
    paths = plot_run(run, dpi=80)
    assert sorted(p.name for p in paths if p.suffix == ".png") == ["curves.png", "leaves.png", "scatter.png"]
    assert sorted(p.name for p in paths if p.suffix == ".pdf") == ["curves.pdf", "leaves.pdf", "scatter.pdf"]
    for p in paths:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            with Image.open(p) as im:
                im.verify()
        else:
            assert p.read_bytes()[:5] == b"%PDF-"
    assert [p.name for p in plot_run(trained / "jigsaws" / "Suturing-4fold-0" / "mlp" / "seed0", dpi=80)] == \
        ["scatter.png", "scatter.pdf", "curves.png", "curves.pdf"]


# ------------------------------------------------------------------------------------------ scoring
FCFG = {"resize_hw": [40, 40], "crop": 32, "norm": "imagenet", "interp": "nearest"}
T, N = 16, 36


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    from data.base import read_even
    from tests.testutil import write_video
    from data.transforms import FrameConfig, View
    from extract.pipeline import featurize_frames
    from evaluate.score import _backbone   # the very model score_video uses (loaded once)

    tmp = tmp_path_factory.mktemp("score")
    rng = np.random.default_rng(0)
    video = write_video(tmp / "clip.avi", rng.integers(0, 255, size=24).tolist(), size=(48, 56))
    frames = read_even(video, T)
    feat = featurize_frames(_backbone("random", "cpu"), frames, [View.from_dict(DEFAULT_VIEWS[0])],
                            FrameConfig.from_dict(FCFG), 1, "cpu")                 # (1, 1, 1024)
    diff = rng.choice([2.0, 3.0], size=N)
    diff[0] = 3.0
    comp = rng.uniform(0, 28, size=N)
    scores = comp * diff
    feats = learnable_features(comp / 28 * 100, n_views=4, n_clips=1, dim=1024, noise=0.1)
    feats[0] = feat[0]                               # video 0 is the clip, in every view
    split = np.where(np.arange(N) % 4 == 0, "test", "train")
    attrs = {"dataset": "synthetic", "weights_source": "random", "weights_sha256": "random",
             "frame_config": json.dumps(FCFG), "clip_rule": json.dumps({"T": T, "n_clips": 1, "clip_len": 16,
                                                                        "starts": [0]})}
    cache = write_fake_cache(tmp / "c.h5", feats, scores, diff, split, None, None, None, attrs)
    runs = tmp / "runs"
    core = _train(cache, runs, head="core", voters=100, val_fraction=0.0)
    dd = _train(cache, runs, head="core_dd", theta=30.0, voters=100, val_fraction=0.0)
    mlp = _train(cache, runs, head="mlp", val_fraction=0.0)
    return {"video": video, "cache": cache, "core": core, "dd": dd, "mlp": mlp, "tmp": tmp, "attrs": attrs,
            "feats": feats, "scores": scores, "diff": diff, "split": split}


def _trainer_pred(run, vid="v00000"):
    p = pd.read_csv(run / "predictions.csv")
    return float(p.set_index("video_id").loc[vid, "pred"])


def test_score_reproduces_the_trainers_prediction(scored):
    # with M >= the pool, every training video votes, so the order of the draw does not matter
    res = score_video(scored["video"], scored["core"], voters=100, device="cpu")
    n_pool = len(json.loads((scored["core"] / "split.json").read_text())["train"])
    assert res["voters"] == n_pool
    assert res["score"] == pytest.approx(_trainer_pred(scored["core"]), abs=1e-3)
    e = res["exemplars"][0]
    assert e["prediction"] == pytest.approx(e["score"] + e["predicted_difference"])
    preds = [x["prediction"] for x in res["exemplars"]]
    assert res["spread"]["min"] == pytest.approx(min(preds)) and res["spread"]["std"] == pytest.approx(np.std(preds))
    assert "only" in " ".join(res["notes"])                 # asked for 100, the pool is smaller

    small = score_video(scored["video"], scored["core"], voters=3, device="cpu", seed=1)
    assert small["voters"] == 3 and len({x["video_id"] for x in small["exemplars"]}) == 3
    train_ids = set(json.loads((scored["core"] / "split.json").read_text())["train"])
    assert {x["video_id"] for x in small["exemplars"]} <= train_ids


def test_score_dd_needs_difficulty_and_uses_same_difficulty(scored):
    with pytest.raises(ScoreError, match="--difficulty"):
        score_video(scored["video"], scored["dd"], device="cpu")
    res = score_video(scored["video"], scored["dd"], difficulty=3.0, voters=100, device="cpu")
    assert {x["difficulty"] for x in res["exemplars"]} == {3.0}
    assert res["score"] == pytest.approx(_trainer_pred(scored["dd"]), abs=1e-3)
    # score = completeness x difficulty: the head's completeness (exemplar completeness + predicted
    # difference) times 3.0, never the bare completeness
    for e in res["exemplars"]:
        comp = e["score"] / e["difficulty"] + e["predicted_difference"]
        assert e["prediction"] == pytest.approx(3.0 * comp, rel=1e-6) and abs(comp) > 1.0
    assert res["score"] == pytest.approx(np.mean([e["prediction"] for e in res["exemplars"]]))
    far = score_video(scored["video"], scored["dd"], difficulty=3.4, voters=4, device="cpu")
    assert "nearest difficulty 3" in " ".join(far["notes"])


def test_score_non_pairwise_head(scored):
    res = score_video(scored["video"], scored["mlp"], device="cpu")
    assert res["exemplars"] == [] and res["score"] == pytest.approx(_trainer_pred(scored["mlp"]), abs=1e-3)


def test_score_refuses_other_weights_and_changed_cache(scored, tmp_path):
    other = tmp_path / "other.pt"
    other.write_bytes(b"not the weights the cache was made with")
    with pytest.raises(ScoreError, match="weights mismatch"):
        score_video(scored["video"], scored["core"], weights=str(other), device="cpu")
    # the cache rewritten with another frame config since training
    s = scored
    cfg = json.loads((s["core"] / "config.json").read_text())
    changed = dict(s["attrs"], frame_config=json.dumps({**FCFG, "crop": 24}))
    moved = tmp_path / "c2.h5"
    write_fake_cache(moved, s["feats"], s["scores"], s["diff"], s["split"], None, None, None, changed)
    run2 = tmp_path / "run2"
    run2.mkdir()
    for f in s["core"].iterdir():
        (run2 / f.name).write_bytes(f.read_bytes())
    cfg["cache"] = str(moved)
    (run2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ScoreError, match="frame_config"):
        score_video(s["video"], run2, device="cpu")


def test_score_cli_text_and_json(scored):
    r = CliRunner().invoke(cli, ["score", str(scored["video"]), "--run", str(scored["core"]), "--voters", "4",
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "predicted score:" in r.output and "spread over 4 exemplars" in r.output
    r = CliRunner().invoke(cli, ["score", str(scored["video"]), "--run", str(scored["core"]), "--voters", "4",
                                 "--json", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.output)
    assert len(obj["exemplars"]) == 4 and set(obj["spread"]) == {"std", "min", "max"}
    r = CliRunner().invoke(cli, ["score", str(scored["video"]), "--run", str(scored["dd"]), "--device", "cpu"])
    assert r.exit_code != 0 and "--difficulty" in r.output and "Traceback" not in r.output
    # --model final: the final epoch's model, which reproduces the trainer's pred_final (every voter votes)
    r = CliRunner().invoke(cli, ["score", str(scored["video"]), "--run", str(scored["core"]), "--voters", "100",
                                 "--json", "--device", "cpu", "--model", "final"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.output)
    final = float(pd.read_csv(scored["core"] / "predictions.csv").set_index("video_id").loc["v00000", "pred_final"])
    assert obj["model"] == "final" and obj["score"] == pytest.approx(final, abs=1e-3)
    r = CliRunner().invoke(cli, ["score", str(scored["video"]), "--run", str(scored["core"]), "--device", "cpu",
                                 "--model", "final"])
    assert r.exit_code == 0 and "final model)" in r.output


def test_score_frame_folder_and_short_clip(scored, tmp_path):
    from tests.testutil import write_frames
    folder = write_frames(tmp_path / "frames", list(range(0, 200, 10)), size=(40, 40))    # 20 frames
    res = score_video(folder, scored["core"], voters=2, device="cpu", sampling="first")
    assert math.isfinite(res["score"]) and res["frames"]["sampling"] == "first"
    short = write_frames(tmp_path / "short", [10, 20, 30], size=(40, 40))
    with pytest.raises(ScoreError, match="16"):
        score_video(short, scored["core"], device="cpu")


def test_rho_of_trained_run_matches_predictions(scored):
    p = pd.read_csv(scored["core"] / "predictions.csv")
    s = json.loads((scored["core"] / "summary.json").read_text())
    assert s["selected"]["rho"] == pytest.approx(spearman(p["pred"], p["true"]))
