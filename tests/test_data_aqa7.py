import collections

import numpy as np
import pytest
import scipy.io

from data import DataError, get_dataset
from data.aqa7 import CLASSES, SCORE_RANGES
from tests.testutil import write_frames


def test_shipped_split_counts_and_scale(tmp_path):
    ds = get_dataset("aqa7", root=tmp_path)  # no Split_4 here: the shipped copies are used
    s = ds.samples()
    split = collections.Counter(x.split for x in s)
    assert split == {"train": 803, "test": 303}
    per_cls = collections.Counter(x.cls for x in s if x.split == "train")
    assert [per_cls[c] for c in CLASSES] == [300, 120, 120, 140, 60, 63]
    assert ds.score_scale == {"train": 100, "test": 100}
    assert all(0 <= x.score <= 100 for x in s)
    first = s[0]  # first row of the train list: diving 54, 8415 (x100)
    assert first.video_id == "diving/054" and first.extra["raw_score"] == pytest.approx(84.15)
    assert first.score == pytest.approx(100 * (84.15 - 21.6) / (102.6 - 21.6))
    assert first.source.endswith("diving-out/054") and first.folds == {} and first.difficulty is None
    assert len({x.video_id for x in s}) == len(s)
    assert ds.n_frames == 103 and not ds.supports_shift


def test_cls_option(tmp_path):
    s = get_dataset("aqa7", root=tmp_path, cls="gym_vault").samples()
    assert collections.Counter(x.split for x in s) == {"train": 120, "test": 56}
    assert {x.cls for x in s} == {"gym_vault"}
    with pytest.raises(DataError, match="unknown class"):
        get_dataset("aqa7", root=tmp_path, cls="trampoline")


def _write_split(root, train_rows, test_rows):
    (root / "Split_4").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "Split_4" / "split_4_train_list.mat",
                     {"consolidated_train_list": np.asarray(train_rows, float).reshape(-1, 3)})
    scipy.io.savemat(root / "Split_4" / "split_4_test_list.mat",
                     {"consolidated_test_list": np.asarray(test_rows, float).reshape(-1, 3)})


def test_own_split_unscaled_and_frames(tmp_path):
    _write_split(tmp_path, [[1, 1, 60.0], [2, 7, 16.87]], [[6, 2, 49.8]])
    write_frames(tmp_path / "diving-out" / "001", [2 * i for i in range(103)])
    ds = get_dataset("aqa7", root=tmp_path)
    s = {x.video_id: x for x in ds.samples()}
    assert ds.score_scale == {"train": 1, "test": 1}
    assert s["gym_vault/007"].score == pytest.approx(100.0)
    assert s["sync_diving_10m/002"].score == pytest.approx(0.0) and s["sync_diving_10m/002"].split == "test"
    assert s["diving/001"].score == pytest.approx(100 * (60 - 21.6) / 81)
    fr = ds.read_frames(s["diving/001"])
    assert fr.shape == (103, 8, 8, 3) and fr.dtype == np.uint8
    np.testing.assert_allclose(fr[:, 4, 4, 0], [2 * i for i in range(103)], atol=3)
    with pytest.raises(DataError, match="no end-frame shift"):
        ds.read_frames(s["diving/001"], max_shift=3)


def test_ranges_table_matches_spec():
    assert SCORE_RANGES["diving"] == (21.6, 102.6) and SCORE_RANGES["sync_diving_3m"] == (46.2, 104.88)
    assert CLASSES == ("diving", "gym_vault", "ski_big_air", "snowboard_big_air", "sync_diving_3m",
                       "sync_diving_10m")
