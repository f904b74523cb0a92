import collections

import numpy as np
import pytest

from data import DataError, get_dataset
from data.base import META_DIR
from data.safe_pickle import restricted_load
from tests.testutil import write_video

FOLDS = restricted_load(META_DIR / "four_fold_splits.pkl")


def write_meta(root, task, trials, bad_line=None):
    lines = []
    for k, t in enumerate(trials):
        parts = [1 + (k + j) % 5 for j in range(6)]
        # the real files have empty columns between some fields and ragged whitespace
        lines.append(f"{t}\t\t{'NIE'[k % 3]}\t\t{sum(parts)}\t" + "\t".join(map(str, parts)) + " \t")
        if k == 2:
            lines.append("")
    if bad_line:
        lines.append(bad_line)
    (root / task).mkdir(parents=True, exist_ok=True)
    (root / task / f"meta_file_{task}.txt").write_text("\n".join(lines) + "\n")


def test_shipped_folds():
    assert {t: sum(len(f) for f in v) for t, v in FOLDS.items()} == {
        "Suturing": 39, "Needle_Passing": 28, "Knot_Tying": 36}
    assert all(len(v) == 4 for v in FOLDS.values())


def test_meta_folds_and_video(tmp_path):
    trials = sorted(t for f in FOLDS["Needle_Passing"] for t in f)
    write_meta(tmp_path, "Needle_Passing", trials)
    ds = get_dataset("jigsaws", root=tmp_path, task="Needle_Passing")
    s = ds.samples()
    assert len(s) == 28 and {x.split for x in s} == {"train"} and {x.cls for x in s} == {"Needle_Passing"}
    by_id = {x.video_id: x for x in s}
    for f, names in enumerate(FOLDS["Needle_Passing"]):
        assert all(by_id[n].folds["4fold"] == str(f) for n in names)
    x = by_id[trials[0]]
    assert x.folds["louo"] == trials[0].split("_")[-1][0]
    assert x.folds["loso"] == str(int(trials[0][-3:]))
    assert x.score == sum(x.extra["grs_parts"]) and 6 <= x.score <= 30 and x.extra["skill"] == "N"
    assert x.source.endswith(f"Needle_Passing/video/{trials[0]}_capture1.avi")
    assert collections.Counter(v.folds["4fold"] for v in s) == {str(i): 7 for i in range(4)}
    # a tiny video: 200 frames, frame k has grey level k; 160 sampled evenly
    write_video(x.source, list(range(200)))
    fr = ds.read_frames(x)
    assert fr.shape == (160, 32, 32, 3) and fr.dtype == np.uint8
    expect = np.floor((np.arange(160) + 0.5) * 200 / 160)
    np.testing.assert_allclose(fr[:, 16, 16, :].mean(1), expect, atol=4)
    assert np.all(np.diff(fr[:, 16, 16, 1].astype(int)) >= -2)
    assert ds.n_frames == 160


def test_all_tasks_need_all_meta_files(tmp_path):
    write_meta(tmp_path, "Suturing", sorted(t for f in FOLDS["Suturing"] for t in f))
    with pytest.raises(DataError, match="meta_file_Needle_Passing.txt"):
        get_dataset("jigsaws", root=tmp_path).samples()
    assert len(get_dataset("jigsaws", root=tmp_path, task="Suturing").samples()) == 39


def test_meta_file_errors(tmp_path):
    trials = sorted(t for f in FOLDS["Knot_Tying"] for t in f)
    write_meta(tmp_path, "Knot_Tying", trials, bad_line="Knot_Tying_B009\tN\t12\t2\t2\t2")
    with pytest.raises(DataError, match=r"line \d+: expected 9 fields"):
        get_dataset("jigsaws", root=tmp_path, task="Knot_Tying").samples()
    write_meta(tmp_path, "Knot_Tying", trials, bad_line="Knot_Tying_B009\t\tN\t\t40\t5\t5\t5\t5\t5\t5")
    with pytest.raises(DataError, match="outside the range 6-30"):
        get_dataset("jigsaws", root=tmp_path, task="Knot_Tying").samples()
    write_meta(tmp_path, "Knot_Tying", trials, bad_line="Knot_Tying_B009\t\tX\t\t12\t2\t2\t2\t2\t2\t2")
    with pytest.raises(DataError, match="skill level"):
        get_dataset("jigsaws", root=tmp_path, task="Knot_Tying").samples()
