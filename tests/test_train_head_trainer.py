"""The trainer on tiny synthetic caches: it learns, the run folder follows the contract, selection is
on validation only, same seed -> same numbers, an interrupted run resumes to identical results."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from tests._cachefixture import learnable_cache
from train_head.config import resolve_config
from train_head.metrics import rl2, spearman
from train_head.trainer import TrainError, carve_validation, train

SMALL = dict(depth=3, hidden=32, voters=4, batch_size=16, epochs=4, threads=1)  # 1 thread: tiny ops, busy CI


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return learnable_cache(tmp_path_factory.mktemp("c") / "c.h5", n=60, dim=16, seed=0)


@pytest.fixture(scope="module")
def dd_cache(tmp_path_factory):
    return learnable_cache(tmp_path_factory.mktemp("d") / "d.h5", n=60, dim=16, seed=1, dd=True,
                           dataset="mtl_aqa")


def _cfg(cache, out, **kw):
    return resolve_config(None, cache=str(cache), out=str(out), **{**SMALL, **kw})


def test_core_learns_and_beats_constant(tmp_path):
    cache = learnable_cache(tmp_path / "l.h5", n=90, dim=16, seed=3, noise=0.2)
    run = train(_cfg(cache, tmp_path / "runs", epochs=25, hidden=64, voters=8), progress=False)
    s = json.loads((run / "summary.json").read_text())
    pred = pd.read_csv(run / "predictions.csv")
    assert s["selected"]["rho"] > 0.9, s
    const = np.full(len(pred), pred["true"].mean())          # the best constant, even given the test mean
    assert s["selected"]["rl2"] < 0.25 * rl2(const, pred["true"])
    assert math.isnan(spearman(const, pred["true"]))         # a constant prediction has no rank order


def test_run_folder_contract(cache_path, tmp_path):
    run = train(_cfg(cache_path, tmp_path), progress=False)
    assert run == tmp_path / "synthetic" / "all" / "core" / "seed0"
    for name in ("config.json", "metrics.csv", "predictions.csv", "groups.json", "leaf_counts.json",
                 "summary.json", "model_selected.pt", "model_final.pt", "checkpoint.pt"):
        assert (run / name).is_file(), name
    m = pd.read_csv(run / "metrics.csv")
    assert list(m.columns) == ["epoch", "train_loss", "val_rho", "val_l2", "val_rl2", "test_rho", "test_l2",
                               "test_rl2"]
    assert m["epoch"].tolist() == [1, 2, 3, 4] and m.notna().all().all()
    s = json.loads((run / "summary.json").read_text())
    assert s["complete"] is True and s["final_epoch"] == 4 and s["n_train"] + s["n_val"] + s["n_test"] == 60
    assert s["torch_threads"] == 1                             # SMALL: threads=1
    # selection: best validation rho, earliest on ties; test numbers only in best_on_test
    best = m["val_rho"].max()
    assert s["selected_epoch"] == int(m.loc[m["val_rho"] == best, "epoch"].min())
    assert s["selected"]["rho"] == pytest.approx(m.loc[m["epoch"] == s["selected_epoch"], "test_rho"].item())
    assert s["final"]["rho"] == pytest.approx(m["test_rho"].iloc[-1])
    assert s["best_on_test"]["rho"] == pytest.approx(m["test_rho"].max())
    p = pd.read_csv(run / "predictions.csv", keep_default_na=False)
    assert list(p.columns)[:8] == ["video_id", "true", "pred", "pred_final", "difficulty", "n_voters",
                                   "exemplars", "exemplar_preds"]
    assert len(p) == s["n_test"] and (p["n_voters"] == 4).all()
    split = json.loads((run / "split.json").read_text())
    for _, row in p.iterrows():
        ex = row["exemplars"].split()
        assert len(ex) == 4 and set(ex) <= set(split["train"])     # voters come from the training pool
        assert np.mean([float(x) for x in row["exemplar_preds"].split()]) == pytest.approx(row["pred"], rel=1e-5)
        assert np.mean([float(x) for x in row["exemplar_preds_final"].split()]) == \
            pytest.approx(row["pred_final"], rel=1e-5)
    g = json.loads((run / "groups.json").read_text())
    assert len(g["groups"]) == 4 and g["theta"] == 100.0 and g["n_clamped"] == 0
    lc = json.loads((run / "leaf_counts.json").read_text())
    assert sum(lc["selected"]) == sum(lc["final"]) == 4 * s["n_test"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["head"] == "core" and "git_commit" in cfg and cfg["cache_attrs"]["dataset"] == "synthetic"
    sd = torch.load(run / "model_selected.pt", weights_only=True)
    assert "groups" in sd


def test_same_seed_same_numbers_other_seed_differs(cache_path, tmp_path):
    a = train(_cfg(cache_path, tmp_path / "a", epochs=3), progress=False)
    b = train(_cfg(cache_path, tmp_path / "b", epochs=3), progress=False)
    c = train(_cfg(cache_path, tmp_path / "c", epochs=3, seed=1), progress=False)
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    assert (a / "predictions.csv").read_text() == (b / "predictions.csv").read_text()
    assert (a / "metrics.csv").read_text() != (c / "metrics.csv").read_text()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("every", [1, 2])
def test_resume_gives_identical_results(cache_path, tmp_path, every):
    cfg = _cfg(cache_path, tmp_path / "full", epochs=5, checkpoint_every=every)
    full = train(cfg, progress=False)

    cut = cfg.replace(out=str(tmp_path / "cut"), dataset="synthetic")

    def stop(epoch, row):
        if epoch == 3:
            raise _Stop

    with pytest.raises(_Stop):
        train(cut, on_epoch_end=stop, progress=False)
    run = cut.run_dir()
    assert not (run / "summary.json").exists()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == (3 if every == 1 else 2)
    train(cut, progress=False)
    for name in ("metrics.csv", "summary.json", "predictions.csv", "leaf_counts.json"):
        assert (run / name).read_text() == (full / name).read_text(), name
    for name in ("model_selected.pt", "model_final.pt"):
        x, y = (torch.load(d / name, weights_only=True) for d in (run, full))
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_complete_run_skipped_force_retrains_changed_config_refused(cache_path, tmp_path):
    cfg = _cfg(cache_path, tmp_path, epochs=2)
    run = train(cfg, progress=False)
    stamp = (run / "summary.json").stat().st_mtime_ns
    train(cfg, progress=False)
    assert (run / "summary.json").stat().st_mtime_ns == stamp
    train(cfg, force=True, progress=False)
    assert (run / "summary.json").stat().st_mtime_ns != stamp
    with pytest.raises(TrainError, match="different config"):
        train(cfg.replace(lr=5e-4), progress=False)


def test_dd_preset_folder_theta_and_same_difficulty_voters(dd_cache, tmp_path):
    """The mtl_aqa_dd preset: its run folder, theta 30, and exemplars drawn from the training pool with the
    query's difficulty (the multiplication by difficulty itself: tests/test_train_head_dd.py)."""
    from cache import load_cache

    cfg = resolve_config("mtl_aqa_dd", cache=str(dd_cache), out=str(tmp_path), **SMALL)
    run = train(cfg, progress=False)
    p = pd.read_csv(run / "predictions.csv")
    assert run.parts[-4:] == ("mtl_aqa", "all", "core_dd", "seed0")
    assert json.loads((run / "groups.json").read_text())["theta"] == 30.0
    split = json.loads((run / "split.json").read_text())
    c = load_cache(dd_cache)
    diff = dict(zip(c.video_ids, c.difficulty))
    for _, row in p.iterrows():
        ex = row["exemplars"].split()
        assert ex and set(ex) <= set(split["train"])
        assert all(diff[e] == row["difficulty"] for e in ex), row["video_id"]


def test_dd_head_without_difficulty_is_a_clear_error(cache_path, tmp_path):
    with pytest.raises(TrainError, match="difficulty.*'core'"):
        train(_cfg(cache_path, tmp_path, head="core_dd", theta=30.0), progress=False)


def test_mlp_head_has_no_voters(cache_path, tmp_path):
    run = train(_cfg(cache_path, tmp_path, head="mlp"), progress=False)
    p = pd.read_csv(run / "predictions.csv", keep_default_na=False)
    assert (p["n_voters"] == 0).all() and (p["exemplars"] == "").all()
    assert not (run / "groups.json").exists()


def test_folds_and_classes(tmp_path):
    folds = [{"4fold": str((i // 2) % 4)} for i in range(48)]
    cache = learnable_cache(tmp_path / "j.h5", n=48, dim=16, classes=["Suturing", "Knot_Tying"], folds=folds,
                            dataset="jigsaws")
    with pytest.raises(TrainError, match="--class"):
        train(resolve_config("jigsaws", cache=str(cache), out=str(tmp_path), fold="1", theta=100.0, **SMALL),
              progress=False)
    cfg = resolve_config("jigsaws/Suturing/4fold/1", cache=str(cache), out=str(tmp_path), theta=100.0, **SMALL)
    run = train(cfg, progress=False)
    assert run.parts[-4:-1] == ("jigsaws", "Suturing-4fold-1", "core")
    split = json.loads((run / "split.json").read_text())
    test_ids = {f"v{i:05d}" for i in range(48) if (i // 2) % 4 == 1 and i % 2 == 0}
    assert set(split["test"]) == test_ids
    assert not test_ids & set(split["train"] + split["val"])
    with pytest.raises(TrainError, match="fold '9'"):
        train(cfg.replace(fold="9"), progress=False)


def test_validation_carve_is_stratified_and_seeded():
    scores = np.linspace(0, 100, 50)
    pool, val = carve_validation(scores, 0.2, 5, np.random.default_rng([0, 1]))
    assert len(val) == 10 and len(pool) == 40 and not set(pool) & set(val)
    assert np.histogram(scores[val], bins=5, range=(0, 100))[0].tolist() == [2, 2, 2, 2, 2]
    pool2, val2 = carve_validation(scores, 0.2, 5, np.random.default_rng([0, 1]))
    assert np.array_equal(val, val2)
    assert len(carve_validation(scores, 0.0, 5, np.random.default_rng(0))[1]) == 0


def test_views_option(cache_path, tmp_path):
    from train_head.config import ConfigError

    run = train(_cfg(cache_path, tmp_path, views="train_s0,train_s1", epochs=1), progress=False)
    assert (run / "summary.json").is_file()
    with pytest.raises(ConfigError, match="unknown view"):
        train(_cfg(cache_path, tmp_path / "x", views="nope", epochs=1), progress=False)


def test_no_validation_selects_final_epoch(cache_path, tmp_path):
    run = train(_cfg(cache_path, tmp_path, val_fraction=0.0, epochs=3), progress=False)
    s = json.loads((run / "summary.json").read_text())
    assert s["n_val"] == 0 and s["selected_epoch"] == 3 and s["selected"]["rho"] == s["final"]["rho"]
    assert pd.read_csv(run / "metrics.csv")["val_rho"].isna().all()
