import collections
import pickle

import numpy as np
import pytest

from data import DataError, get_dataset
from tests.testutil import write_frames


def test_shipped_metadata(tmp_path):
    ds = get_dataset("mtl_aqa", root=tmp_path)
    s = ds.samples()
    assert collections.Counter(x.split for x in s) == {"train": 1059, "test": 353}
    assert len({x.difficulty for x in s}) == 23
    assert len({x.video_id for x in s}) == 1412
    x = s[0]  # first key of train_split_0: (18, 67)
    assert x.video_id == "18_67" and x.score == pytest.approx(94.35) and x.difficulty == pytest.approx(3.7)
    assert len(x.extra["judge_scores"]) == 7 and x.extra["dive_number"] == "5355B"
    assert x.extra["end_frame"] == 108312 and x.cls == "mtl_aqa"
    assert ds.supports_shift and ds.n_frames == 103


def _anno(end, score=50.0, dd=2.0):
    return {"final_score": score, "difficulty": dd, "end_frame": end, "start_frame": end - 60,
            "judge_scores": np.array([8.0] * 7), "dive_number": "107B"}


def _write_meta(root, anno, train, test):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "final_annotations_dict_with_dive_number.pkl", "wb") as fh:
        pickle.dump(anno, fh)
    for name, keys in (("train_split_0.pkl", train), ("test_split_0.pkl", test)):
        with open(root / name, "wb") as fh:
            pickle.dump(keys, fh)


@pytest.fixture
def mtl_root(tmp_path):
    root = tmp_path / "mtl"
    # source-video layout: 120 frames, frame at position p has grey level 2p
    write_frames(root / "01", [2 * p for p in range(120)])
    # per-sample layout without numbers in names: folder ends at end_frame
    write_frames(root / "02_03", [2 * p for p in range(105)], names=[f"f{chr(97 + p // 26)}{chr(97 + p % 26)}.jpg"
                                                                        for p in range(105)])
    # per-sample layout whose names are source frame numbers 500..619, end_frame 610
    write_frames(root / "03_01", [2 * p for p in range(120)], names=[f"{500 + p}.jpg" for p in range(120)])
    anno = {(1, 1): _anno(110), (1, 2): _anno(118), (2, 3): _anno(9999), (3, 1): _anno(610), (1, 4): _anno(50)}
    _write_meta(root, anno, [(1, 1), (1, 2), (2, 3)], [(3, 1), (1, 4)])
    return root


def test_source_video_layout_and_shifts(mtl_root):
    ds = get_dataset("mtl_aqa", root=mtl_root)
    s = {x.video_id: x for x in ds.samples()}
    assert ds.meta_files["anno"].parent == mtl_root  # the root's own copies win over data/meta
    fr = ds.read_frames(s["01_01"])
    # window = positions [end - 103, end) = [7, 110)
    np.testing.assert_allclose(fr[:, 0, 0, 0], [2 * p for p in range(7, 110)], atol=3)
    fr3 = ds.read_frames(s["01_01"], max_shift=3)
    assert fr3.shape == (109, 8, 8, 3)
    np.testing.assert_allclose(fr3[:, 0, 0, 0], [2 * p for p in range(4, 113)], atol=3)
    np.testing.assert_array_equal(fr3[3:106], fr)  # shift 0 inside the shifted read


def test_edge_frames_repeated_for_shifts(mtl_root):
    ds = get_dataset("mtl_aqa", root=mtl_root)
    s = {x.video_id: x for x in ds.samples()}
    fr = ds.read_frames(s["01_02"], max_shift=3)  # end 118 of 120 frames: positions 118..120 -> 119
    pos = np.clip(np.arange(118 - 103 - 3, 118 + 3), 0, 119)
    np.testing.assert_allclose(fr[:, 0, 0, 0], 2 * pos, atol=3)


def test_per_sample_layouts(mtl_root):
    ds = get_dataset("mtl_aqa", root=mtl_root)
    s = {x.video_id: x for x in ds.samples()}
    a = ds.read_frames(s["02_03"])  # no numbers in names: the last frame is end_frame
    np.testing.assert_allclose(a[:, 0, 0, 0], [2 * p for p in range(2, 105)], atol=3)
    b = ds.read_frames(s["03_01"], max_shift=1)  # names are frame numbers: end 610 is position 110
    np.testing.assert_allclose(b[:, 0, 0, 0], [2 * p for p in range(111 - 103 - 1, 111 + 1)], atol=3)


def test_window_too_short(mtl_root):
    ds = get_dataset("mtl_aqa", root=mtl_root)
    s = {x.video_id: x for x in ds.samples()}
    with pytest.raises(DataError, match="shorter than its window"):
        ds.read_frames(s["01_04"])
