import numpy as np
import pytest

from data import DataError, get_dataset
from data.csv_dataset import stratified_split
from tests.testutil import write_frames, write_video


def test_videos_and_frame_folders_with_split_column(tmp_path):
    write_video(tmp_path / "vids" / "a.avi", [3 * k for k in range(40)])
    write_frames(tmp_path / "frames" / "b", [5 * k for k in range(20)])
    (tmp_path / "scores.csv").write_text(
        "video,score,difficulty,split,class\nvids/a.avi,7.5,2.0,train,x\nframes/b,3.25,,test,y\n")
    ds = get_dataset("csv", root=tmp_path, n_frames=16)  # a folder with one CSV works as root
    a, b = ds.samples()
    assert (a.video_id, a.score, a.difficulty, a.split, a.cls) == ("vids/a.avi", 7.5, 2.0, "train", "x")
    assert (b.video_id, b.score, b.difficulty, b.split, b.cls) == ("frames/b", 3.25, None, "test", "y")
    fa, fb = ds.read_frames(a), ds.read_frames(b)
    assert fa.shape == (16, 32, 32, 3) and fb.shape == (16, 8, 8, 3)
    idx_b = np.floor((np.arange(16) + 0.5) * 20 / 16)
    np.testing.assert_allclose(fb[:, 0, 0, 0], 5 * idx_b, atol=3)
    np.testing.assert_allclose(fa[:, 16, 16, :].mean(1), 3 * np.floor((np.arange(16) + 0.5) * 40 / 16), atol=5)
    assert not (tmp_path / "scores.csv.split.csv").exists()
    assert ds.n_frames == 16 and get_dataset("csv", root=tmp_path / "scores.csv").n_frames == 103


def test_saved_stratified_split(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("video,score\n" + "".join(f"v{i:02d}.mp4,{i}\n" for i in range(20)))
    s1 = get_dataset("csv", root=csv, seed=3).samples()
    saved = tmp_path / "d.csv.split.csv"
    assert saved.is_file()
    test = [x for x in s1 if x.split == "test"]
    assert len(test) == 5
    # stratified: one test video in each fifth of the scores
    assert sorted(int(x.score) // 4 for x in test) == [0, 1, 2, 3, 4]
    # reused, even with another seed
    s2 = get_dataset("csv", root=csv, seed=99).samples()
    assert [x.split for x in s2] == [x.split for x in s1]
    # a stale split file is refused
    csv.write_text(csv.read_text() + "v99.mp4,3\n")
    with pytest.raises(DataError, match="delete it"):
        get_dataset("csv", root=csv).samples()


def test_stratified_split_is_seeded():
    sc = np.arange(40.0)
    a, b = stratified_split(sc, 0.25, 0), stratified_split(sc, 0.25, 0)
    assert list(a) == list(b) and (a == "test").sum() == 10
