"""Stage two's command line under hostile input and faults: one clear line, the right exit code, nothing
silently wrong (issue: nothing silently wrong)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests._cachefixture import learnable_cache, learnable_features, write_fake_cache
from data.locks import lock_holder
from train_head.runfolder import RunFolder

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "hidden=16", "--set", "depth=3", "--set", "threads=1", "--voters", "3"]


def cli(*args, timeout=300):
    r = subprocess.run([sys.executable, "-m", "train_head", *map(str, args)], cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return r


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return learnable_cache(tmp_path_factory.mktemp("c") / "c.h5", n=30, dim=8)


def test_out_in_the_way_and_empty_seeds(cache, tmp_path):
    (tmp_path / "file").write_text("x")
    r = cli("train", "--cache", cache, "--out", tmp_path / "file", "--epochs", 1, *FAST)
    assert r.returncode == 1 and "in the way" in r.stderr and "--out" in r.stderr
    r = cli("train", "--cache", cache, "--out", tmp_path / "r", "--seeds", ",", *FAST)
    assert r.returncode == 2 and "names no seed" in r.stderr


def test_nan_features_never_give_a_complete_run(tmp_path):
    path = learnable_cache(tmp_path / "nan.h5", n=30, dim=8)
    with h5py.File(path, "r+") as h5:
        h5["features"][3] = np.nan
    r = cli("train", "--cache", path, "--out", tmp_path / "r", "--epochs", 2, *FAST)
    assert r.returncode == 1 and "non-finite" in r.stderr
    run = RunFolder(tmp_path / "r" / "synthetic" / "all" / "core" / "seed0")
    assert run.state != "complete" and not run.file("summary.json").exists()


def test_single_video_class_is_skipped_and_small_validation_is_warned(tmp_path):
    n = 24
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 100, n)
    cls = ["big"] * (n - 1) + ["lonely"]
    split = ["train" if i % 3 else "test" for i in range(n)]
    path = write_fake_cache(tmp_path / "c.h5", learnable_features(scores, dim=8), scores, split=split, cls=cls)
    r = cli("train", "--cache", path, "--out", tmp_path / "r", "--class", "all", "--epochs", 2, *FAST)
    assert r.returncode == 0, r.stderr
    assert "SKIPPED" in r.stderr and "lonely" in r.stderr
    summary = json.loads((tmp_path / "r" / "synthetic" / "big" / "core" / "seed0" / "summary.json").read_text())
    assert summary["n_val"] < 10 and summary["warnings"] and "final-epoch" in summary["warnings"][0]
    assert "WARNING" in r.stderr and "validation split has only" in r.stderr


def test_killing_a_parallel_command_stops_its_workers(cache, tmp_path):
    out = tmp_path / "r"
    args = [sys.executable, "-m", "train_head", "train", "--cache", str(cache), "--out", str(out), "--seeds", "0,1",
            "--jobs", "2", "--epochs", "3000", *FAST]
    parent = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    locks = [out / "synthetic" / "all" / "core" / f"seed{s}.lock" for s in (0, 1)]
    try:
        deadline = time.time() + 180
        while not all(p.is_file() and p.read_text().strip() for p in locks) and time.time() < deadline:
            time.sleep(0.3)
        assert all(p.is_file() for p in locks), "the workers never started"
        pids = [lock_holder(p)["pid"] for p in locks]
        assert all(pids) and parent.pid not in pids
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 20
    alive = pids
    while alive and time.time() < deadline:
        alive = [p for p in pids if _alive(p)]
        time.sleep(0.2)
    assert not alive, f"pool workers {alive} outlived the killed command"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                                   # a zombie waiting for its (gone) parent counts as ended
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_two_csv_datasets_never_share_run_folders(tmp_path):
    from data.fileio import dataset_label
    from train_head.config import resolve_config
    from train_head.trainer import train

    runs = []
    for sub in ("a", "b"):
        root = tmp_path / sub / "dives.csv"            # same file name, two folders
        scores = np.random.default_rng(1).uniform(0, 100, 24)
        path = write_fake_cache(tmp_path / f"{sub}.h5", learnable_features(scores, dim=8), scores,
                                split=["train" if i % 3 else "test" for i in range(24)],
                                attrs={"dataset": "csv", "dataset_root": str(root)})
        cfg = resolve_config("csv", cache=str(path), out=str(tmp_path / "runs"), epochs=1, hidden=16, depth=3)
        runs.append(train(cfg, progress=False))
        assert runs[-1].parts[-4] == dataset_label("csv", root) != "csv"
    assert runs[0] != runs[1] and all((r / "summary.json").is_file() for r in runs)
