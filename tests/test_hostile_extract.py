"""Hostile input, faults and stale state for stage one (`python -m extract features`) and the cache.

Every case ends in one clear line and a non-zero exit, or in the right result; nothing finished is lost;
no traceback for an error the user caused:
1. NaN/inf in the weights (refused, naming the file) and in the features (the video is recorded as failed,
   never written); 2. edited labels are refreshed in a complete cache (features kept) and taken from the
   dataset when an interrupted run is merged; 3. a read-only folder, a full disk (a real tiny tmpfs when
   root may mount one), every video path wrong, --out naming a folder; 4. one extraction per output file
   (lock); 6. bad option values are usage errors.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cache import CacheMismatch, CacheWriteError, VideoRecord, load_cache, parts_dir, sync_labels, write_cache
from cache import store as cstore
from data import get_dataset
from data.locks import LockedError, exclusive_lock, lock_path
from data.synthetic import write_synthetic
from data.transforms import FrameConfig, default_views
from extract.__main__ import main as extract_cli

FAST = ["--weights", "random", "--device", "cpu", "--views", "test-only", "--frame-size", "32,32", "--crop", "32",
        "--n-clips", "1", "--batch-clips", "1", "--workers", "0", "--part-every", "1", "--no-progress"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def cli(*args):
    """`python -m extract ...` in-process: (exit code, output). An uncaught exception fails the test."""
    r = CliRunner().invoke(extract_cli, list(map(str, args)))
    assert r.exception is None or isinstance(r.exception, SystemExit), f"uncaught {r.exception!r}\n{r.output}"
    assert "Traceback" not in r.output
    return r.exit_code, r.output


def error_line(output):
    lines = [ln for ln in output.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1, output
    return lines[0]


def write_frames(folder, values, size=(8, 8)):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(values, 1):
        Image.fromarray(np.full((*size, 3), v, np.uint8)).save(folder / f"img_{i:05d}.png")


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("hostile") / "syn", n_videos=4, seed=1, size=32)


@pytest.fixture()
def csv_root(tmp_path):
    """A CSV dataset of 4 frame folders (16 frames each)."""
    for k in range(4):
        write_frames(tmp_path / "clips" / f"c{k}", [(20 * k + 5 * t) % 256 for t in range(16)])
    p = tmp_path / "scores.csv"
    p.write_text("Video,Score,Difficulty,Split\n" + "".join(
        f"clips/c{k},{10 + k},{2.0 + k / 10},{'test' if k == 3 else 'train'}\n" for k in range(4)))
    return p


def csv_args(csv_root, out):
    return ["features", "--dataset", "csv", "--root", csv_root, "--opt", "n_frames=16", "--out", out, *FAST]


# --------------------------------------------------------------------------------- 1. non-finite numbers
def _random_state_dict():
    from extract.i3d import I3D

    return I3D().init_random(0).state_dict()


def test_nan_in_weights_is_refused_naming_the_file(syn, tmp_path):
    sd = _random_state_dict()
    sd["Mixed_4b.b0.conv.weight"][0, 0, 0, 0, 0] = float("nan")
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    code, out = cli("features", "--dataset", "synthetic", "--root", syn, "--out", tmp_path / "f.h5",
                    *[a if a != "random" else str(path) for a in FAST])
    line = error_line(out)
    assert code == 1 and str(path) in line and "NaN/inf" in line and "Mixed_4b.b0.conv.weight" in line
    assert not (tmp_path / "f.h5").exists()


def test_features_beyond_float16_are_failures_never_stored(syn, tmp_path):
    sd = _random_state_dict()
    for k in sd:
        if k.startswith("Mixed_5c") and k.endswith("bn.bias"):
            sd[k] += 1e6                        # finite weights whose features overflow float16 (inf on disk)
    path = tmp_path / "loud.pt"
    torch.save(sd, path)
    out = tmp_path / "f.h5"
    code, text = cli("features", "--dataset", "synthetic", "--root", syn, "--out", out,
                     *[a if a != "random" else str(path) for a in FAST])
    assert code == 1 and "all 4 videos failed" in error_line(text) and "non-finite features" in error_line(text)
    assert not out.exists()


def test_a_nan_video_is_recorded_as_failed_and_the_others_are_kept(syn, tmp_path, monkeypatch, caplog):
    import extract.pipeline as pl

    real, calls = pl._forward, []

    def forward(model, x, device, precision):
        y = real(model, x, device, precision)
        calls.append(1)
        if len(calls) == 2:                     # one clip per video and per batch: the second video
            y[0, 5] = float("nan")
        return y

    monkeypatch.setattr(pl, "_forward", forward)
    out = tmp_path / "f.h5"
    ds = get_dataset("synthetic", syn)
    pl.extract_dataset(ds, out, views=default_views("synthetic")[:1], frame_cfg=FrameConfig((32, 32), 32),
                       n_clips=1, weights="random", device="cpu", batch_clips=1, workers=0, part_every=1,
                       progress=False)
    c = load_cache(out)
    second = ds.samples()[1].video_id
    assert len(c) == 3 and second not in c.video_ids.tolist()
    assert "non-finite features" in c.failed[second]
    assert np.isfinite(c.features.astype(np.float32)).all()
    assert any(second in r.getMessage() and "non-finite" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------- 2. labels
def test_edited_labels_are_refreshed_without_reextraction(csv_root, tmp_path):
    out = tmp_path / "f.h5"
    code, text = cli(*csv_args(csv_root, out))
    assert code == 0, text
    before = load_cache(out)
    assert before.scores.tolist() == [10.0, 11.0, 12.0, 13.0]
    sha0 = before.attrs["labels_sha256"]
    mtime = out.stat().st_mtime_ns

    code, text = cli(*csv_args(csv_root, out))                 # unchanged: nothing to do, file untouched
    assert code == 0 and "nothing to do" in text and out.stat().st_mtime_ns == mtime

    lines = csv_root.read_text().splitlines()
    lines[1] = lines[1].replace(",10,", ",10.5,")
    lines[2] = lines[2].replace(",11,", ",1,")
    lines[3] = lines[3].replace(",12,", ",2,").replace(",train", ",test")
    csv_root.write_text("\n".join(lines) + "\n")
    code, text = cli(*csv_args(csv_root, out))
    assert code == 0, text
    assert "3 scores, 1 split changed; labels refreshed (features kept)" in text
    after = load_cache(out)
    assert after.scores.tolist() == [10.5, 1.0, 2.0, 13.0]
    assert after.split.tolist() == ["train", "train", "test", "test"]
    np.testing.assert_array_equal(after.features, before.features)
    assert after.attrs["labels_sha256"] != sha0 and "labels_updated" in after.attrs
    assert after.attrs["created"] == before.attrs["created"]

    code, text = cli(*csv_args(csv_root, out))
    assert code == 0 and "nothing to do" in text


def test_resumed_run_merges_the_current_labels_not_those_of_the_parts(csv_root, tmp_path, monkeypatch, caplog):
    import extract.pipeline as pl

    out = tmp_path / "f.h5"
    kw = dict(views=default_views("csv")[:1], frame_cfg=FrameConfig((32, 32), 32), n_clips=1, weights="random",
              device="cpu", batch_clips=1, workers=0, part_every=1, progress=False)

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cstore, "merge_parts", killed)
    with pytest.raises(KeyboardInterrupt):
        pl.extract_dataset(get_dataset("csv", csv_root, n_frames=16), out, **kw)
    monkeypatch.undo()
    assert not out.exists() and len(list(parts_dir(out).glob("part-*.h5"))) == 4
    assert not lock_path(out).exists()
    csv_root.write_text(csv_root.read_text().replace(",12,", ",99,"))
    pl.extract_dataset(get_dataset("csv", csv_root, n_frames=16), out, **kw)
    assert load_cache(out).scores.tolist() == [10.0, 11.0, 99.0, 13.0]
    assert any("1 score changed" in r.getMessage() for r in caplog.records)


def test_a_changed_frame_key_is_refused_not_relabelled(tmp_path):
    rec = VideoRecord(0, "01_01", np.zeros((1, 1, 4), np.float16), 50.0, 2.0, "train", "mtl_aqa",
                      {}, {"end_frame": 100, "judge_scores": [7.0] * 7})
    out = write_cache(tmp_path / "m.h5", [rec], [], {"views": [{"name": "test", "role": "test"}]})

    class Lab:
        video_id, score, difficulty, split, cls, folds = "01_01", 50.0, 2.0, "train", "mtl_aqa", {}
        extra = {"end_frame": 100, "judge_scores": [7.0] * 7}
    assert sync_labels(out, {"01_01": Lab}, frame_keys=("end_frame",)) == {}
    Lab.extra = {"end_frame": 110, "judge_scores": [7.0] * 7}
    with pytest.raises(CacheMismatch, match=r"end_frame changed for 1 videos \(e.g. 01_01: 100 -> 110\)"):
        sync_labels(out, {"01_01": Lab}, frame_keys=("end_frame",))
    Lab.extra = {"end_frame": 100, "judge_scores": [8.0] * 7}
    assert sync_labels(out, {"01_01": Lab}, frame_keys=("end_frame",)) == {"extra": 1}
    assert load_cache(out).extra[0]["judge_scores"] == [8.0] * 7


# ------------------------------------------------------------------------------------ 3. environment
def test_out_naming_a_folder_is_refused_and_the_folder_untouched(syn, tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    for extra in ([], ["--force"]):
        code, out = cli("features", "--dataset", "synthetic", "--root", syn, "--out", folder, *FAST, *extra)
        assert code == 1 and "is a folder" in error_line(out) and str(folder) in error_line(out)
        assert (folder / "keep.txt").read_text() == "mine"
    from cache.__main__ import main as cache_cli
    r = CliRunner().invoke(cache_cli, ["info", str(folder)])
    assert r.exit_code == 1 and "is a folder" in r.output and "Traceback" not in r.output


def test_every_video_path_wrong_is_one_error_line(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("video,score,split\nnope/a.mp4,1,train\nnope/b,2,test\nnope/c.avi,3,train\n")
    r = subprocess.run([sys.executable, "-m", "extract", "features", "--dataset", "csv", "--root", str(p),
                        "--opt", "n_frames=16", "--out", str(tmp_path / "f.h5"), *FAST],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line = error_line(r.stderr)
    assert "all 3 videos failed" in line and "nope/a.mp4" in line and "--root" in line
    assert not (tmp_path / "f.h5").exists()


@contextlib.contextmanager
def _tmpfs(path, options):
    """A tmpfs at `path` (root only): skips the test when it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture()
def read_only_dir(tmp_path):
    d = tmp_path / "ro"
    if os.geteuid() != 0:
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    with _tmpfs(d, "size=1m,ro"):
        yield d


def test_read_only_output_folder_is_one_error_line(syn, read_only_dir):
    code, out = cli("features", "--dataset", "synthetic", "--root", syn, "--out", read_only_dir / "f.h5", *FAST)
    line = error_line(out)
    assert code == 1 and str(read_only_dir) in line and "cannot write" in line
    assert "Read-only file system" in line or "Permission denied" in line


def test_full_disk_writing_a_part_keeps_the_finished_parts(syn, tmp_path, monkeypatch):
    real, calls = cstore.write_file_atomic, []

    def write(path, tmp, data):
        calls.append(path)
        if len(calls) >= 3:                     # the disk is full from the third part on
            raise cstore.write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return real(path, tmp, data)

    monkeypatch.setattr(cstore, "write_file_atomic", write)
    out = tmp_path / "f.h5"
    code, text = cli("features", "--dataset", "synthetic", "--root", syn, "--out", out, *FAST)
    line = error_line(text)
    assert code == 1 and "No space left on device" in line and "part-000-000002.h5" in line
    assert "the 2 videos finished before are kept" in line
    monkeypatch.undo()
    assert len(list(parts_dir(out).glob("part-*.h5"))) == 2 and not list(parts_dir(out).glob("*.tmp"))
    code, text = cli("features", "--dataset", "synthetic", "--root", syn, "--out", out, *FAST)
    assert code == 0 and "2 resumed from an earlier run" in text


def test_full_disk_merge_keeps_the_parts(tmp_path, monkeypatch):
    recs = [VideoRecord(i, f"v{i}", np.ones((1, 1, 4), np.float16), float(i), None, "train", "c") for i in range(3)]
    w = cstore.PartWriter(tmp_path / "f.h5", {"n_videos": 3, "views": []}, (1, 1, 4), every=1)
    for r in recs:
        w.add(r)
    real = cstore.os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(cstore.os, "write", full)
    with pytest.raises(CacheWriteError, match=r"No space left on device \(ENOSPC\).*parts.*re-run"):
        cstore.merge_parts(tmp_path / "f.h5")
    monkeypatch.setattr(cstore.os, "write", real)
    assert not (tmp_path / "f.h5").exists() and len(list(parts_dir(tmp_path / "f.h5").glob("part-*"))) == 3
    assert not list(tmp_path.glob("f.h5.tmp*"))


def test_real_full_disk_is_one_error_line_and_a_rerun_resumes(tmp_path):
    """A tiny tmpfs that fills up while the extraction runs: no HDF5 error stream, no crash."""
    root = write_synthetic(tmp_path / "syn", n_videos=10, seed=2, size=32)
    with _tmpfs(tmp_path / "disk", "size=3m") as disk:
        out = disk / "f.h5"
        cmd = [sys.executable, "-m", "extract", "features", "--dataset", "synthetic", "--root", str(root),
               "--out", str(out), *FAST]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        t0 = time.monotonic()
        while not list(parts_dir(out).glob("part-*.h5")) if parts_dir(out).is_dir() else True:
            assert proc.poll() is None and time.monotonic() - t0 < 300, "no part file appeared"
            time.sleep(0.02)
        with open(disk / "filler", "wb") as fh:      # fill the disk
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 1, (proc.returncode, stderr[-3000:])
        assert "Traceback" not in stderr and "HDF5" not in stderr
        line = error_line(stderr)
        assert "No space left on device" in line and "re-run the same command" in line
        kept = sorted(parts_dir(out).glob("part-*.h5"))
        assert kept and not list(parts_dir(out).glob("*.tmp"))
        for p in kept:
            with h5py.File(p, "r") as h5:
                assert h5["features"].shape[0] == h5["index"].shape[0]
        (disk / "filler").unlink()
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"{len(kept)} resumed from an earlier run" in r.stdout
        assert len(load_cache(out)) == 10


# ------------------------------------------------------------------------------------------- 4. lock
def test_lock_api(tmp_path):
    target = tmp_path / "sub" / "f.h5"
    with exclusive_lock(target, "feature extraction") as lock:
        assert lock == lock_path(target) == tmp_path / "sub" / "f.h5.lock"
        assert f"pid={os.getpid()}" in lock.read_text()
        with pytest.raises(LockedError) as e:
            with exclusive_lock(target, "a training run"):
                pass
        assert e.value.pid == os.getpid() and f"pid {os.getpid()}" in str(e.value)
        assert isinstance(e.value, RuntimeError)
    assert not lock_path(target).exists()
    with exclusive_lock(target, "again"):
        pass


def test_lock_on_a_filesystem_without_flock_warns_and_goes_on(tmp_path, monkeypatch, caplog):
    import data.locks as locks

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(locks.fcntl, "flock", no_flock)
    ran = []
    with exclusive_lock(tmp_path / "f.h5", "feature extraction"):
        ran.append(1)
    assert ran and any("does not support locks" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OSError):                 # a lock file that cannot be created is the OSError it is
        with exclusive_lock(tmp_path / "a_file" / "f.h5"):
            pass


def test_second_extraction_on_the_same_file_fails_at_once_naming_the_holder(syn, tmp_path):
    out = tmp_path / "f.h5"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom data.locks import exclusive_lock\n"
                               f"with exclusive_lock({str(out)!r}, 'feature extraction'):\n"
                               "    print('held', flush=True)\n    time.sleep(600)\n"],
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        code, text = cli("features", "--dataset", "synthetic", "--root", syn, "--out", out, *FAST)
        line = error_line(text)
        assert code == 1 and f"pid {holder.pid}" in line and str(out) in line
        assert time.monotonic() - t0 < 60 and not parts_dir(out).exists()
    finally:
        holder.kill()
        holder.wait()
    code, text = cli("features", "--dataset", "synthetic", "--root", syn, "--out", out, *FAST)
    assert code == 0, text
    assert not lock_path(out).exists()


# ----------------------------------------------------------------------------------------- 6. options
@pytest.mark.parametrize("opt,value", [("--max-videos", "0"), ("--max-videos", "-2"), ("--batch-clips", "0"),
                                       ("--batch-clips", "-4"), ("--workers", "-1"), ("--n-clips", "0"),
                                       ("--part-every", "0"), ("--crop", "0"), ("--crop", "-5")])
def test_bad_counts_are_usage_errors(syn, tmp_path, opt, value):
    args = ["features", "--dataset", "synthetic", "--root", syn, "--out", tmp_path / "f.h5", *FAST]
    i = args.index(opt) if opt in args else None
    args = args[:i] + args[i + 2:] if i is not None else args
    code, out = cli(*args, opt, value)
    assert code == 2 and opt in out and value in out
    assert not (tmp_path / "f.h5").exists() and not parts_dir(tmp_path / "f.h5").exists()


@pytest.mark.parametrize("extra", [["--crop", "300"], ["--crop", "40", "--resize-mode", "bilinear_short_side"]])
def test_crop_larger_than_the_resized_frame_is_a_usage_error(syn, tmp_path, extra):
    args = [a for a in FAST]
    i = args.index("--crop")
    del args[i:i + 2]
    code, out = cli("features", "--dataset", "synthetic", "--root", syn, "--out", tmp_path / "f.h5", *args, *extra)
    assert code == 2 and "--crop" in out and "larger than the resized frame" in out


def test_api_counts_are_checked(syn, tmp_path):
    from extract.pipeline import run_extraction

    for kw in ({"batch_clips": 0}, {"workers": -1}, {"max_videos": 0}, {"n_clips": 0}, {"part_every": 0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            run_extraction(get_dataset("synthetic", syn), tmp_path / "f.h5", views=default_views("synthetic")[:1],
                           frame_cfg=FrameConfig((32, 32), 32), weights="random", device="cpu", **kw)
