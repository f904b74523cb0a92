"""Reading a feature cache: round trip, attribute refusal, clear errors, the info CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest

from cache import CacheError, CacheMismatch, CacheMissing, FailureRecord, VideoRecord, load_cache, write_cache

VIEWS = [{"name": "test", "shift": 0, "flip": False, "crop": "center", "role": "test"},
         {"name": "s0_flip", "shift": 0, "flip": True, "crop": "center", "role": "train"},
         {"name": "s1", "shift": 1, "flip": False, "crop": "center", "role": "train"}]
ATTRS = {"schema_version": 1, "dataset": "toy", "backbone": "i3d", "weights_source": "random",
         "weights_sha256": "random", "normalization": "imagenet",
         "clip_rule": {"T": 20, "n_clips": 2, "clip_len": 16, "starts": [0, 4]},
         "frame_config": {"resize_hw": [40, 40], "crop": 32, "norm": "imagenet", "interp": "nearest"},
         "views": VIEWS, "code_version": "abc", "created": "2024-01-01T00:00:00+00:00"}


def make(tmp_path, n=4):
    rng = np.random.default_rng(0)
    recs = [VideoRecord(i, f"diving/{i + 1:03d}", rng.standard_normal((3, 2, 1024)).astype(np.float32),
                        float(i), 3.2 if i == 1 else None, "test" if i == 3 else "train", "diving",
                        {"4fold": "1"}, {"judges": [7.5, 8.0], "name": "ü"}) for i in range(n)]
    path = write_cache(tmp_path / "c.h5", recs, [FailureRecord(9, "diving/099", "no frames in /x")], ATTRS)
    return path, recs


def test_round_trip(tmp_path):
    path, recs = make(tmp_path)
    c = load_cache(path, expect={"backbone": "i3d", "views": VIEWS, "clip_rule": json.dumps(ATTRS["clip_rule"])})
    assert c.features.dtype == np.float16 and c.features.shape == (4, 3, 2, 1024)
    np.testing.assert_array_equal(c.features[2], recs[2].features.astype(np.float16))
    assert c.video_ids.tolist() == [r.video_id for r in recs]
    assert np.isnan(c.difficulty[0]) and c.difficulty[1] == 3.2
    assert (c.split == "train").sum() == 3 and c.cls.tolist() == ["diving"] * 4
    assert c.folds[0] == {"4fold": "1"} and c.extra[0]["name"] == "ü"
    assert c.views == VIEWS and c.test_view_index == 0 and c.train_view_indices == [1, 2]
    assert c.failed == {"diving/099": "no frames in /x"}
    m = c.mean_over_clips()
    assert m.dtype == np.float32 and m.shape == (4, 3, 1024)
    np.testing.assert_allclose(m[0, 1], c.features[0, 1].astype(np.float32).mean(0))
    assert c.attrs["frame_config"]["crop"] == 32 and c.index_of("diving/002") == 1


def test_mismatch_names_the_attribute(tmp_path):
    path, _ = make(tmp_path)
    with pytest.raises(CacheMismatch, match="weights_sha256") as e:
        load_cache(path, expect={"backbone": "i3d", "weights_sha256": "0123abcd"})
    assert e.value.attribute == "weights_sha256" and "0123abcd" in str(e.value) and str(path) in str(e.value)
    with pytest.raises(CacheMismatch, match="'views'"):
        load_cache(path, expect={"views": VIEWS[:1]})
    with pytest.raises(CacheMismatch, match="'nonexistent'"):
        load_cache(path, expect={"nonexistent": 1})


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CacheMissing, match=r"nope\.h5 does not exist.*make features"):
        load_cache(tmp_path / "nope.h5")
    (tmp_path / "half.h5.parts").mkdir()
    with pytest.raises(CacheMissing, match="interrupted extraction"):
        load_cache(tmp_path / "half.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(CacheError, match=r"bad\.h5 is corrupt.*make features"):
        load_cache(bad)
    path, _ = make(tmp_path)
    import h5py
    with h5py.File(path, "a") as h5:
        del h5["score"]
    with pytest.raises(CacheError, match="corrupt"):
        load_cache(path)


def test_info_cli(tmp_path):
    path, _ = make(tmp_path)
    r = subprocess.run([sys.executable, "-m", "cache", "info", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for s in ("4 videos x 3 views x 2 clips x 1024", "test=1", "train=3", "weights_sha256: random",
              "diving/099: no frames in /x", '"name": "s1"'):
        assert s in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-m", "cache", "info", str(tmp_path / "x.h5")], capture_output=True, text=True)
    assert r.returncode != 0 and "does not exist" in r.stderr
