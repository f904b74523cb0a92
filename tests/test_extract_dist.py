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
