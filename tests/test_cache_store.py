"""Writer side of the feature cache: part files, resume scan, merge, atomicity."""
import os

import numpy as np
import pytest

from cache import (CacheError, CacheMismatch, FailureRecord, PartWriter, VideoRecord, final_status,
                   load_cache, merge_parts, parts_dir, scan_parts)

SHAPE = (2, 3, 8)   # (V, C, D)
ATTRS = {"schema_version": 1, "dataset": "toy", "dataset_options": {}, "backbone": "i3d",
         "weights_source": "random", "weights_sha256": "random", "normalization": "imagenet",
         "clip_rule": {"T": 20, "n_clips": 3, "clip_len": 16, "starts": [0, 2, 4]},
         "frame_config": {"crop": 32}, "n_videos": 5, "video_list_sha256": "abc",
         "views": [{"name": "test", "role": "test"}, {"name": "flip", "role": "train"}],
         "code_version": "deadbeef"}


def rec(i, rng):
    return VideoRecord(i, f"v/{i:03d}", rng.standard_normal(SHAPE).astype(np.float32), 10.0 * i,
                       None if i % 2 else 2.5, "train" if i < 3 else "test", "toy",
                       {"4fold": str(i % 4)}, {"raw": i})


def test_parts_merge_sorted_by_index_and_resume_state(tmp_path):
    out = tmp_path / "f.h5"
    rng = np.random.default_rng(0)
    recs = {i: rec(i, rng) for i in range(5)}
    w = PartWriter(out, ATTRS, SHAPE, rank=1, every=2)
    for i in (3, 0):
        w.add(recs[i])                       # -> part 0 written (every=2)
    w.add_failure(FailureRecord(4, "v/004", "DataError: no frames"))
    assert len(list(parts_dir(out).glob("part-*.h5"))) == 1
    w.close()
    st = scan_parts(out, ATTRS)
    assert st.done == {0, 3} and set(st.failed) == {4} and st.n_parts == 2
    with pytest.raises(CacheError, match="incomplete"):
        merge_parts(out)
    w2 = PartWriter(out, ATTRS, SHAPE, rank=0, every=10)
    for i in (2, 1):
        w2.add(recs[i])
    w2.close()
    merge_parts(out, extra_attrs={"created": "now"})
    assert not parts_dir(out).exists()
    c = load_cache(out)
    assert c.video_ids.tolist() == ["v/000", "v/001", "v/002", "v/003"]
    np.testing.assert_array_equal(c.features, np.stack([recs[i].features for i in range(4)]).astype(np.float16))
    assert c.failed == {"v/004": "DataError: no frames"}
    assert c.attrs["n_failed"] == 1 and c.attrs["created"] == "now"
    assert final_status(out, ATTRS) == "complete"


def test_scan_ignores_tmp_and_deletes_unreadable_parts(tmp_path):
    out = tmp_path / "f.h5"
    rng = np.random.default_rng(1)
    w = PartWriter(out, ATTRS, SHAPE, every=1)
    w.add(rec(0, rng))
    d = parts_dir(out)
    (d / "part-000-000007.h5.tmp").write_bytes(b"half written")
    (d / "part-000-000008.h5").write_bytes(b"\x89HDF garbage")
    st = scan_parts(out, ATTRS)
    assert st.done == {0} and st.n_parts == 1
    assert sorted(os.listdir(d)) == ["part-000-000000.h5"]
    # a new writer does not reuse an existing sequence number
    assert PartWriter(out, ATTRS, SHAPE).seq == 1


def test_parts_from_other_settings_are_refused_naming_attribute(tmp_path):
    out = tmp_path / "f.h5"
    w = PartWriter(out, ATTRS, SHAPE, every=1)
    w.add(rec(0, np.random.default_rng(2)))
    with pytest.raises(CacheMismatch, match="weights_sha256") as e:
        scan_parts(out, {**ATTRS, "weights_sha256": "f00d"})
    assert e.value.attribute == "weights_sha256" and "--force" in str(e.value)
    # provenance-only attributes do not block a resume
    assert scan_parts(out, {**ATTRS, "weights_source": "/other/path.pt", "code_version": "x"}).done == {0}


def test_final_status_mismatch_and_killed_merge_leaves_no_final(tmp_path, monkeypatch):
    out = tmp_path / "f.h5"
    rng = np.random.default_rng(3)
    w = PartWriter(out, ATTRS, SHAPE, every=10)
    for i in range(5):
        w.add(rec(i, rng))
    w.close()
    assert final_status(out, ATTRS) == "absent"
    # a crash while the merged file is written leaves neither a final file nor a temp file, and the parts
    import cache.store as store

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(store, "_write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        merge_parts(out)
    monkeypatch.undo()
    assert not out.exists() and not list(tmp_path.glob("f.h5.tmp*")) and parts_dir(out).is_dir()
    merge_parts(out)
    with pytest.raises(CacheMismatch, match="normalization"):
        final_status(out, {**ATTRS, "normalization": "minus1to1"})


def test_merge_cli_joins_the_parts_of_several_ranks(tmp_path):
    import subprocess
    import sys
    out = tmp_path / "f.h5"
    rng = np.random.default_rng(4)
    recs = [rec(i, rng) for i in range(5)]
    for rank in (0, 1):
        w = PartWriter(out, ATTRS, SHAPE, rank=rank, every=1)
        for r in recs[rank::2]:
            w.add(r)
    r = subprocess.run([sys.executable, "-m", "cache", "merge", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "5 videos, 0 failed (from 5 part files)" in r.stdout
    c = load_cache(out)
    assert c.video_ids.tolist() == [f"v/{i:03d}" for i in range(5)] and not parts_dir(out).exists()
    r = subprocess.run([sys.executable, "-m", "cache", "merge", str(out)], capture_output=True, text=True)
    assert r.returncode != 0 and "No readable part files" in r.stderr
