"""Kill -9 a real extraction mid-run (twice), rerun, and get the same cache as an uninterrupted run.

Also checks that whatever is on disk right after a kill is usable: the final file is absent or opens
as a complete cache, and every part file (not the .tmp ones) opens.
"""
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from cache import load_cache, parts_dir
from data.synthetic import write_synthetic

N_VIDEOS = 12
ARGS = ["features", "--dataset", "synthetic", "--weights", "random", "--device", "cpu", "--views", "test-only",
        "--frame-size", "32,32", "--crop", "32", "--n-clips", "2", "--batch-clips", "2", "--workers", "0",
        "--part-every", "1", "--no-progress"]


def _env():
    # one thread and one video per batch: bitwise-reproducible float32 features across runs
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def _cmd(root, out):
    return [sys.executable, "-m", "extract", *ARGS, "--root", str(root), "--out", str(out)]


def _check_disk_state(out):
    if out.exists():
        c = load_cache(out)                 # never half-written
        assert len(c) + len(c.failed) == N_VIDEOS
    d = parts_dir(out)
    if d.is_dir():
        for p in d.glob("part-*.h5"):
            with h5py.File(p, "r") as h5:
                assert h5["features"].shape[0] == h5["index"].shape[0]


def _kill_when(proc, ready, timeout=120.0):
    t0 = time.monotonic()
    while proc.poll() is None and not ready():
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.returncode


@pytest.mark.slow   # about 25 s: four extraction subprocesses
def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    root = write_synthetic(tmp_path / "syn", n_videos=N_VIDEOS, seed=5, size=32)
    ref = tmp_path / "ref.h5"
    r = subprocess.run(_cmd(root, ref), capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "out.h5"
    log = open(tmp_path / "log.txt", "w")
    # kill 1: as soon as a part file exists
    proc = subprocess.Popen(_cmd(root, out), stdout=log, stderr=log, env=_env())
    rc = _kill_when(proc, lambda: any(parts_dir(out).glob("part-*.h5")) if parts_dir(out).is_dir() else False)
    assert rc == -signal.SIGKILL, "the run finished before it could be killed: make it longer"
    assert not out.exists()
    _check_disk_state(out)
    n_parts_1 = len(list(parts_dir(out).glob("part-*.h5")))
    assert n_parts_1 >= 1

    # kill 2: at a random time (reported, so a failure can be replayed)
    delay = random.Random().uniform(0.5, 4.0)
    print(f"second kill after {delay:.2f}s")
    proc = subprocess.Popen(_cmd(root, out), stdout=log, stderr=log, env=_env())
    t0 = time.monotonic()
    _kill_when(proc, lambda: time.monotonic() - t0 >= delay)
    _check_disk_state(out)

    r = subprocess.run(_cmd(root, out), capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from an earlier run" in r.stdout or "already complete" in r.stdout
    assert not parts_dir(out).exists() and not list(tmp_path.glob("out.h5.tmp*"))
    a, b = load_cache(ref), load_cache(out)
    assert b.video_ids.tolist() == a.video_ids.tolist() and len(b) == N_VIDEOS
    np.testing.assert_array_equal(b.features, a.features)
    np.testing.assert_array_equal(b.scores, a.scores)

    r = subprocess.run(_cmd(root, out), capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0 and "already complete" in r.stdout, r.stdout + r.stderr[-2000:]
    r = subprocess.run(_cmd(root, out)[:-2] + ["--out", str(out), "--norm", "minus1to1"],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode != 0 and "normalization" in r.stderr and "--force" in r.stderr
