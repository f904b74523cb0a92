"""The run folder's owner (train_head.runfolder) and the loop's refusals, through real training runs."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests._cachefixture import learnable_cache
from train_head.__main__ import cli
from train_head.config import ConfigError, FinetuneConfig, RunConfig, resolve_config
from train_head.protocol import TrainError
from train_head.runfolder import FILES, PLOTS, RunFolder, RunFolderError
from train_head.trainer import train

REPO = Path(__file__).resolve().parents[1]
TINY = dict(epochs=3, hidden=16, depth=3, voters=3, batch_size=8, checkpoint_every=1, threads=1)


@pytest.fixture()
def cache(tmp_path):
    return learnable_cache(tmp_path / "c.h5", n=30, dim=8)


def test_states_clear_and_typed_config_from_another_folder(cache, tmp_path, monkeypatch):
    cfg = resolve_config("synthetic", cache=str(cache.relative_to(tmp_path)), out=str(tmp_path / "runs"), **TINY)
    monkeypatch.chdir(tmp_path)
    folder = RunFolder(cfg.run_dir())
    assert folder.state == "fresh" and not folder.started
    train(cfg, progress=False)
    folder = RunFolder(tmp_path / cfg.run_dir())
    assert folder.state == "complete" and folder.summary()["complete"] is True
    for name in PLOTS:                              # evaluate's plots belong to the run
        folder.file(name).write_bytes(b"png")
    (folder.path / "notes.txt").write_text("mine")
    monkeypatch.chdir(REPO)                         # the relative cache path no longer resolves from here
    loaded = folder.load_config()
    assert isinstance(loaded, RunConfig) and Path(loaded.cache) == cache and loaded.depth == 3
    folder.clear()
    assert not any((folder.path / f).exists() for f in FILES) and (folder.path / "notes.txt").exists()
    assert folder.state == "fresh"
    with pytest.raises(KeyError):
        folder.file("unknown.txt")


def test_a_changed_config_is_refused_with_the_differences(cache, tmp_path):
    cfg = resolve_config("synthetic", cache=str(cache), out=str(tmp_path / "runs"), **TINY)

    def stop(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, on_epoch_end=stop)
    assert RunFolder(cfg.run_dir()).state == "resumable"
    other = cfg.replace(lr=5e-4)
    with pytest.raises(TrainError, match=r"checkpoint of a different config \(lr: 0.001 -> 0.0005\)"):
        train(other, progress=False)
    # an edited config.json does not make a checkpoint of another config resumable
    cfg_path = RunFolder(cfg.run_dir()).file("config.json")
    rec = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**rec, "lr": 5e-4}))
    with pytest.raises(TrainError, match=r"checkpoint.pt was trained with another config \(lr: 0.001 -> 0.0005\)"):
        train(other, progress=False)
    train(other, progress=False, force=True)
    assert RunFolder(cfg.run_dir()).complete


def test_truncated_checkpoint_and_model_files_give_one_clear_message(cache, tmp_path):
    cfg = resolve_config("synthetic", cache=str(cache), out=str(tmp_path / "runs"), **TINY)
    train(cfg, progress=False)
    folder = RunFolder(cfg.run_dir())
    data = folder.file("model_selected.pt").read_bytes()
    folder.file("model_selected.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(RunFolderError, match="truncated or not a file this project wrote") as e:
        folder.load("model_selected.pt")
    assert "weights_only" not in str(e.value)
    folder.file("summary.json").unlink()
    ck = folder.file("checkpoint.pt").read_bytes()
    folder.file("checkpoint.pt").write_bytes(ck[:100])
    with pytest.raises(RunFolderError, match="checkpoint.pt is truncated"):
        train(cfg, progress=False)


def test_non_finite_and_impossible_options_are_refused_when_parsed(cache):
    for bad, match in ((dict(lr="inf"), "finite"), (dict(theta="nan"), "finite"), (dict(seed=-1), "seed"),
                       (dict(head="coer"), "unknown head"), (dict(depth=30), "GiB")):
        with pytest.raises(ConfigError, match=match):
            resolve_config("synthetic", cache=str(cache), **bad)
    res = CliRunner().invoke(cli, ["train", "--cache", str(cache), "--set", "lr=inf"])
    assert res.exit_code == 2 and "finite" in res.output and "Traceback" not in res.output
    with pytest.raises(ConfigError, match="dataset.*root"):
        FinetuneConfig(dataset="synthetic")
    ft = FinetuneConfig(dataset="synthetic", root="x", resize_hw="32x40", crop=16, train_bn_bias="false")
    assert ft.resize_hw == (32, 40) and ft.train_bn_bias is False and ft.checkpoint_every == 10


def test_one_trainer_per_run_folder(cache, tmp_path):
    """A second `train` on a folder that another process is training fails at once, naming its pid."""
    out = tmp_path / "runs"
    args = [sys.executable, "-m", "train_head", "train", "--cache", str(cache), "--out", str(out),
            "--set", "epochs=400", "--set", "threads=1", "--set", "hidden=16"]
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = out / "synthetic" / "all" / "core" / "seed0.lock"
        deadline = time.time() + 120
        while not (lock.is_file() and (lock.parent / "seed0" / "config.json").is_file()) and time.time() < deadline:
            time.sleep(0.2)
        assert lock.is_file(), "the first trainer never took its lock"
        second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert str(first.pid) in second.stderr and "Traceback" not in second.stderr + second.stdout
    finally:
        first.kill()
        first.wait()
    assert os.path.exists(out / "synthetic" / "all" / "core" / "seed0" / "config.json")
