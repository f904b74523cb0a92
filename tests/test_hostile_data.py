"""Hostile input to the dataset readers: every case ends in one clear message and a non-zero exit of
`python -m data info`, or in the right result; never a traceback, never a silently wrong sample.

Covers: NaN/inf scores and difficulties in every reader (and the shared check behind them), CSV columns
in any case and near-miss column names, unknown split values (also in a saved split file), hidden files
beside frames, 16-bit PNG frames, truncated videos.
"""
from __future__ import annotations

import logging
import math
import pickle
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from data import DataError, Dataset, Sample, get_dataset
from data.__main__ import cli as data_cli
from data.base import list_frames, read_image, read_video_even


# ------------------------------------------------------------------------------------------- helpers
def frames(folder, values, size=(8, 8), ext=".jpg"):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(values, 1):
        Image.fromarray(np.full((*size, 3), v, np.uint8)).save(folder / f"img_{i:05d}{ext}")
    return folder


def video(path, n, size=(32, 32), codec="mpeg4"):
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        st = out.add_stream(codec, rate=30)
        st.width, st.height, st.pix_fmt = size[1], size[0], "yuv420p"
        for k in range(n):
            img = np.full((*size, 3), (2 * k) % 256, np.uint8)
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return path


def info(*args):
    """`python -m data info ...` in-process; returns (exit code, output). Fails on an uncaught exception."""
    r = CliRunner().invoke(data_cli, ["info", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), f"uncaught {r.exception!r}\n{r.output}"
    assert "Traceback" not in r.output
    return r.exit_code, r.output


def csv_info(path, *opts):
    return info("--dataset", "csv", "--root", str(path), *opts)


def write_csv(path, text):
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------- 1. non-finite labels
@pytest.mark.parametrize("score,diff,what", [("nan", "", "score"), ("inf", "", "score"), ("-1e400", "", "score"),
                                             ("7", "nan", "difficulty"), ("7", "inf", "difficulty"),
                                             ("7", "0", "difficulty")])
def test_csv_non_finite_score_or_difficulty_is_refused(tmp_path, score, diff, what):
    p = write_csv(tmp_path / "s.csv", f"video,score,difficulty,split\na.mp4,5,2,train\nb.mp4,{score},{diff},test\n")
    code, out = csv_info(p)
    assert code == 1
    assert str(p) in out and "b.mp4" in out and what in out


def test_aqa7_nan_score_names_the_split_file(tmp_path):
    import scipy.io

    (tmp_path / "Split_4").mkdir()
    scipy.io.savemat(str(tmp_path / "Split_4" / "split_4_train_list.mat"),
                     {"consolidated_train_list": np.array([[1.0, 1.0, 50.0], [1.0, 2.0, np.nan]])})
    scipy.io.savemat(str(tmp_path / "Split_4" / "split_4_test_list.mat"),
                     {"consolidated_test_list": np.array([[1.0, 3.0, 60.0]])})
    code, out = info("--dataset", "aqa7", "--root", str(tmp_path))
    assert code == 1 and "split_4_train_list.mat" in out and "NaN" in out


def _mtl_files(tmp_path, **anno_fields):
    a = {"final_score": 50.0, "difficulty": 2.0, "end_frame": 200, "judge_scores": [7.0] * 7}
    anno = {(1, 1): dict(a), (1, 2): {**a, **anno_fields}}
    files = {"anno_file": tmp_path / "anno.pkl", "train_split_file": tmp_path / "train.pkl",
             "test_split_file": tmp_path / "test.pkl"}
    for key, obj in (("anno_file", anno), ("train_split_file", [(1, 1)]), ("test_split_file", [(1, 2)])):
        files[key].write_bytes(pickle.dumps(obj))
    return [x for k, v in files.items() for x in ("--opt", f"{k}={v}")]


@pytest.mark.parametrize("field", ["final_score", "difficulty"])
def test_mtl_aqa_nan_label_names_the_annotation_file(tmp_path, field):
    opts = _mtl_files(tmp_path, **{field: float("nan")})
    code, out = info("--dataset", "mtl_aqa", "--root", str(tmp_path), *opts)
    assert code == 1 and "anno.pkl" in out and "(1, 2)" in out and "nan" in out


def test_jigsaws_inf_grs_names_the_meta_file_line(tmp_path):
    (tmp_path / "Suturing").mkdir()
    (tmp_path / "Suturing" / "meta_file_Suturing.txt").write_text(
        "Suturing_B001\tN\t12\t2\t2\t2\t2\t2\t2\nSuturing_B002\tN\tinf\t2\t2\t2\t2\t2\t2\n")
    code, out = info("--dataset", "jigsaws", "--root", str(tmp_path), "--opt", "task=Suturing")
    assert code == 1 and "meta_file_Suturing.txt line 2" in out


def test_synthetic_inf_difficulty_names_the_file_and_video(tmp_path):
    from data.synthetic import write_synthetic

    root = write_synthetic(tmp_path / "syn", n_videos=2, seed=0, size=32)
    p = root / "difficulty.csv"
    lines = p.read_text().splitlines()
    cells = lines[2].split(",")
    cells[1] = "inf"
    p.write_text("\n".join(lines[:2] + [",".join(cells)] + lines[3:]) + "\n")
    code, out = info("--dataset", "synthetic", "--root", str(root))
    assert code == 1 and "difficulty.csv" in out and cells[0] in out
    cells[1] = "x"                       # a non-number in another column is a message too, not a traceback
    cells[8] = "wide"
    p.write_text("\n".join(lines[:2] + [",".join(cells)] + lines[3:]) + "\n")
    code, out = info("--dataset", "synthetic", "--root", str(root))
    assert code == 1 and "difficulty.csv" in out


class _Reader(Dataset):
    """A reader that builds its samples without any checks of its own: the shared check must catch them."""
    name = "bare"
    n_frames = 16

    def __init__(self, root, samples):
        super().__init__(root)
        self._given = samples

    def _load_samples(self):
        return self._given

    def label_source(self, sample, field="score"):
        return f"{self.root}/labels-{field}.txt"


@pytest.mark.parametrize("kw,words", [({"score": math.nan}, "score is nan"), ({"score": math.inf}, "score is inf"),
                                      ({"difficulty": math.nan}, "difficulty is nan"),
                                      ({"difficulty": -1.0}, "difficulty is -1.0"),
                                      ({"split": "val"}, "split 'val'"), ({"split": "Test"}, "split 'Test'"),
                                      ({"cls": ""}, "empty class")])
def test_shared_sample_check_names_file_and_video(tmp_path, kw, words):
    good = Sample("v1", "x", 1.0, None, "train", "c")
    bad = Sample(**{"video_id": "v2", "source": "x", "score": 2.0, "difficulty": None, "split": "test",
                    "cls": "c", **kw})
    with pytest.raises(DataError) as e:
        _Reader(tmp_path, [good, bad]).samples()
    field = next(iter(kw))
    assert f"labels-{field}.txt" in str(e.value) and "'v2'" in str(e.value) and words in str(e.value)
    with pytest.raises(DataError, match="listed twice"):
        _Reader(tmp_path, [good, good]).samples()


# ---------------------------------------------------------------------------------- 2. columns/splits
def test_csv_columns_in_any_case_are_used(tmp_path):
    p = write_csv(tmp_path / "s.csv", "Video,SCORE,Difficulty,Split,Class\na.mp4,5,2,train,x\nb.mp4,6,,test,y\n"
                                      "c.mp4,7,1.5,test,x\n")
    code, out = csv_info(p)
    assert code == 0, out
    s = {x.video_id: x for x in get_dataset("csv", p).samples()}
    assert [s[v].split for v in ("a.mp4", "b.mp4", "c.mp4")] == ["train", "test", "test"]
    assert (s["a.mp4"].difficulty, s["b.mp4"].difficulty, s["a.mp4"].cls) == (2.0, None, "x")
    assert not (tmp_path / "s.csv.split.csv").exists(), "the user's split column must be used, not a random split"


@pytest.mark.parametrize("header,bad,near", [("video,score,splits", "splits", "split"),
                                             ("video,score,dificulty", "dificulty", "difficulty"),
                                             ("Video,Scores", "Scores", "score"),
                                             ("video,score,Clas", "Clas", "class")])
def test_csv_near_miss_column_is_an_error_not_a_random_split(tmp_path, header, bad, near):
    n = header.count(",") + 1
    rows = "".join(f"v{i}.mp4,{i}" + (",test" if n == 3 else "") + "\n" for i in range(8))
    p = write_csv(tmp_path / "s.csv", header + "\n" + rows)
    code, out = csv_info(p)
    assert code == 1
    assert repr(bad) in out and repr(near) in out and "video" in out
    assert not (tmp_path / "s.csv.split.csv").exists()


def test_csv_column_twice_and_unrelated_columns(tmp_path):
    p = write_csv(tmp_path / "s.csv", "video,score,split,Split\na,1,train,test\n")
    code, out = csv_info(p)
    assert code == 1 and "appears twice" in out
    p = write_csv(tmp_path / "s.csv", "video,score,split,notes\na,1,train,fine dive\nb,2,test,\n")
    assert csv_info(p)[0] == 0                       # an unrelated column is ignored
    p = write_csv(tmp_path / "s.csv", "video,score,split\na,1,train,extra\n")
    code, out = csv_info(p)
    assert code == 1 and "line 2" in out and "fields" in out


@pytest.mark.parametrize("value", ["val", "valid", "training", ""])
def test_csv_unknown_split_value_names_the_row(tmp_path, value):
    p = write_csv(tmp_path / "s.csv", f"video,score,split\na.mp4,1,train\nb.mp4,2,{value}\n")
    code, out = csv_info(p)
    assert code == 1 and f"{p} line 3" in out and "must be 'train' or 'test'" in out


def test_saved_split_file_is_checked_like_the_csv(tmp_path):
    rows = "".join(f"v{i}.mp4,{i}\n" for i in range(8))
    p = write_csv(tmp_path / "s.csv", "video,score\n" + rows)
    assert csv_info(p)[0] == 0
    saved = tmp_path / "s.csv.split.csv"
    text = saved.read_text()
    saved.write_text(text.replace("v3.mp4,train", "v3.mp4,val").replace("v3.mp4,test", "v3.mp4,val"))
    code, out = csv_info(p)
    assert code == 1 and str(saved) in out and "'val'" in out and "line 5" in out
    saved.write_text(text.replace("split", "fold"))
    code, out = csv_info(p)
    assert code == 1 and str(saved) in out and "missing column 'split'" in out
    saved.write_text(text.replace("video,split", "VIDEO,Split"))      # column names in any case
    code, out = csv_info(p)
    assert code == 0, out
    assert {s.split for s in get_dataset("csv", p).samples()} == {"train", "test"}


def test_split_values_are_not_guessed(tmp_path):
    """'Test' is refused with the row named (a wrong guess would train on the user's test videos)."""
    p = write_csv(tmp_path / "s.csv", "video,score,split\na.mp4,5,train\nb.mp4,6,Test\n")
    code, out = csv_info(p)
    assert code == 1 and "'Test'" in out and "line 3" in out and "write 'test'" in out


def test_data_info_subprocess_has_one_line_and_no_traceback(tmp_path):
    p = write_csv(tmp_path / "s.csv", "video,score,Splits\na.mp4,1,train\n")
    r = subprocess.run([sys.executable, "-m", "data", "info", "--dataset", "csv", "--root", str(p)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("Error: ") and "'Splits'" in err[0] and "'split'" in err[0]


# ------------------------------------------------------------------------------------------ 5. frames
def test_hidden_files_beside_frames_are_ignored(tmp_path):
    folder = frames(tmp_path / "f", [10, 20, 30])
    (folder / "._img_00001.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / ".DS_Store").write_bytes(b"Bud1")
    (folder / ".img_00002.jpg.swp").write_bytes(b"junk")
    assert [p.name for p in list_frames(folder)] == ["img_00001.jpg", "img_00002.jpg", "img_00003.jpg"]
    # end to end through the CSV reader (a folder of frames), and a hidden CSV beside the real one
    write_csv(tmp_path / "s.csv", "video,score,split\nf,1,train\n")
    write_csv(tmp_path / "._s.csv", "\x00\x05garbage")
    ds = get_dataset("csv", tmp_path, n_frames=16)
    (folder / "img_00004.jpg").unlink(missing_ok=True)
    frames(folder, list(range(0, 160, 10)))
    (folder / "._img_00009.jpg").write_bytes(b"\x00junk")
    x = ds.read_frames(ds.samples()[0])
    assert x.shape == (16, 8, 8, 3)
    assert abs(int(x[1, 0, 0, 0]) - 10) <= 2


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    grey = np.array([[0, 256, 32768, 65535]], np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")                 # really a 16-bit image
    arr = read_image(tmp_path / "g16.png")
    assert arr.dtype == np.uint8 and arr.shape == (1, 4, 3)
    assert arr[0, :, 0].tolist() == [0, 1, 128, 255]
    # 8-bit and 16-bit (value x 257) frames of the same picture read the same
    Image.fromarray((grey >> 8).astype(np.uint8)).save(tmp_path / "g8.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g8.png"), arr)


def test_truncated_video_that_still_decodes_is_reported(tmp_path, caplog):
    full = video(tmp_path / "full.mkv", 100)
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with caplog.at_level(logging.WARNING, logger="data.base"):
        x = read_video_even(full, 16)
    assert x.shape[0] == 16 and not [r for r in caplog.records if "truncated" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="data.base"):
        y = read_video_even(cut, 16)
    assert y.shape[0] == 16
    msgs = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(msgs) == 1 and str(cut) in msgs[0] and "announces 100 frames" in msgs[0]
    got = int(msgs[0].split("only ")[1].split()[0])
    assert 16 <= got < 100
