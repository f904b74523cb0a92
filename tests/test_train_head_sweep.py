"""Sweeps: grid parsing and folder tags, units, a tiny grid through joblib (loky) and through a local
dask.distributed cluster, skipping complete runs."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests._cachefixture import learnable_cache
from train_head.__main__ import cli
from train_head.config import ConfigError
from train_head.sweep import expand_grid, parse_grid, plan_runs

TINY = ["--epochs", "2", "--depth", "3", "--voters", "3", "--set", "hidden=16", "--set", "threads=1",
        "--batch-size", "16"]


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return learnable_cache(tmp_path_factory.mktemp("s") / "s.h5", n=40, dim=8, seed=0)


def test_parse_and_expand_grid():
    g = parse_grid(["head=core,mlp", "depth=3,5 seeds=0,1"])
    assert g == {"head": ["core", "mlp"], "depth": ["3", "5"], "seed": ["0", "1"]}
    pts = expand_grid(g)
    assert len(pts) == 8 and pts[0] == {"head": "core", "depth": "3", "seed": "0"}
    with pytest.raises(ConfigError, match="unknown config key"):
        parse_grid(["dept=3"])
    with pytest.raises(ConfigError, match="key=v1"):
        parse_grid(["depth"])


def test_plan_tags_only_non_default_values(cache_path, tmp_path):
    cfgs = plan_runs(None, {"cache": str(cache_path), "out": str(tmp_path), "dataset": "synthetic"},
                     parse_grid(["head=core,mlp", "depth=3,5", "lr=1e-3,1e-4", "seeds=0,1"]))
    assert len(cfgs) == 16
    dirs = {c.run_dir().relative_to(tmp_path).as_posix() for c in cfgs}
    assert "synthetic/all/core/seed0" in dirs                       # depth 5 and lr 1e-3 are the defaults
    assert "synthetic/all/mlp+depth=3+lr=0.0001/seed1" in dirs
    assert len(dirs) == 16


def test_units_expand_classes_and_folds(tmp_path):
    folds = [{"4fold": str((i // 2) % 4)} for i in range(32)]
    cache = learnable_cache(tmp_path / "j.h5", n=32, dim=8, classes=["A", "B"], folds=folds, dataset="jigsaws")
    cfgs = plan_runs("jigsaws", {"cache": str(cache), "cls": "all", "out": str(tmp_path)})
    assert [(c.cls, c.fold) for c in cfgs] == [(c, f) for c in ("A", "B") for f in ("0", "1", "2", "3")]


def _sweep(args):
    res = CliRunner().invoke(cli, ["sweep", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_tiny_grid_with_joblib_then_skipped(cache_path, tmp_path):
    args = ["--cache", str(cache_path), "--out", str(tmp_path), *TINY,
            "--grid", "head=core,mlp", "seeds=0,1", "--jobs", "2"]
    out = _sweep(args)
    runs = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("summary.json"))
    assert runs == ["synthetic/all/core/seed0", "synthetic/all/core/seed1", "synthetic/all/mlp/seed0",
                    "synthetic/all/mlp/seed1"], out
    assert all(json.loads((tmp_path / r / "summary.json").read_text())["complete"] for r in runs)
    again = _sweep(args[:-2])                     # rerun in-process: everything is skipped
    assert again.count("skipped") == 4 and "done" not in again.replace("skipped", "")


@pytest.mark.slow  # starts a 2-process local cluster (~15 s); `make test` still runs it
def test_tiny_sweep_through_dask_scheduler(cache_path, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster:
        out = _sweep(["--cache", str(cache_path), "--out", str(tmp_path), *TINY,
                      "--grid", "depth=2,3", "--scheduler", cluster.scheduler_address])
    runs = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("summary.json"))
    assert runs == ["synthetic/all/core+depth=2/seed0", "synthetic/all/core/seed0"], out
    assert Path(tmp_path, runs[0], "groups.json").is_file()


def test_train_cli_units_seeds_and_errors(tmp_path):
    cache = learnable_cache(tmp_path / "c.h5", n=40, dim=8, classes=["a", "b"])
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--cache", str(cache), "--out", str(tmp_path / "r"), *TINY,
                              "--class", "all", "--seeds", "0,1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    runs = sorted(p.parent.relative_to(tmp_path / "r").as_posix() for p in (tmp_path / "r").rglob("summary.json"))
    assert runs == [f"synthetic/{c}/core/seed{s}" for c in "ab" for s in (0, 1)]
    res = runner.invoke(cli, ["train", "--cache", str(cache), "--set", "nope=1"])
    assert res.exit_code == 2 and "unknown config key" in res.output
    res = runner.invoke(cli, ["train", "--cache", str(cache), "--out", str(tmp_path / "r"), *TINY])
    assert res.exit_code == 1 and "--class" in res.output          # two classes, none chosen
    # the finetune command is registered (not the "not available" fallback) and its help works
    res = runner.invoke(cli, ["finetune", "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output and "finetune" in res.output
    assert "--dataset" in res.output and "--root" in res.output, res.output


def test_failing_run_is_reported_and_others_finish(cache_path, tmp_path):
    res = CliRunner().invoke(cli, ["sweep", "--cache", str(cache_path), "--out", str(tmp_path), *TINY,
                                   "--grid", "head=core_dd,core"])
    assert res.exit_code == 1
    assert "FAILED" in res.output and "difficulty" in res.output
    assert (tmp_path / "synthetic" / "all" / "core" / "seed0" / "summary.json").is_file()


def test_pooled_runs_say_which_thread_count_they_ran_with(cache_path, tmp_path, caplog):
    import logging
    import os

    tiny = ["--epochs", "2", "--depth", "3", "--voters", "3", "--set", "hidden=16", "--batch-size", "16"]  # threads=0
    with caplog.at_level(logging.INFO, logger="train_head.sweep"):
        _sweep(["--cache", str(cache_path), "--out", str(tmp_path), *tiny, "--grid", "seeds=0,1", "--jobs", "2"])
    assert "--set threads=N" in caplog.text          # the numbers depend on the thread count: said, not hidden
    per_worker = max(1, (os.cpu_count() or 1) // 2)  # joblib's cap for 2 loky workers
    for s in tmp_path.rglob("summary.json"):
        assert json.loads(s.read_text())["torch_threads"] == per_worker
