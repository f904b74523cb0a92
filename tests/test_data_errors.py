"""Every kind of bad input raises one DataError naming the file/key and what is wrong."""
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from data import DataError, get_dataset
from data.base import META_DIR
from data.safe_pickle import restricted_load
from tests.testutil import write_frames, write_video


def _aqa7(root, rows, frames=True):
    (root / "Split_4").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "Split_4/split_4_train_list.mat", {"consolidated_train_list": np.asarray(rows, float)})
    scipy.io.savemat(root / "Split_4/split_4_test_list.mat", {"consolidated_test_list": np.asarray(rows[:1], float) * [1, 0, 1] + [0, 99, 0]})
    if frames:
        write_frames(root / "diving-out" / "001", [100] * 103, size=(4, 4))
    return get_dataset("aqa7", root=root)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


def test_missing_frame_folder(tmp_path):
    ds = _aqa7(tmp_path, [[1, 1, 50.0], [1, 2, 60.0]])
    s = {x.video_id: x for x in ds.samples()}
    with pytest.raises(DataError, match=r"diving-out/002.*not found"):
        ds.read_frames(s["diving/002"])


def test_missing_frame(tmp_path):
    ds = _aqa7(tmp_path, [[1, 1, 50.0]])
    (tmp_path / "diving-out/001/img_00050.jpg").unlink()
    with pytest.raises(DataError, match=r"img_00050.jpg: frame file not found"):
        ds.read_frames(ds.samples()[0])


def test_truncated_and_garbage_jpeg(tmp_path):
    ds = _aqa7(tmp_path, [[1, 1, 50.0]])
    p = tmp_path / "diving-out/001/img_00007.jpg"
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(DataError, match=r"img_00007.jpg: unreadable or truncated"):
        ds.read_frames(ds.samples()[0])
    p.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"img_00007.jpg"):
        ds.read_frames(ds.samples()[0])


def test_nan_and_out_of_range_scores(tmp_path):
    with pytest.raises(DataError, match="NaN"):
        _aqa7(tmp_path / "a", [[1, 1, float("nan")]], frames=False).samples()
    with pytest.raises(DataError, match=r"split_4_train_list.mat: row 1 \(class diving, sample 2\).*150"):
        _aqa7(tmp_path / "b", [[1, 1, 50.0], [1, 2, 150.0]], frames=False).samples()
    with pytest.raises(DataError, match="class index 7"):
        _aqa7(tmp_path / "c", [[7, 1, 50.0]], frames=False).samples()
    csv = tmp_path / "s.csv"
    csv.write_text("video,score,split\na.mp4,nan,train\n")
    with pytest.raises(DataError, match=r"s.csv line 2 \(a.mp4\).*nan"):
        get_dataset("csv", root=csv).samples()
    csv.write_text("video,score,split\na.mp4,abc,train\n")
    with pytest.raises(DataError, match="not a number"):
        get_dataset("csv", root=csv).samples()


def _mtl(root, anno, train, test):
    root.mkdir(parents=True, exist_ok=True)
    for name, obj in (("final_annotations_dict_with_dive_number.pkl", anno), ("train_split_0.pkl", train),
                      ("test_split_0.pkl", test)):
        with open(root / name, "wb") as fh:
            pickle.dump(obj, fh)
    return get_dataset("mtl_aqa", root=root)


def test_mtl_aqa_bad_annotations(tmp_path):
    good = {"final_score": 50.0, "difficulty": 2.0, "end_frame": 200, "judge_scores": [8.0] * 7}
    with pytest.raises(DataError, match=r"train_split_0.pkl: key \(9, 9\) is not in the annotations"):
        _mtl(tmp_path / "a", {(1, 1): good}, [(1, 1), (9, 9)], []).samples()
    with pytest.raises(DataError, match=r"key \(1, 1\).*score is nan"):
        _mtl(tmp_path / "b", {(1, 1): {**good, "final_score": float("nan")}}, [(1, 1)], []).samples()
    with pytest.raises(DataError, match=r"key \(1, 1\).*outside"):
        _mtl(tmp_path / "c", {(1, 1): {**good, "final_score": 61.0}}, [(1, 1)], []).samples()  # > 30 x 2.0
    with pytest.raises(DataError, match="lacks 'end_frame'"):
        _mtl(tmp_path / "d", {(1, 1): {"final_score": 5.0, "difficulty": 2.0}}, [(1, 1)], []).samples()
    with pytest.raises(DataError, match="listed in both"):
        _mtl(tmp_path / "e", {(1, 1): good}, [(1, 1)], [(1, 1)]).samples()
    ds = _mtl(tmp_path / "f", {(1, 1): good}, [(1, 1)], [])
    with pytest.raises(DataError, match=r"01_01: no frame folder"):
        ds.read_frames(ds.samples()[0])
    bad = tmp_path / "g"
    bad.mkdir()
    (bad / "final_annotations_dict_with_dive_number.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="cannot read MTL-AQA annotation dict"):
        get_dataset("mtl_aqa", root=bad).samples()


def test_bad_videos(tmp_path):
    trials = sorted(t for f in restricted_load(META_DIR / "four_fold_splits.pkl")["Needle_Passing"] for t in f)
    (tmp_path / "Needle_Passing").mkdir()
    (tmp_path / "Needle_Passing/meta_file_Needle_Passing.txt").write_text(
        "".join(f"{t}\t\tN\t\t12\t2\t2\t2\t2\t2\t2\n" for t in trials))
    ds = get_dataset("jigsaws", root=tmp_path, task="Needle_Passing")
    s = ds.samples()
    with pytest.raises(DataError, match=r"_capture1.avi: video file not found"):
        ds.read_frames(s[0])
    write_video(s[1].source, list(range(0, 200, 10)))  # 20 frames < 160
    with pytest.raises(DataError, match=r"has 20 frames, shorter than its window of 160"):
        ds.read_frames(s[1])
    Path(s[2].source).write_bytes(b"RIFF0000AVI garbage" * 10)
    with pytest.raises(DataError, match=r"capture1.avi: (unreadable video|the file has no video)"):
        ds.read_frames(s[2])
    full = write_video(tmp_path / "full.avi", list(range(200)))
    Path(s[3].source).write_bytes(full.read_bytes()[: full.stat().st_size // 3])  # truncated
    with pytest.raises(DataError, match=r"capture1.avi"):
        ds.read_frames(s[3])


def test_split_naming_missing_sample(tmp_path):
    # JIGSAWS: the folds file names trials the meta file lacks
    (tmp_path / "Suturing").mkdir()
    (tmp_path / "Suturing/meta_file_Suturing.txt").write_text("Suturing_B001\t\tN\t\t12\t2\t2\t2\t2\t2\t2\n")
    with pytest.raises(DataError, match=r"four_fold_splits.pkl: fold \d of Suturing names trial Suturing_\w+"):
        get_dataset("jigsaws", root=tmp_path, task="Suturing").samples()
    # synthetic: difficulty.csv lacks a video of the split
    from data.synthetic import write_synthetic
    root = write_synthetic(tmp_path / "syn", n_videos=2, seed=0, size=32)
    lines = (root / "difficulty.csv").read_text().splitlines()
    (root / "difficulty.csv").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(DataError, match=r"difficulty.csv: no row for diving/002"):
        get_dataset("synthetic", root=root).samples()
    shutil.rmtree(root / "Split_4")
    with pytest.raises(DataError, match="not a synthetic dataset"):
        get_dataset("synthetic", root=root).samples()


def test_registry_errors(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        get_dataset("nope", root=tmp_path)
    with pytest.raises(DataError, match=r"no option\(s\) \['task'\]"):
        get_dataset("aqa7", root=tmp_path, task="x")
    with pytest.raises(DataError, match="root folder not found"):
        get_dataset("aqa7", root=tmp_path / "missing").samples()
    with pytest.raises(DataError, match="CSV file not found"):
        get_dataset("csv", root=tmp_path / "missing.csv").samples()
