"""The user's own videos: a CSV dataset of real short clips (written with PyAV) through features, training,
report and scoring; the CSV frame rule (any length, documented notices once per video, errors that say
what to do); `evaluate score` with the final model and the small-validation note; `make clean`."""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data import get_dataset
from data.base import DataError, even_indices
from data.csv_dataset import read_resampled
from data.transforms import FrameConfig
from tests.testutil import write_frames, write_video

ROOT = Path(__file__).resolve().parents[1]
T = 103                      # the CSV dataset's default window: the clips below are shorter or longer


def _cli(*args, cwd=ROOT, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)}\n{r.stdout}\n{r.stderr}"
    return r


def _grey_clip(path, n, level, size=(24, 32)):
    """n frames around grey `level` (a slow ramp, so the clip moves), as a real video file."""
    return write_video(path, [int(np.clip(level + 2 * (k % 8), 0, 255)) for k in range(n)], size=size)


# ------------------------------------------------------------------------------------- the frame rule
def test_any_length_is_resampled_to_the_window(tmp_path):
    short = write_video(tmp_path / "short.mp4", [10 * k for k in range(20)], size=(16, 16))   # 20 frames
    x, n = read_resampled(short, T)
    assert n == 20 and x.shape == (T, 16, 16, 3)
    want = np.array([10 * k for k in even_indices(20, T)])        # frame i = source floor((i + .5) * n / T)
    assert np.abs(x[:, 8, 8, 0].astype(int) - want).max() <= 3    # each frame repeated ~5x, in order
    long_ = write_video(tmp_path / "long.avi", [k % 250 for k in range(300)], size=(16, 16))
    y, n = read_resampled(long_, T)
    assert n == 300 and y.shape[0] == T
    assert np.abs(y[:, 8, 8, 0].astype(int) - np.array([k % 250 for k in even_indices(300, T)])).max() <= 3
    folder = write_frames(tmp_path / "frames", [50, 100], size=(8, 8))
    z, n = read_resampled(folder, T)
    assert n == 2 and z.shape[0] == T and z[: T // 2, 0, 0, 0].max() < 75 < z[T // 2 + 1:, 0, 0, 0].min()


def test_notices_once_per_video_first_of_a_kind_at_warning(tmp_path, caplog):
    for i in range(3):
        _grey_clip(tmp_path / f"s{i}.mp4", 40, 60 * i)                          # short, landscape 4:3
    _grey_clip(tmp_path / "tall.mp4", 150, 90, size=(32, 16))                  # long and portrait
    (tmp_path / "s.csv").write_text("video,score,split\ns0.mp4,1,train\ns1.mp4,2,train\ns2.mp4,3,test\n"
                                    "tall.mp4,4,test\n")
    ds = get_dataset("csv", tmp_path / "s.csv")
    ds.frame_cfg = FrameConfig((64, 48), 40, "imagenet", "bilinear_short_side")
    with caplog.at_level(logging.INFO, logger="data.csv_dataset"):
        for s in ds.samples() + ds.samples():                                   # every video read twice
            assert ds.read_frames(s).shape[0] == T
    recs = [r for r in caplog.records if r.name == "data.csv_dataset" and "window" in r.getMessage()]
    assert len(recs) == 4                                                       # once per video
    by = {Path(r.getMessage().split(":")[0]).name: r for r in recs}
    assert by["s0.mp4"].levelno == logging.WARNING and "-v shows them" in by["s0.mp4"].getMessage()
    assert by["s1.mp4"].levelno == by["s2.mp4"].levelno == logging.INFO
    assert "40 frames, shorter than the window of 103: each frame repeated about 2.6 times" in \
        by["s1.mp4"].getMessage()
    tall = by["tall.mp4"].getMessage()
    assert by["tall.mp4"].levelno == logging.WARNING                            # first long, first portrait
    assert "150 frames, longer than the window of 103" in tall and "every 1.5th frame" in tall
    assert "portrait frames of 16x32" in tall and "scaled by 3 to 96x48" in tall and "aspect ratio is kept" in tall
    assert "keeps 42% of the height and 83% of the width" in tall
    caplog.clear()                                    # frame settings unknown: both modes' rule in words
    plain = get_dataset("csv", tmp_path / "s.csv")
    with caplog.at_level(logging.INFO, logger="data.csv_dataset"):
        plain.read_frames([s for s in plain.samples() if s.video_id == "tall.mp4"][0])
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "data.csv_dataset"]
    assert "portrait frames of 16x32" in msg and "--resize-mode nearest (the default) stretched" in msg


def test_unusable_videos_say_what_to_do(tmp_path):
    import av

    with av.open(str(tmp_path / "empty.avi"), "w") as out:                    # a video stream without frames
        st = out.add_stream("mpeg4", rate=30)
        st.width, st.height, st.pix_fmt = 32, 24, "yuv420p"
        out.start_encoding()                                                    # the header, no frame
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 20)
    (tmp_path / "s.csv").write_text("video,score\nempty.avi,1\njunk.mp4,2\nnowhere.mp4,3\nok.mp4,4\n")
    ds = get_dataset("csv", tmp_path / "s.csv")
    s = {x.video_id: x for x in ds.samples()}
    with pytest.raises(DataError, match=r"empty.avi: the video has no frames; re-encode it .*ffmpeg.* or remove "
                                        r"its row from .*s.csv \(video 'empty.avi'\)"):
        ds.read_frames(s["empty.avi"])
    with pytest.raises(DataError, match=r"junk.mp4: unreadable video .*; re-encode it"):
        ds.read_frames(s["junk.mp4"])
    with pytest.raises(DataError, match=r"nowhere.mp4: video file or frame folder not found; check the path in "
                                        r"the video column of .*s.csv \(relative to its folder\)"):
        ds.read_frames(s["nowhere.mp4"])


# ---------------------------------------------------------------------------- the whole way, by CLI
def test_csv_of_short_real_clips_through_features_training_report_and_score(tmp_path):
    rng = np.random.default_rng(0)
    n = 24
    scores = np.round(rng.uniform(10, 90, n), 1)
    rows = ["video,score"]                                  # no split column: a saved, seeded split is made
    for i, sc in enumerate(scores):
        _grey_clip(tmp_path / "clips" / f"c{i:02d}.mp4", 40, int(sc * 2.5))       # 40 frames, level ~ score
        rows.append(f"clips/c{i:02d}.mp4,{sc}")
    csv = tmp_path / "dives.csv"
    csv.write_text("\n".join(rows) + "\n")
    cache = tmp_path / "f.h5"
    r = _cli("extract", "features", "--dataset", "csv", "--root", str(csv), "--out", str(cache),
             "--weights", "random", "--frame-size", "32,32", "--crop", "32", "--views", "test,center_flip",
             "--n-clips", "2", "--device", "cpu", "--no-progress")
    assert cache.is_file() and (tmp_path / "dives.csv.split.csv").is_file()
    short = [ln for ln in r.stderr.splitlines() if "shorter than the window of 103" in ln]
    assert len(short) == 1 and "-v shows them" in short[0]                 # 24 short videos: one warning
    runs = tmp_path / "runs"
    _cli("train_head", "train", "--cache", str(cache), "--head", "core", "--epochs", "3", "--seeds", "0,1",
         "--out", str(runs), "--depth", "2", "--voters", "3", "--set", "hidden=16", "--set", "threads=1")
    run_dirs = sorted(p.parent for p in runs.rglob("summary.json"))
    assert len(run_dirs) == 2
    summary = json.loads((run_dirs[0] / "summary.json").read_text())
    assert summary["complete"] and 0 < summary["n_val"] < 10               # a small validation split
    rep = _cli("evaluate", "report", str(runs))
    assert "core" in rep.stdout and "rho" in rep.stdout
    new = _grey_clip(tmp_path / "mine.mp4", 25, 120, size=(40, 24))          # a short portrait clip
    sc = _cli("evaluate", "score", str(new), "--run", str(run_dirs[0]), "--voters", "3", "--device", "cpu",
              "--json")
    res = json.loads(sc.stdout)
    assert np.isfinite(res["score"]) and res["model"] == "selected" and res["frames"]["n_source"] == 25
    notes = " ".join(res["notes"])
    assert "25 frames, fewer than the window of 103" in notes
    assert "portrait frames of 24x40" in notes and "stretched to 32x32" in notes
    assert f"only {summary['n_val']} videos (< 10), too small to trust" in notes
    from evaluate.score import score_video                                  # the final-epoch model
    fin = score_video(new, run_dirs[0], voters=3, device="cpu", model="final")
    assert fin["model"] == "final" and fin["epoch"] == summary["final_epoch"]
    assert not any("too small" in x for x in fin["notes"])


# --------------------------------------------------------------------------------------- make clean
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_clean_keeps_real_features_and_clean_features_asks(tmp_path):
    art = tmp_path / "art"
    keep = [art / "features/aqa7-kinetics400.h5", art / "runs/aqa7/diving/core/seed0/summary.json",
            art / "datasets/mine/a.jpg"]
    gone = [art / "features/synthetic-kinetics400.h5", art / "features/synthetic-kinetics400.h5.lock",
            art / "features/synthetic-kinetics400.h5.parts/part-0-0.h5", art / "datasets/synthetic/x.jpg",
            art / "runs/synthetic/all/core/seed0/summary.json", art / "results.csv"]
    for p in keep + gone:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    mk = ["make", "-s", "-C", str(ROOT), f"ART={art}", f"RUNS={art}/runs"]
    subprocess.run(mk + ["clean"], check=True, capture_output=True, timeout=60)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in gone)
    r = subprocess.run(mk + ["clean-features"], input="n\n", capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "aqa7-kinetics400.h5" in r.stdout and "nothing deleted" in r.stdout
    assert keep[0].exists()
    r = subprocess.run(mk + ["clean-features"], input="y\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not keep[0].exists() and keep[1].exists()
    help_ = subprocess.run(["make", "-s", "-C", str(ROOT), "help"], capture_output=True, text=True, timeout=60)
    assert "make clean " in help_.stdout and "make clean-features" in help_.stdout
