"""The feeding path of stage one: views on the device vs the CPU transforms, the decode feed, the
staging/copy-back rings and the background writer (CPU; the CUDA versions are marked `cuda`)."""
import logging
import threading
import time

import numpy as np
import pytest
import torch

from data import DataError
from data.transforms import FrameConfig, View, apply_view, clip_starts, cut_clips, default_views, shift_window
from extract.feed import choose_mode, decoded_videos, default_workers
from extract.staging import BackgroundWriter, CopyBack, Stager
from extract.views_device import DeviceViews

# `cuda` marker (pyproject.toml): run with -m cuda on a GPU machine; skipped where torch sees no GPU
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ALL_VIEWS = default_views("mtl_aqa")[::2] + [View(f"{c}{'_f' if f else ''}", s, f, c)
                                             for c in ("tl", "tr", "bl", "br") for f, s in ((False, -2), (True, 1))]


def reference(frames, views, cfg, t, n_clips):
    """Today's CPU path: shift_window + apply_view + cut_clips, view-major."""
    ms = max(abs(v.shift) for v in views)
    starts = clip_starts(t, n_clips)
    return np.concatenate([cut_clips(apply_view(shift_window(frames, v.shift, ms, t), v, cfg), starts)
                           for v in views])


@pytest.mark.parametrize("interp", ["nearest", "bilinear_short_side"])
@pytest.mark.parametrize("norm", ["imagenet", "minus1to1"])
@pytest.mark.parametrize("hw", [(37, 53), (64, 40)])
def test_device_views_equal_the_cpu_transforms_bitwise(interp, norm, hw):
    rng = np.random.default_rng(hash((interp, norm, hw)) % 2**32)
    t, n_clips = 24, 2
    frames = rng.integers(0, 256, (t + 6,) + hw + (3,), dtype=np.uint8)
    cfg = FrameConfig((48, 36), 32, norm, interp)
    dv = DeviceViews(ALL_VIEWS, cfg, t, n_clips)
    got = dv.clips(torch.from_numpy(frames)).numpy()
    np.testing.assert_array_equal(got, reference(frames, ALL_VIEWS, cfg, t, n_clips))


def test_batch_slices_across_views_layout_and_half_precision():
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (26, 30, 50, 3), dtype=np.uint8))
    views = default_views("synthetic")
    dv = DeviceViews(views, FrameConfig((40, 60), 24), 26, 4)
    full = dv.clips(frames)                                  # [28, 3, 16, 24, 24]
    vc = dv.prepare(frames)
    assert vc.n == 28 == len(full)
    for lo, hi in [(0, 28), (3, 9), (27, 28), (5, 5), (2, 21)]:
        dst = torch.empty((hi - lo + 2, 3, 16, 24, 24), memory_format=torch.channels_last_3d)
        vc.write(dst, lo, hi)
        assert torch.equal(dst[:hi - lo], full[lo:hi])
    bf = torch.empty((28, 3, 16, 24, 24), dtype=torch.bfloat16)
    vc.write(bf, 0, 28)
    assert torch.equal(bf, full.to(torch.bfloat16))
    with pytest.raises(ValueError, match="outside"):
        vc.write(bf, 20, 29)
    with pytest.raises(ValueError, match=r"expected uint8 frames \[26"):
        dv.prepare(frames[:20])


# ----------------------------------------------------------------------------------------- decode feed
class Frames:
    """A dataset stand-in: video i is 6 frames of value i; 'bad' ids fail; some are slow."""
    n_frames = 6

    def __init__(self, n, bad=(), slow=()):
        self.n, self.bad, self.slow = n, set(bad), set(slow)

    def read_frames(self, sample, max_shift=0):
        if sample in self.slow:
            time.sleep(0.3)
        if sample in self.bad:
            raise DataError(f"video {sample}: unreadable frame")
        return np.full((6 + 2 * max_shift, 4, 5, 3), sample, np.uint8)


@pytest.mark.parametrize("workers,mode", [(0, "auto"), (2, "threads"), (2, "processes")])
def test_decoded_videos_one_item_per_video_failures_as_items(workers, mode):
    items = [(10 + i, i) for i in range(7)]
    got = list(decoded_videos(Frames(7, bad={3}), items, 1, workers=workers, mode=mode))
    assert sorted(g[1] for g in got) == [10 + i for i in range(7)]
    for g in got:
        if g[1] == 13:
            assert g[0] == "fail" and g[2] == "DataError: video 3: unreadable frame"
            assert isinstance(g[3], DataError)                 # the original exception, also from a process
        else:
            assert g[0] == "frames" and g[2].shape == (8, 4, 5, 3) and int(g[2][0, 0, 0, 0]) == g[1] - 10


@pytest.mark.parametrize("mode", ["threads", "processes"])
def test_a_slow_video_does_not_hold_back_the_others_unless_in_order(mode):
    items = [(i, i) for i in range(6)]
    order = [g[1] for g in decoded_videos(Frames(6, slow={1}), items, 0, workers=2, mode=mode)]
    assert sorted(order) == list(range(6)) and order.index(1) > 1          # delivered when ready
    order = [g[1] for g in decoded_videos(Frames(6, slow={1}), items, 0, workers=2, mode=mode, in_order=True)]
    assert order == list(range(6))


def test_process_feed_reuses_its_shared_slots_once_released():
    items = [(i, i) for i in range(14)]
    ptrs = []
    for g in decoded_videos(Frames(14), items, 0, workers=2, mode="processes"):
        assert g[0] == "frames" and bool((g[2] == g[1]).all())
        ptrs.append(g[2].data_ptr())
        g[3]()
        g[3]()                                        # releasing twice frees the slot once
    assert len(set(ptrs[1:])) <= 5                    # the first video is decoded in place; 2 + 1 + 2 slots


def test_mode_from_shared_memory_and_workers_from_affinity(monkeypatch, caplog):
    assert choose_mode("auto", 7, 40 * 2**20, free=1 << 40) == "processes"
    with caplog.at_level(logging.WARNING):
        assert choose_mode("auto", 7, 40 * 2**20, free=64 * 2**20) == "threads"
    assert "shm-size" in caplog.text and "500 MiB" in caplog.text and "10 slots of 50.0 MiB" in caplog.text
    assert choose_mode("processes", 7, 1 << 30, free=0) == "processes"
    with pytest.raises(ValueError, match="decode mode"):
        choose_mode("fibers", 1, 1)
    import extract.feed as feed
    monkeypatch.setattr(feed, "available_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers(torch.device("cpu")) == 0
    assert default_workers(torch.device("cuda")) == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers(torch.device("cuda")) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert default_workers(torch.device("cuda")) == 1


# -------------------------------------------------------------------------------- staging and copy-back
def test_stager_ring_reuses_and_grows_its_buffers_without_aliasing():
    st = Stager("cpu", slots=2, pin=False)
    outs, sizes = [], [(5, 4, 4, 3), (5, 4, 4, 3), (5, 4, 4, 3), (9, 40, 40, 3), (5, 4, 4, 3)]
    for i, shape in enumerate(sizes):
        outs.append(st.put(torch.full(shape, i, dtype=torch.uint8)))
    for i, (o, shape) in enumerate(zip(outs, sizes)):
        assert o.shape == shape and bool((o == i).all())      # earlier results survive buffer reuse
    assert st.n_allocs == 3                                   # 2 slots + one growth for the larger video


class FakeEvent:
    """Completes when `done` holds its number (or when waited for)."""
    made, done = [], set()

    def __init__(self):
        self.n = len(FakeEvent.made)
        FakeEvent.made.append(self)
        self.waited = False

    def record(self):
        pass

    def query(self):
        return self.n in FakeEvent.done

    def synchronize(self):
        self.waited = True
        FakeEvent.done.add(self.n)


def test_copyback_bounds_batches_in_flight_and_returns_them_in_order():
    FakeEvent.made, FakeEvent.done = [], set()
    cb = CopyBack("cpu", depth=2, pin=False, event=FakeEvent)
    seen = []
    for i in range(5):
        for host, tag in cb.push(torch.full((3, 2), float(i)), tag=i):
            assert (host == tag).all()                        # read before the ring reuses the buffer
            seen.append(tag)
        assert len(cb.pending) <= 2
    FakeEvent.done.add(3)                                     # completes out of order: still handed in order
    assert [t for _, t in cb.push(torch.full((3, 2), 5.0), tag=5)] == [3] and seen == [0, 1, 2]
    assert [t for _, t in cb.flush()] == [4, 5] and cb.max_pending == 2 and cb.n_allocs == 3
    assert [e.waited for e in FakeEvent.made] == [True, True, True, False, True, True]


def test_background_writer_keeps_order_and_raises_the_first_error_in_the_caller():
    out, main = [], threading.get_ident()
    bw = BackgroundWriter()
    for i in range(50):
        bw.submit(lambda i=i: out.append((i, threading.get_ident())))
    bw.close()
    assert [i for i, _ in out] == list(range(50)) and all(t != main for _, t in out)
    bw = BackgroundWriter()
    bw.submit(lambda: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        for _ in range(100):                                  # raised at a later submit or at close
            bw.submit(lambda: time.sleep(0.001))
        bw.close()


# ------------------------------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
@needs_cuda
def test_cuda_device_views_equal_the_cpu_transforms():
    rng = np.random.default_rng(1)
    t = 40
    frames = rng.integers(0, 256, (t + 6, 61, 97, 3), dtype=np.uint8)
    for interp, atol in [("nearest", 0.0), ("bilinear_short_side", 1 / (255 * 0.225) + 1e-6)]:
        cfg = FrameConfig((64, 56), 48, "imagenet", interp)
        dv = DeviceViews(ALL_VIEWS, cfg, t, 3, "cuda")
        got = dv.clips(torch.from_numpy(frames).cuda()).cpu().numpy()
        np.testing.assert_allclose(got, reference(frames, ALL_VIEWS, cfg, t, 3), rtol=0, atol=atol)


@pytest.mark.cuda
@needs_cuda
def test_cuda_stager_and_copyback_round_trip():
    st, cb = Stager("cuda"), CopyBack("cuda", depth=2)
    assert st.pin and cb.pin
    got = []
    for i in range(6):
        d = st.put(torch.full((7, 8, 9, 3), i, dtype=torch.uint8))
        assert d.is_cuda
        got += cb.push(d.float().mean(dim=(1, 2, 3))[None].repeat(4, 1), tag=i)
    got += cb.flush()
    assert [t for _, t in got] == list(range(6)) and all((h == t).all() for h, t in got)
    assert st.bufs[0].is_pinned()
