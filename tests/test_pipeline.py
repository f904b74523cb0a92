"""The whole pipeline, as `make demo` runs it, on a tiny demo dataset in a temporary folder.

    .venv/bin/python -m pytest tests/test_pipeline.py -q

Each stage runs through its real command line (`python -m data|extract|train_head|evaluate`) in a
subprocess, with the real Kinetics-400 I3D at a small frame size (fetched and converted into
$AQA_HOME on first use, like `make weights`). The checks are on real properties of what each stage
writes, and on the hand-off between stages: the cache `train_head` reads, the run folders `evaluate`
reads.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
N_VIDEOS = 8


def _run(*args: str, cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    ds, cache, runs = tmp / "synthetic", tmp / "features" / "synthetic.h5", tmp / "runs"
    _run("data", "synthetic", "--out", str(ds), "--n-videos", str(N_VIDEOS), "--seed", "3", "--size", "48",
         cwd=tmp)
    _run("extract", "features", "--dataset", "synthetic", "--root", str(ds), "--out", str(cache),
         "--weights", "kinetics400", "--device", "cpu", "--frame-size", "40,40", "--crop", "32",
         "--views", "test,center_flip", "--no-progress", cwd=tmp)
    for head in ("core", "mlp"):
        _run("train_head", "train", "--cache", str(cache), "--head", head, "--epochs", "4", "--out", str(runs),
             "--device", "cpu", cwd=tmp)
    report = _run("evaluate", "report", str(runs), "--csv", str(tmp / "results.csv"), "--n-boot", "50", cwd=tmp)
    return tmp, ds, cache, runs, report


def test_demo_dataset_on_disk(pipeline):
    _, ds, *_ = pipeline
    folders = sorted((ds / "diving-out").iterdir())
    assert len(folders) == N_VIDEOS
    assert all(len(list(f.glob("img_*.jpg"))) == 103 for f in folders)
    assert (ds / "Split_4" / "split_4_train_list.mat").is_file()


def test_cache_holds_real_features(pipeline):
    from cache import load_cache
    from extract.weights import weights_sha256

    _, _, cache, *_ = pipeline
    c = load_cache(cache, expect={"backbone": "i3d", "weights_sha256": weights_sha256("kinetics400")})
    assert c.features.shape == (N_VIDEOS, 2, 10, 1024)
    f = c.features.astype(np.float32)
    assert np.isfinite(f).all()
    # Mixed_5c follows a ReLU, so pooled features are non-negative, and real weights make them vary
    assert (f >= 0).all() and f.std() > 0
    assert not np.allclose(f[:, 0], f[:, 1])          # the flipped view is another input
    assert not np.allclose(f[0, 0], f[1, 0])          # different videos differ
    assert [v["name"] for v in c.views] == ["test", "center_flip"]
    assert set(c.split) == {"train", "test"} and np.isfinite(c.scores).all()
    assert c.attrs["clip_rule"]["starts"] == [0, 10, 20, 30, 40, 50, 60, 70, 80, 86]


@pytest.mark.parametrize("head", ["core", "mlp"])
def test_run_folders(pipeline, head):
    _, _, cache, runs, _ = pipeline
    run = runs / "synthetic" / "all" / head / "seed0"
    assert run.is_dir(), sorted(p.relative_to(runs) for p in runs.rglob("summary.json"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["complete"] is True and summary["final_epoch"] == 4
    assert 1 <= summary["selected_epoch"] <= 4
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3, 4]
    assert {"train_loss", "val_rho", "test_rho", "test_rl2"} <= set(metrics.columns)
    assert np.isfinite(metrics["train_loss"]).all()
    preds = pd.read_csv(run / "predictions.csv")
    assert len(preds) == summary["n_test"] > 0
    assert np.isfinite(preds["pred"]).all() and np.isfinite(preds["true"]).all()
    config = json.loads((run / "config.json").read_text())
    assert config["head"] == head and Path(config["cache"]).resolve() == cache.resolve()
    if head == "core":
        groups = json.loads((run / "groups.json").read_text())["groups"]
        assert len(groups) == 16 and groups[-1][1] == 100.0


def test_evaluate_reads_the_runs(pipeline):
    tmp, _, _, runs, report = pipeline
    table = pd.read_csv(tmp / "results.csv")
    assert {"core", "mlp"} <= set(table["head"])
    assert {"val-selected", "final-epoch"} <= set(table["protocol"])
    assert {"rho", "RL2x100", "n_runs"} <= set(table.columns)
    assert "| " in report                                   # the markdown table was printed
    pngs = list(runs.rglob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
