"""Progress of many-run commands and optional TensorBoard logging (train_head/tracking.py)."""
import io
import math
import sys

import pytest

from tests._cachefixture import learnable_cache
from train_head.tracking import (EXTRA_REQUIREMENTS, RunProgress, TrackingError, chain, epoch_logger,
                                 fmt_seconds, require_tensorboard, run_label)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_lines_count_label_elapsed_and_estimate():
    out, clock = io.StringIO(), Clock()
    p = RunProgress(4, stream=out, clock=clock)
    p.start("core/seed0 (diving)")
    clock.t = 10
    p.done({"status": "skipped", "seconds": 0.1, "selected_rho": 0.5}, "core/seed0 (diving)")
    assert p.estimate() is None                     # a skipped run says nothing about the time of a run
    p.start("core/seed1 (diving)")
    clock.t = 70
    p.done({"status": "done", "seconds": 60.0, "selected_rho": 0.8123}, "core/seed1 (diving)")
    assert p.estimate() == pytest.approx(120.0)     # 60 s a run x 2 runs left
    clock.t = 75
    p.done({"status": "failed", "seconds": 5.0})
    clock.t = 95
    p.done({"status": "done", "seconds": 20.0, "selected_rho": math.nan}, "mlp/seed0")
    lines = out.getvalue().splitlines()
    assert lines[0] == "4 runs"
    assert lines[1] == "[run 1/4] core/seed0 (diving) ..."
    assert lines[2].startswith("[1/4] core/seed0 (diving): not trained (already complete)")
    assert "elapsed 10s, estimate after the first trained run" in lines[2]
    assert lines[4] == ("[2/4] core/seed1 (diving): trained in 1m00s, val-selected test rho 0.812 | "
                        "elapsed 1m10s, about 2m00s left")
    assert lines[5].startswith("[3/4] ?: FAILED") and "about 1m00s left" in lines[5]
    assert lines[6] == "[4/4] mlp/seed0: trained in 20s | elapsed 1m35s, all runs finished"


def test_estimate_divides_by_the_runs_in_parallel():
    p = RunProgress(10, parallel=4, stream=io.StringIO(), clock=Clock())
    p.done({"status": "done", "seconds": 40.0})
    assert p.estimate() == pytest.approx(40.0 * 9 / 4)
    for _ in range(7):
        p.done({"status": "done", "seconds": 40.0})
    assert p.estimate() == pytest.approx(40.0 * 2 / 2)   # 2 left: only 2 run at once


def test_fmt_seconds_and_labels():
    assert [fmt_seconds(s) for s in (0.4, 59, 61, 3599, 3660)] == ["0s", "59s", "1m01s", "59m59s", "1h01m"]
    assert run_label({"head": "core", "tag": "depth=3", "seed": 1, "cls": "diving", "fold": None}) == \
        "core+depth=3/seed1 (diving)"
    assert run_label({"head": "mlp", "seed": 0, "cls": "Suturing", "fold": "2"}) == "mlp/seed0 (Suturing, 2)"


def test_run_many_shows_overall_progress(tmp_path, capsys):
    from train_head.config import resolve_config
    from train_head.sweep import _in_order, run_many

    cache = learnable_cache(tmp_path / "c.h5", n=24, dim=8, seed=0)
    cfgs = [resolve_config(None, cache=str(cache), out=str(tmp_path / "runs"), head="mlp", epochs=2, seed=s,
                           hidden=8, threads=1) for s in (0, 1)]
    rows = run_many(cfgs)
    err = capsys.readouterr().err
    assert [r["status"] for r in rows] == ["done", "done"] and all(r["seconds"] > 0 for r in rows)
    assert "2 runs" in err and "[run 1/2] mlp/seed0 ..." in err and "[run 2/2] mlp/seed1 ..." in err
    assert "[1/2] mlp/seed0: trained in" in err and "about" in err and "all runs finished" in err
    run_many(cfgs)                                            # again: both complete, nothing trained
    assert capsys.readouterr().err.count("not trained (already complete)") == 2
    # pooled results arrive in the order they finish; the rows come back in the order of the configs
    payload = [c.to_dict() for c in cfgs]
    out = io.StringIO()
    got = _in_order(iter([(1, {"status": "done", "seconds": 1.0, "n": 1}), (0, {"status": "done", "n": 0})]),
                    payload, RunProgress(2, parallel=2, stream=out, clock=Clock()))
    assert [g["n"] for g in got] == [0, 1]
    assert out.getvalue().splitlines()[1].startswith("[1/2] mlp/seed1: trained")


class FakeWriter:
    made = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step, self.scalars, self.flushes, self.closed = log_dir, purge_step, [], 0, False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


def test_epoch_logger_off_by_default_and_fake_writer(tmp_path):
    assert epoch_logger(tmp_path, False) is None
    FakeWriter.made.clear()
    log = epoch_logger(tmp_path / "run", True, writer_factory=FakeWriter)
    assert not (tmp_path / "run" / "tensorboard").exists()          # nothing before the first epoch
    log(3, {"epoch": 3, "train_loss": 0.5, "val_rho": math.nan, "test_rho": float("nan")})
    log(4, {"epoch": 4, "train_loss": 0.25, "val_rho": 0.7, "test_rho": 0.6, "note": "x", "flag": True})
    (w,) = FakeWriter.made
    assert w.log_dir == str(tmp_path / "run" / "tensorboard") and w.purge_step == 3   # resumed at epoch 3
    assert w.scalars == [("train_loss", 0.5, 3), ("train_loss", 0.25, 4), ("val_rho", 0.7, 4), ("test_rho", 0.6, 4)]
    assert w.flushes == 2 and not w.closed
    log.close()
    assert w.closed
    seen = []
    both = chain(None, lambda e, r: seen.append(("a", e)), log, lambda e, r: seen.append(("b", e)))
    both(5, {"train_loss": 1.0})
    assert seen == [("a", 5), ("b", 5)] and FakeWriter.made[-1].purge_step == 5
    assert chain(None, None) is None


def test_missing_tensorboard_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)       # import tensorboard -> ImportError
    with pytest.raises(TrackingError) as e:
        epoch_logger(tmp_path, True)
    msg = str(e.value)
    assert "'tensorboard' package" in msg and f"pip install -r {EXTRA_REQUIREMENTS}" in msg and "\n" not in msg
    assert not (tmp_path / "tensorboard").exists()
    with pytest.raises(TrackingError, match="requirements-tensorboard.txt"):
        require_tensorboard()


def test_real_tensorboard_events_and_resume_purge(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = epoch_logger(tmp_path, True)
    for e in (1, 2, 3):
        log(e, {"epoch": e, "train_loss": 1.0 / e, "val_rho": 0.1 * e, "test_rho": math.nan})
    log.close()
    log = epoch_logger(tmp_path, True)              # resumed after epoch 1: epochs 2, 3 trained again
    for e in (2, 3):
        log(e, {"epoch": e, "train_loss": 10.0 + e, "val_rho": 0.5})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train_loss", "val_rho"}
    assert [(s.step, round(s.value, 4)) for s in acc.Scalars("train_loss")] == [(1, 1.0), (2, 12.0), (3, 13.0)]
    assert [(s.step, round(s.value, 4)) for s in acc.Scalars("val_rho")] == [(1, 0.1), (2, 0.5), (3, 0.5)]


def test_real_tensorboard_from_a_training_run(tmp_path):
    """The per-epoch rows of a real run (train's on_epoch_end) land as scalars named like metrics.csv."""
    pytest.importorskip("tensorboard")
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train_head.config import resolve_config
    from train_head.trainer import train

    cache = learnable_cache(tmp_path / "c.h5", n=24, dim=8, seed=0)
    cfg = resolve_config(None, cache=str(cache), out=str(tmp_path / "runs"), head="core", epochs=3, depth=2,
                         voters=3, hidden=8, threads=1)
    log = epoch_logger(cfg.run_dir("synthetic"), True)
    run = train(cfg, on_epoch_end=log, progress=False)
    log.close()
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    metrics = pd.read_csv(run / "metrics.csv")
    assert {"train_loss", "val_rho", "test_rho", "test_rl2"} <= set(acc.Tags()["scalars"])
    assert [round(s.value, 5) for s in acc.Scalars("test_rho")] == [round(v, 5) for v in metrics["test_rho"]]
