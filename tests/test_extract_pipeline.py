"""Extraction loop on the tiny synthetic dataset: shapes, decode-once, failures, resume, refusals."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from cache import CacheMismatch, load_cache, parts_dir
from data import DataError, get_dataset
from data.synthetic import write_synthetic
from data.transforms import TEST_VIEW, FrameConfig, View, apply_view, clip_starts, cut_clips
from extract.pipeline import extract_dataset, featurize_frames, run_extraction
from extract.weights import load_i3d

CFG = FrameConfig(resize_hw=(32, 32), crop=32)
VIEWS = [TEST_VIEW, View("center_flip", 0, True, "center", "train")]
KW = dict(views=VIEWS, frame_cfg=CFG, n_clips=2, weights="random", device="cpu", batch_clips=4, workers=0,
          progress=False)


class Counting:
    """Dataset wrapper counting read_frames calls; optionally interrupts after `stop_after` reads."""

    def __init__(self, ds, stop_after=None):
        self.ds, self.calls, self.stop_after = ds, [], stop_after
        self.name, self.n_frames, self.root = ds.name, ds.n_frames, ds.root

    def samples(self):
        return self.ds.samples()

    def read_frames(self, sample, max_shift=0):
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append(sample.video_id)
        return self.ds.read_frames(sample, max_shift)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn") / "syn", n_videos=4, seed=1, size=32)


@pytest.fixture(scope="module")
def full(root, tmp_path_factory):
    """An uninterrupted run: the reference for the other tests."""
    out = tmp_path_factory.mktemp("full") / "f.h5"
    ds = Counting(get_dataset("synthetic", root))
    extract_dataset(ds, out, **KW)
    c = load_cache(out)
    c.read_calls = ds.calls
    return c


def test_features_layout_and_values(root, full):
    ds = get_dataset("synthetic", root)
    samples = ds.samples()
    assert full.features.shape == (4, 2, 2, 1024) and full.features.dtype == np.float16
    assert full.video_ids.tolist() == [s.video_id for s in samples]
    assert full.scores.tolist() == [s.score for s in samples] and full.split.tolist() == [s.split for s in samples]
    assert full.difficulty.tolist() == [s.difficulty for s in samples]
    assert full.views == [v.to_dict() for v in VIEWS] and full.test_view_index == 0
    a = full.attrs
    assert a["weights_sha256"] == "random" and a["backbone"] == "i3d" and a["normalization"] == "imagenet"
    assert a["clip_rule"] == {"T": 103, "n_clips": 2, "clip_len": 16, "starts": [0, 87]}
    assert a["frame_config"]["crop"] == 32 and a["code_version"] and a["created"]
    assert np.isfinite(full.features.astype(np.float32)).all()
    assert not np.array_equal(full.features[:, 0], full.features[:, 1])      # the flip view differs
    # by hand: the test view of video 2 through apply_view / cut_clips / forward_features
    model = load_i3d("random", fuse_bn=True)
    frames = ds.read_frames(samples[2])
    clips = cut_clips(apply_view(frames, TEST_VIEW, CFG), clip_starts(103, 2))
    with torch.inference_mode():
        ref = model.forward_features(torch.from_numpy(clips)).numpy()
    np.testing.assert_allclose(full.features[2, 0].astype(np.float32), ref, rtol=2e-3, atol=2e-3)
    f = featurize_frames(model, frames, VIEWS, CFG, 2, "cpu")
    assert f.shape == (2, 2, 1024) and f.dtype == np.float32
    np.testing.assert_allclose(f[0], ref, rtol=1e-4, atol=1e-4)


def test_each_video_decoded_once(full):
    assert sorted(full.read_calls) == sorted(full.video_ids.tolist())


def test_failed_video_recorded_run_goes_on_and_strict_raises(root, full, tmp_path):
    broken = tmp_path / "syn"
    shutil.copytree(root, broken)
    shutil.rmtree(broken / "diving-out" / "002")
    res = run_extraction(get_dataset("synthetic", broken), tmp_path / "f.h5", **KW)
    assert res.n_failed == 1 and res.n_done_now == 3
    c = load_cache(tmp_path / "f.h5")
    assert list(c.failed) == ["diving/002"] and "DataError" in c.failed["diving/002"] and "002" in c.failed["diving/002"]
    keep = full.video_ids != "diving/002"
    assert c.video_ids.tolist() == full.video_ids[keep].tolist()
    np.testing.assert_array_equal(c.features, full.features[keep])
    with pytest.raises(DataError, match="002"):
        extract_dataset(get_dataset("synthetic", broken), tmp_path / "g.h5", strict=True, **KW)
    assert not (tmp_path / "g.h5").exists()


def test_interrupted_run_resumes_skipping_finished_videos(root, full, tmp_path):
    out = tmp_path / "f.h5"
    ds = Counting(get_dataset("synthetic", root), stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_extraction(ds, out, part_every=1, **{**KW, "batch_clips": 4})
    assert not out.exists() and parts_dir(out).is_dir()
    ds2 = Counting(get_dataset("synthetic", root))
    res = run_extraction(ds2, out, **KW)
    assert res.n_skipped >= 1 and len(ds2.calls) == 4 - res.n_skipped
    assert not parts_dir(out).exists()
    c = load_cache(out)
    assert c.video_ids.tolist() == full.video_ids.tolist()
    np.testing.assert_array_equal(c.features, full.features)
    # a rerun over the complete file does nothing
    ds3 = Counting(get_dataset("synthetic", root))
    res = run_extraction(ds3, out, **KW)
    assert res.already_complete and ds3.calls == []


def test_rerun_with_other_settings_is_refused_unless_overwrite(root, tmp_path):
    out = tmp_path / "f.h5"
    ds = get_dataset("synthetic", root)
    kw = {**KW, "views": VIEWS[:1]}
    extract_dataset(ds, out, max_videos=2, **kw)
    with pytest.raises(CacheMismatch, match="frame_config") as e:
        extract_dataset(ds, out, max_videos=2, **{**kw, "frame_cfg": FrameConfig((40, 40), 32)})
    assert "--force" in str(e.value)
    with pytest.raises(CacheMismatch, match="n_videos"):
        extract_dataset(ds, out, max_videos=3, **kw)
    extract_dataset(ds, out, max_videos=3, overwrite=True, **kw)
    assert len(load_cache(out)) == 3


def test_all_videos_failing_raises_instead_of_writing_an_empty_cache(root, tmp_path):
    broken = tmp_path / "syn"
    shutil.copytree(root, broken)
    shutil.rmtree(broken / "diving-out")
    with pytest.raises(RuntimeError, match="all 4 videos failed"):
        extract_dataset(get_dataset("synthetic", broken), tmp_path / "f.h5", **KW)
    assert not (tmp_path / "f.h5").exists()


def test_cli_help_and_default_out():
    r = subprocess.run([sys.executable, "-m", "extract", "features", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--weights" in r.stdout and "--opt" in r.stdout and "--force" in r.stdout
    from extract.__main__ import default_out
    p = default_out("aqa7", {"cls": "diving"}, "0123456789abcdef", "default", FrameConfig())
    assert str(p) == "artifacts/features/aqa7-diving-i3d-01234567-default.h5"
    p = default_out("synthetic", {}, "random", "test-only", CFG)
    assert p.name == "synthetic-i3d-random-test-only-r32x32-c32.h5"


def test_a_video_failing_after_some_of_its_clips_ran_is_dropped_whole(root, full, tmp_path, monkeypatch):
    """4 clips per video in batches of 3: the first video's last clip runs in the second batch; a NaN
    there fails the whole video (its first 3 clips were already computed) and the others are kept."""
    import extract.pipeline as pipeline
    real, calls = pipeline._forward, []

    def forward(model, x, device, precision):
        y = real(model, x, device, precision)
        calls.append(len(x))
        if len(calls) == 2:
            y[0, 7] = float("nan")           # row 0 of batch 2 = clip 4 of the first video
        return y
    monkeypatch.setattr(pipeline, "_forward", forward)
    res = run_extraction(get_dataset("synthetic", root), tmp_path / "f.h5", **{**KW, "batch_clips": 3})
    c = load_cache(tmp_path / "f.h5")
    first = full.video_ids[0]
    assert calls == [3, 3, 3, 3, 3, 1]                      # no padding on the CPU by default
    assert res.n_failed == 1 and list(c.failed) == [first] and "non-finite" in c.failed[first]
    assert c.video_ids.tolist() == full.video_ids[1:].tolist()
    # other batches than the reference run: equal to float32 rounding, not bitwise (module docstring)
    np.testing.assert_allclose(c.features.astype(np.float32), full.features[1:].astype(np.float32),
                               rtol=1e-2, atol=1e-2)


def test_frames_the_views_cannot_use_fail_that_video_only(root, full, tmp_path, monkeypatch):
    from extract.views_device import DeviceViews
    real = DeviceViews.check
    seen = []

    def check(self, shape):
        seen.append(1)
        if len(seen) == 2:
            shape = (5,) + tuple(shape[1:])     # as if the reader returned 5 frames for the second video
        return real(self, shape)
    monkeypatch.setattr(DeviceViews, "check", check)
    res = run_extraction(get_dataset("synthetic", root), tmp_path / "f.h5", **KW)
    second = full.video_ids[1]
    c = load_cache(tmp_path / "f.h5")
    assert res.n_failed == 1 and list(c.failed) == [second] and "expected uint8 frames [103" in c.failed[second]
    np.testing.assert_array_equal(c.features, full.features[np.arange(4) != 1])


def test_padded_last_batch_keeps_one_shape_and_the_same_features(root, full, tmp_path, monkeypatch):
    import functools

    import extract.pipeline as pipeline
    import extract.runloop as runloop
    real, shapes = pipeline._forward, []

    def forward(model, x, device, precision):
        shapes.append(tuple(x.shape))
        return real(model, x, device, precision)
    monkeypatch.setattr(pipeline, "_forward", forward)
    monkeypatch.setattr(pipeline, "run_loop", functools.partial(runloop.run_loop, pad_last=True))
    run_extraction(get_dataset("synthetic", root), tmp_path / "f.h5", **{**KW, "batch_clips": 6})
    assert len(shapes) == 3 and set(shapes) == {(6, 3, 16, 32, 32)}         # 16 clips: 6 + 6 + 4 padded to 6
    c = load_cache(tmp_path / "f.h5")
    np.testing.assert_allclose(c.features.astype(np.float32), full.features.astype(np.float32),
                               rtol=1e-2, atol=1e-2)


def test_resume_with_another_precision_or_device_kind_is_refused(root, tmp_path):
    import h5py
    out = tmp_path / "f.h5"
    with pytest.raises(KeyboardInterrupt):
        run_extraction(Counting(get_dataset("synthetic", root), stop_after=2), out, part_every=1, **KW)
    parts = sorted(parts_dir(out).glob("part-*.h5"))
    assert parts
    with h5py.File(parts[0], "r+") as h5:
        assert h5.attrs["precision"] == "fp32" and h5.attrs["device"] == "cpu"
        h5.attrs["precision"], h5.attrs["device"] = "bf16", "cuda"      # as a GPU run would have left it
    with pytest.raises(CacheMismatch, match="precision") as e:
        run_extraction(get_dataset("synthetic", root), out, **KW)
    assert "cuda in bf16" in str(e.value) and "--force" in str(e.value) and parts[0].exists()
    res = run_extraction(get_dataset("synthetic", root), out, overwrite=True, **KW)
    assert res.n_done_now == 4 and load_cache(out).attrs["precision"] == "fp32"


@pytest.mark.parametrize("mode", ["processes", "threads"])
def test_decode_workers_deliver_the_same_features(root, full, tmp_path, mode):
    # batch_clips 4 = one whole video per batch, so the batches hold the same clips whatever the order in
    # which the workers deliver the videos: bitwise equal to the in-process run
    res = run_extraction(get_dataset("synthetic", root), tmp_path / "f.h5", decode_mode=mode, **{**KW, "workers": 2})
    c = load_cache(tmp_path / "f.h5")
    assert res.n_done_now == 4 and c.video_ids.tolist() == full.video_ids.tolist()
    np.testing.assert_array_equal(c.features, full.features)


# ------------------------------------------------------------------------------------------------ CUDA
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _rel(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.cuda
@needs_cuda
def test_cuda_features_match_the_cpu_fp32_and_bf16(root, full, tmp_path):
    # tolerances (relative, whole array): fp32 on CUDA uses TF32 convolutions (10-bit mantissa), bf16 has 8
    # bits; the CPU reference is float32 stored as float16
    for prec, tol in (("fp32", 5e-3), ("bf16", 3e-2)):
        res = run_extraction(get_dataset("synthetic", root), tmp_path / f"{prec}.h5",
                             **{**KW, "device": "cuda", "precision": prec})
        c = load_cache(tmp_path / f"{prec}.h5")
        assert res.precision == prec and c.attrs["device"] == "cuda" and c.attrs["precision"] == prec
        assert _rel(c.features, full.features) < tol, prec


@pytest.mark.cuda
@needs_cuda
def test_cuda_deterministic_runs_are_bitwise_equal(root, tmp_path):
    import os
    outs = []
    for k in range(2):
        run_extraction(get_dataset("synthetic", root), tmp_path / f"{k}.h5", deterministic=True,
                       **{**KW, "device": "cuda", "workers": 2})
        outs.append(load_cache(tmp_path / f"{k}.h5").features)
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") and np.array_equal(outs[0], outs[1])
    assert not torch.are_deterministic_algorithms_enabled()          # restored after the run


@pytest.mark.cuda
@needs_cuda
def test_cuda_compiled_network_gives_the_same_features(root, tmp_path):
    kw = {**KW, "device": "cuda", "precision": "bf16"}
    run_extraction(get_dataset("synthetic", root), tmp_path / "eager.h5", **kw)
    run_extraction(get_dataset("synthetic", root), tmp_path / "compiled.h5", compile=True, **kw)
    a, b = load_cache(tmp_path / "eager.h5").features, load_cache(tmp_path / "compiled.h5").features
    assert _rel(b, a) < 3e-2
