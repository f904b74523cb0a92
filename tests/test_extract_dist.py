"""Two CPU processes under torchrun (gloo) produce the same cache as one process (about 12 s)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from cache import load_cache, parts_dir
from data.synthetic import write_synthetic
from extract.dist import DistInfo, dist_info, shard

ARGS = ["features", "--dataset", "synthetic", "--weights", "random", "--device", "cpu", "--views",
        "test,center_flip", "--frame-size", "32,32", "--crop", "32", "--n-clips", "2",
        # one video = 2 views x 2 clips = one batch in both runs, and one thread per process: float32
        # convolutions then see the same inputs in the same batches, so results are bitwise equal
        "--batch-clips", "4", "--workers", "0", "--part-every", "1", "--no-progress"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def test_dist_info_and_shard(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist_info() == DistInfo(0, 1, 0) and not dist_info().enabled
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist_info()
    assert info.enabled and not info.is_main
    assert shard(list(range(7)), info) == [1, 4]
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK"):
        dist_info()


def test_torchrun_two_processes_equal_single_process(tmp_path):
    root = write_synthetic(tmp_path / "syn", n_videos=5, seed=3, size=32)
    single, multi = tmp_path / "single.h5", tmp_path / "multi.h5"
    r = subprocess.run([sys.executable, "-m", "extract", *ARGS, "--root", str(root), "--out", str(single)],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "extract", "-v", *ARGS, "--root", str(root), "--out", str(multi)],   # -v: INFO logs
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "[rank 1]" in r.stderr and "2 process(es)" in r.stdout
    assert not parts_dir(multi).exists()
    a, b = load_cache(single), load_cache(multi)
    assert b.video_ids.tolist() == a.video_ids.tolist()          # dataset order, not rank order
    assert b.features.dtype == np.float16
    np.testing.assert_array_equal(b.features, a.features)
    for k in ("scores", "difficulty", "split", "cls"):
        np.testing.assert_array_equal(getattr(b, k), getattr(a, k))
    assert b.extra == a.extra and b.views == a.views
    drop = {"created", "code_version"}
    assert {k: v for k, v in b.attrs.items() if k not in drop} == {k: v for k, v in a.attrs.items() if k not in drop}


def test_one_gpu_per_rank_rules(monkeypatch):
    import torch

    from extract.dist import DistError, rank_device
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    on = DistInfo(rank=3, world_size=4, local_rank=1)
    assert rank_device(torch.device("cuda"), on) == torch.device("cuda", 1)
    assert rank_device(torch.device("cpu"), on) == torch.device("cpu")
    assert rank_device(torch.device("cuda", 1), DistInfo()) == torch.device("cuda", 1)     # no torchrun
    with pytest.raises(DistError, match="--device cuda:0 under torchrun"):
        rank_device(torch.device("cuda", 0), on)
    with pytest.raises(DistError, match="two ranks would share a GPU.*--nproc_per_node 2"):
        rank_device(torch.device("cuda"), DistInfo(rank=2, world_size=4, local_rank=2))


def test_timeouts_are_short_by_default_and_configurable(monkeypatch):
    import datetime as dt

    from extract.dist import collective_timeout, wait_timeout
    monkeypatch.delenv("AQA_DIST_TIMEOUT_MIN", raising=False)
    monkeypatch.delenv("AQA_DIST_WAIT_H", raising=False)
    assert collective_timeout() == dt.timedelta(minutes=10) and wait_timeout() == dt.timedelta(hours=24)
    monkeypatch.setenv("AQA_DIST_TIMEOUT_MIN", "0.5")
    monkeypatch.setenv("AQA_DIST_WAIT_H", "2")
    assert collective_timeout() == dt.timedelta(seconds=30) and wait_timeout() == dt.timedelta(hours=2)
    monkeypatch.setenv("AQA_DIST_TIMEOUT_MIN", "soon")
    with pytest.raises(ValueError, match="AQA_DIST_TIMEOUT_MIN"):
        collective_timeout()


def test_a_failing_rank_stops_the_waiting_rank_at_once(tmp_path):
    """Two gloo processes started by hand (no torchrun agent that would kill the survivor): rank 1 fails
    on its first video (--strict); rank 0 finishes its share, then stops at the barrier with rank 1's
    error instead of waiting there for hours (AQA_DIST_WAIT_H is 24 by default)."""
    import shutil
    import socket
    import time

    root = write_synthetic(tmp_path / "syn", n_videos=4, seed=3, size=32)
    shutil.rmtree(root / "diving-out" / "002")             # video 1: rank 1's first (round robin)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    t0 = time.monotonic()
    for rank in (0, 1):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "extract", *ARGS, "--strict", "--root", str(root), "--out", str(tmp_path / "f.h5")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    took = time.monotonic() - t0
    assert [p.returncode for p in procs] == [1, 1], outs
    err0, err1 = outs[0][1].strip().splitlines()[-1], outs[1][1].strip().splitlines()[-1]
    assert "002" in err1 and "rank 1 failed" in err0 and "002" in err0 and "rank 0 stops too" in err0
    assert "Traceback" not in outs[0][1] + outs[1][1]
    assert took < 120
    assert parts_dir(tmp_path / "f.h5").is_dir() and not (tmp_path / "f.h5").exists()   # rank 0's share kept
