"""FineDiving reader (data/finediving.py) on the shipped annotation and on a tiny rendered stand-in, and
stage one and two end to end on the stand-in.

`write_finediving(root, ...)` writes the stand-in (the real videos are not on these machines): the
published layout `<competition>/<index>/<frame number>.jpg`, with the coarse and fine-grained
annotations and the split files in `<root>/Annotations/`. Dives last 63 to 149 frames; panels of 7, 3
and 5 judges (as in the real annotation), dive scores made from the awards by the sport's rule. Frames
are solid grey with level `level(frame number)` (so a test can tell which frame a reader returned) or,
with `render=True`, the synthetic demo's rendered dive (data/synthetic.py) stretched to the dive's
length, whose awards then follow what is visible.
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from data import DataError, get_dataset
from data.finediving import JUDGE_RULES, sample_frame_numbers, score_from_awards
from tests.testutil import write_frames

COMPETITIONS = ("StandInCup2024_Men3m_final_r1", "StandInCup2024_Women10m_semifinal_r2")
SUB_ACTIONS = {1: "Forward", 2: "Back", 23: "2.5 Soms.Tuck", 36: "Entry"}


def level(frame: int) -> int:
    """Grey level of frame number `frame` in the non-rendered stand-in."""
    return (5 * frame) % 250           # neighbouring frames differ by 5 (JPEG keeps a solid grey to +-2)


def write_finediving(root, n_dives: int = 8, n_test: int = 3, seed: int = 0, size: int = 8,
                     render: bool = False, panels=(7, 3, 5)) -> Path:
    """The stand-in of the module docstring; returns `root`. Dive i: competition `COMPETITIONS[i % 2]`,
    index i // 2, difficulty 2.0 or 3.0 (alternating), the last `n_test` dives are the test split."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    coarse, fine, keys = {}, {}, []
    for i in range(n_dives):
        key = (COMPETITIONS[i % 2], i // 2)
        length = int(rng.integers(63, 150))
        start = 100 + 400 * i + int(rng.integers(0, 50))
        end = start + length - 1
        dd = (2.0, 3.0)[i % 2]
        folder = root / key[0] / str(key[1])
        names = [f"{k:05d}.jpg" for k in range(start, end + 1)]
        if render:
            from data.synthetic import judge, render_dive, sample_factors

            f = sample_factors(rng)
            seven = judge(f)["judge_scores"]
            frames = render_dive(f, size)[np.round(np.linspace(0, 102, length)).astype(int)]
            folder.mkdir(parents=True, exist_ok=True)
            for name, fr in zip(names, frames):
                Image.fromarray(fr).save(folder / name, quality=90)
        else:
            seven = list(rng.integers(8, 20, 7) / 2.0)
            write_frames(folder, [level(k) for k in range(start, end + 1)], names=names)
        n_j = panels[i % len(panels)]
        awards = sorted(seven)[(7 - n_j) // 2:(7 - n_j) // 2 + n_j] if n_j < 7 else list(seven)
        score = round(score_from_awards(awards, dd), 2)
        coarse[key] = {"action_type": ("105b", "205c")[i % 2], "start_frame": start, "end_frame": end,
                       "dive_score": score, "difficulty": dd, "judge_scores": [float(a) for a in awards]}
        cut = [int(length * 0.2), int(length * 0.7)]
        labels = np.array([1 + i % 2] * cut[0] + [23] * (cut[1] - cut[0]) + [36] * (length - cut[1]))
        fine[key] = {"action_type": coarse[key]["action_type"], "dive_score": score, "difficulty": dd,
                     "steps_transit_frames": np.array(cut), "frames_labels": labels,
                     "sub-action_types": {np.int64(k): v for k, v in SUB_ACTIONS.items() if k in set(labels)}}
        keys.append(key)
    ann = root / "Annotations"
    ann.mkdir(parents=True, exist_ok=True)
    for name, obj in (("FineDiving_coarse_annotation.pkl", coarse), ("FineDiving_fine-grained_annotation.pkl", fine),
                      ("train_split.pkl", keys[:n_dives - n_test]), ("test_split.pkl", keys[n_dives - n_test:])):
        with open(ann / name, "wb") as fh:
            pickle.dump(obj, fh)
    return root


def _rewrite(root: Path, name: str, edit) -> None:
    path = root / "Annotations" / name
    with open(path, "rb") as fh:
        obj = pickle.load(fh)
    edit(obj)                                                   # edits in place
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


# ------------------------------------------------------------------------------------ shipped annotation

def test_shipped_metadata(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="data.finediving"):
        ds = get_dataset("finediving", root=tmp_path)
        s = ds.samples()
    assert [x.split for x in s].count("train") == 2251 and [x.split for x in s].count("test") == 749
    assert len({x.video_id for x in s}) == 3000 and len({x.extra["action_type"] for x in s}) == 52
    assert len({x.difficulty for x in s}) == 23 and {x.cls for x in s} == {"finediving"}
    assert ds.n_frames == 96 and not ds.supports_shift and ds.meta_files["anno"].parent.name == "finediving"
    x = s[0]  # first key of train_split.pkl
    assert x.video_id == "FINADivingWorldCup2021_Men3m_final_r1/8" and x.source == str(tmp_path / x.video_id)
    assert (x.score, x.difficulty, x.extra["action_type"]) == (66.0, 3.0, "205b")
    assert (x.extra["start_frame"], x.extra["end_frame"]) == (10635, 10746)
    assert x.extra["judge_scores"] == [7.5, 7.5, 7.0] and x.extra["judges_match_score"]
    assert x.extra["sub_actions"] == ["Back", "2.5 Soms.Pike", "Entry"]
    panels = [x.extra["n_judges"] for x in s]
    assert {n: panels.count(n) for n in (7, 3, 5, 0)} == {7: 1368, 3: 1023, 5: 607, 0: 2}
    assert sum("judge_scores" in r.getMessage() for r in caplog.records) == 2   # the 55.5 and the 45.0
    json.dumps([dict(x.extra) for x in s], allow_nan=False)


# --------------------------------------------------------------------------------------- frame sampling

def test_sample_frame_numbers_follow_the_published_rule():
    got = sample_frame_numbers(489, 592)                              # the README's example folder
    assert got.tolist() == np.linspace(489, 592, 96).astype(int).tolist()
    assert got[0] == 489 and got[-1] == 592 and len(set(got.tolist())) == 96
    short = sample_frame_numbers(1000, 1062)                          # 63 frames: some repeat
    assert short[0] == 1000 and short[-1] == 1062 and len(set(short.tolist())) == 63
    assert (np.diff(short) >= 0).all() and (np.diff(short) <= 1).all()
    with pytest.raises(ValueError):
        sample_frame_numbers(10, 9)


@pytest.fixture
def fd_root(tmp_path):
    return write_finediving(tmp_path / "fd")


def test_read_frames_are_the_sampled_frame_numbers(fd_root):
    ds = get_dataset("finediving", root=fd_root)
    s = ds.samples()
    assert ds.meta_files["anno"] == fd_root / "Annotations" / "FineDiving_coarse_annotation.pkl"
    assert [x.split for x in s] == ["train"] * 5 + ["test"] * 3
    lengths = [x.extra["end_frame"] - x.extra["start_frame"] + 1 for x in s]
    assert min(lengths) < 96 < max(lengths), lengths     # both a dive shorter and one longer than 96
    for x in s:
        fr = ds.read_frames(x)
        assert fr.shape == (96, 8, 8, 3) and fr.dtype == np.uint8
        want = [level(k) for k in sample_frame_numbers(x.extra["start_frame"], x.extra["end_frame"])]
        np.testing.assert_allclose(fr[:, 0, 0, 0], want, atol=3)
        assert x.extra["sub_actions"][-1] == "Entry" and len(x.extra["steps_transit_frames"]) == 2
        assert x.score == pytest.approx(score_from_awards(x.extra["judge_scores"], x.difficulty), abs=0.006)
        assert x.extra["judge_rule"] == JUDGE_RULES[x.extra["n_judges"]] and x.extra["judges_match_score"]
    with pytest.raises(DataError, match="shift"):
        ds.read_frames(s[0], max_shift=1)


def test_extra_frames_do_not_shift_the_window_and_missing_ones_are_named(fd_root):
    ds = get_dataset("finediving", root=fd_root)
    x = ds.samples()[0]
    folder, start, end = Path(x.source), x.extra["start_frame"], x.extra["end_frame"]
    write_frames(folder, [0, 0], names=[f"{start - 2:05d}.jpg", f"{end + 7}.jpg"])   # outside the dive
    want = [level(k) for k in sample_frame_numbers(start, end)]
    np.testing.assert_allclose(ds.read_frames(x)[:, 0, 0, 0], want, atol=3)
    (folder / f"{end:05d}.jpg").unlink()
    with pytest.raises(DataError, match=rf"{folder}.*frame\(s\) {end} are missing"):
        ds.read_frames(x)


def test_frame_names_must_be_numbers_and_unique(fd_root):
    ds = get_dataset("finediving", root=fd_root)
    x = ds.samples()[1]
    folder, start = Path(x.source), x.extra["start_frame"]
    write_frames(folder, [0], names=[f"{start}.jpg"])                      # 00489.jpg and 489.jpg
    with pytest.raises(DataError, match=f"frame {start} is there twice"):
        ds.read_frames(x)
    (folder / f"{start}.jpg").unlink()
    write_frames(folder, [0], names=["thumbnail.jpg"])
    with pytest.raises(DataError, match="thumbnail.jpg: FineDiving frame files are named by their frame number"):
        ds.read_frames(x)
    (folder / "thumbnail.jpg").unlink()
    (folder / ".DS_Store.jpg").write_bytes(b"")                           # hidden files are not frames
    assert ds.read_frames(x).shape[0] == 96


# ------------------------------------------------------------------------------------------ annotations

def test_judge_awards_out_of_range_are_dropped_not_the_dive(fd_root, caplog):
    key = (COMPETITIONS[0], 0)

    def edit(a):
        a[key]["judge_scores"] = [55.5, 5.0, 6.0]
        a[(COMPETITIONS[1], 0)]["dive_score"] += 1.0                       # awards no longer give the score
    _rewrite(fd_root, "FineDiving_coarse_annotation.pkl", edit)
    with caplog.at_level(logging.WARNING, logger="data.finediving"):
        s = {x.video_id: x for x in get_dataset("finediving", root=fd_root).samples()}
    x = s[f"{key[0]}/0"]
    assert x.extra["judge_scores"] is None and x.extra["n_judges"] == 0 and not x.extra["judges_match_score"]
    assert any("55.5" in r.getMessage() and str(key) in r.getMessage() for r in caplog.records)
    y = s[f"{COMPETITIONS[1]}/0"]
    assert y.extra["n_judges"] == 3 and not y.extra["judges_match_score"]


@pytest.mark.parametrize("edit, message", [
    (lambda a, k: a[k].update(dive_score=95.0), r"dive_score.*outside the allowed range \[0.0, 60.0\]"),
    (lambda a, k: a[k].pop("start_frame"), "lacks 'start_frame'"),
    (lambda a, k: a[k].update(end_frame=a[k]["start_frame"] - 1), "are not a window"),
    (lambda a, k: a[k].update(start_frame=12.5), "start_frame 12.5 is not an integer"),
    (lambda a, k: a[k].update(difficulty=float("nan")), "difficulty"),
])
def test_bad_annotation_names_file_and_key(fd_root, edit, message):
    key = (COMPETITIONS[0], 0)                                             # difficulty 2.0
    _rewrite(fd_root, "FineDiving_coarse_annotation.pkl", lambda a: edit(a, key))
    with pytest.raises(DataError, match=message) as e:
        get_dataset("finediving", root=fd_root).samples()
    assert "FineDiving_coarse_annotation.pkl" in str(e.value) and str(key) in str(e.value)


def test_split_errors(fd_root, tmp_path):
    _rewrite(fd_root, "test_split.pkl", lambda keys: keys.append(("Elsewhere_r1", 3)))
    with pytest.raises(DataError, match=r"test_split.pkl: key \('Elsewhere_r1', 3\) is not in the annotation"):
        get_dataset("finediving", root=fd_root).samples()
    _rewrite(fd_root, "test_split.pkl", lambda keys: keys.__setitem__(-1, (COMPETITIONS[0], 0)))
    with pytest.raises(DataError, match="listed in both train and test"):
        get_dataset("finediving", root=fd_root).samples()
    with pytest.raises(DataError, match="FineDiving root folder not found"):
        get_dataset("finediving", root=tmp_path / "nowhere").samples()
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({("a", 1): print}))                       # a global: refused, not run
    with pytest.raises(DataError, match="bad.pkl: cannot read FineDiving coarse annotation"):
        get_dataset("finediving", root=fd_root, anno_file=bad).samples()


# ------------------------------------------------------------------------------------- stage one and two

def test_extract_and_train_end_to_end(tmp_path):
    """`python -m extract features` and `python -m train_head train --head core_dd` on a rendered stand-in
    (random I3D weights, 32 px frames, the published 9 clips)."""
    from cache import load_cache
    from extract.__main__ import main as extract_cli
    from train_head.__main__ import cli as train_cli

    root = write_finediving(tmp_path / "fd", n_dives=10, n_test=3, size=32, render=True)
    cache = tmp_path / "fd.h5"
    r = CliRunner().invoke(extract_cli, [
        "features", "--dataset", "finediving", "--root", str(root), "--out", str(cache), "--weights", "random",
        "--device", "cpu", "--views", "test,center_flip", "--frame-size", "32,32", "--crop", "32",
        "--n-clips", "9", "--batch-clips", "18", "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    c = load_cache(cache)
    assert len(c) == 10 and not c.failed and c.features.shape == (10, 2, 9, 1024)
    rule = c.attrs["clip_rule"]
    assert rule["T"] == 96 and rule["starts"] == list(range(0, 90, 10))
    assert c.attrs["dataset"] == "finediving" and all(e["n_judges"] in (7, 3, 5) for e in c.extra)
    runs = tmp_path / "runs"
    r = CliRunner().invoke(train_cli, ["train", "--cache", str(cache), "--head", "core_dd", "--epochs", "2",
                                       "--out", str(runs), "--device", "cpu", "--set", "theta=30"])
    assert r.exit_code == 0, r.output
    summary = json.loads(next(runs.rglob("summary.json")).read_text())
    assert summary["complete"] and summary["dataset"] == "finediving" and summary["head"] == "core_dd"
    assert summary["n_test"] == 3 and np.isfinite(summary["selected"]["rl2"])
    # every head trains on FineDiving with its preset; musdl learns the 3 awards that make each dive's score
    # (panels of 7, 3 and 5 awards: data.finediving.counted_awards), so its score is their sum x difficulty
    for e, s, d in zip(c.extra, c.scores, c.difficulty):
        assert len(e["counted_awards"]) == 3
        if e["judges_match_score"]:
            assert abs(sum(e["counted_awards"]) * d - s) <= 0.015 * (1 + d)
    for head in ("musdl", "usdl"):
        r = CliRunner().invoke(train_cli, ["train", "--cache", str(cache), "--dataset", "finediving", "--head", head,
                                           "--epochs", "2", "--out", str(runs), "--device", "cpu"])
        assert r.exit_code == 0, r.output
        run = runs / "finediving" / "all" / head / "seed0"
        s = json.loads((run / "summary.json").read_text())
        cfg = json.loads((run / "config.json").read_text())
        assert s["complete"] and cfg["theta"] == (30.0 if head == "musdl" else 115.0)
    # the words, through make itself: `make train DATASET=finediving HEAD=musdl` on that cache
    from tests.test_cli_words import _make

    out = _make("train", "DATASET=finediving", "HEAD=musdl", f"FEATURES={cache}", f"RUNS={tmp_path / 'make_runs'}",
                "EPOCHS=2", "SEEDS=0", "DEVICE=cpu")
    s = json.loads((tmp_path / "make_runs" / "finediving" / "all" / "musdl" / "seed0" / "summary.json").read_text())
    assert s["complete"] and s["head"] == "musdl" and np.isfinite(s["selected"]["rho"]), out
