"""The extraction loop: decoded videos in, per-video features out to the part writer.

    decode (extract.feed: workers, one item per video, out of order)
      -> Stager (CUDA: pinned ring, side-stream copy)  -> DeviceViews.prepare (views on the device)
      -> fixed-shape batches of clips across videos   -> forward (autocast on CUDA, mean in float32)
      -> CopyBack (CUDA: asynchronous, pinned)         -> per-video slots -> BackgroundWriter (HDF5)

Batches always hold ``batch_clips`` clips when ``pad_last`` (the CUDA default): the last one is padded
with zeros and the padded rows dropped, so cuDNN's autotuner sees one shape. The CPU does not pad (a
padded clip costs 0.36 s of CPU time at 224 px).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cache import store as cstore
from data.transforms import FrameConfig, View

from .feed import _no_release, decoded_videos
from .staging import BackgroundWriter, CopyBack, Stager
from .views_device import CLIP_LEN, DeviceViews

log = logging.getLogger(__name__)

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Features(torch.nn.Module):
    """``x [N, 3, T, H, W]`` -> float32 ``[N, D]``: the backbone's final map averaged over time and space
    in float32 (under bf16 autocast the map is bf16; its mean is taken after the cast, not in bf16)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.feature_dim = int(getattr(model, "feature_dim", 1024))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = getattr(self.model, "mixed_5c", None)
        if body is None:
            return self.model.forward_features(x).float()
        return body(x).float().mean(dim=(2, 3, 4))


def _forward(model: torch.nn.Module, x: torch.Tensor, device: torch.device, precision: str) -> torch.Tensor:
    """``x (B, 3, 16, S, S)`` on ``device`` -> float32 ``(B, D)`` on ``device``."""
    f = model if isinstance(model, Features) or hasattr(model, "_orig_mod") else Features(model)
    if device.type == "cuda" and precision in AMP:
        with torch.autocast("cuda", dtype=AMP[precision]):
            return f(x)
    return f(x.float() if x.dtype != torch.float32 else x)


def input_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The batch dtype: the autocast dtype on CUDA (the convolutions cast to it anyway), else float32."""
    return AMP.get(precision, torch.float32) if device.type == "cuda" else torch.float32


@torch.inference_mode()
def featurize_frames(model: torch.nn.Module, frames_uint8: np.ndarray, views: Sequence[View],
                     frame_cfg: FrameConfig, n_clips: int = 10, device: str | torch.device = "cpu", *,
                     batch_clips: int | None = None, precision: str = "auto") -> np.ndarray:
    """Features of one decoded sample: float32 ``(V, n_clips, D)`` (D = 1024 for I3D).

    ``frames_uint8``: ``(T + 2*max|shift|, H, W, 3)`` as ``dataset.read_frames(sample, max_shift)`` gives.
    ``model``: an eval-mode I3D already on ``device`` (e.g. ``load_i3d(..., device, fuse_bn=True)``).
    """
    from .pipeline import default_batch_clips, max_shift_of, resolve_device, resolve_precision

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    bc = batch_clips or default_batch_clips(dev)
    t = frames_uint8.shape[0] - 2 * max_shift_of(views)
    dv = DeviceViews(views, frame_cfg, t, n_clips, dev)
    vc = dv.prepare(torch.from_numpy(np.ascontiguousarray(frames_uint8)).to(dev))
    fmt = torch.channels_last_3d if dev.type == "cuda" else torch.contiguous_format
    out = []
    for lo in range(0, vc.n, bc):
        hi = min(vc.n, lo + bc)
        s = frame_cfg.crop
        x = torch.empty((hi - lo, 3, CLIP_LEN, s, s), dtype=input_dtype(dev, prec), device=dev, memory_format=fmt)
        vc.write(x, lo, hi)
        out.append(_forward(model, x, dev, prec).cpu())
    return torch.cat(out).numpy().reshape(len(views), n_clips, -1)


def check_part_numerics(out: Path, precision: str, device_kind: str) -> None:
    """CacheMismatch when part files of an interrupted run were made with another precision or device
    kind: resuming would mix bf16 and float32 features in one cache."""
    for p in sorted(cstore.parts_dir(out).glob("part-*.h5")):
        try:
            import h5py
            with h5py.File(p, "r") as h5:
                attrs = cstore.decode_attrs(h5.attrs)
        except OSError:
            continue                          # unreadable parts are scan_parts' business
        diffs = cstore.attr_differences(attrs, {"precision": precision, "device": device_kind})
        if diffs:
            was = f"{attrs.get('device', '?')} in {attrs.get('precision', '?')}"
            raise cstore.CacheMismatch(cstore.mismatch_message(
                f"Part file {p} (from an earlier, interrupted run)", diffs,
                f"It was extracted on {was}, this run is {device_kind} in {precision}: one cache must not mix "
                f"them. Resume with --device/--precision as before, or pass --force to discard "
                f"{cstore.parts_dir(out)} and start again."), attribute=diffs[0][0])


@contextlib.contextmanager
def backend_flags(device: torch.device, deterministic: bool) -> Iterator[None]:
    """CUDA: ``cudnn.benchmark`` (the autotuner) by default; ``deterministic``: deterministic algorithms
    (with ``CUBLAS_WORKSPACE_CONFIG``, needed by cuBLAS) instead. Restored afterwards."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    prev = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        cudnn.benchmark, cudnn.deterministic = False, True
        torch.use_deterministic_algorithms(True)
    else:
        cudnn.benchmark = True
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = prev[0], prev[1]
        torch.use_deterministic_algorithms(prev[2])


def _sample_record(index: int, s, feats: np.ndarray) -> cstore.VideoRecord:
    return cstore.VideoRecord(index, s.video_id, feats, float(s.score),
                              None if s.difficulty is None else float(s.difficulty), str(s.split), str(s.cls),
                              dict(s.folds), dict(s.extra))


def run_loop(model, dataset, items, views, frame_cfg, n_clips, dev, prec, batch_clips, workers, strict,
             writer: cstore.PartWriter, res, show: bool, *, pad_last: bool | None = None, in_order: bool = False,
             decode_mode: str = "auto", stager: Stager | None = None, copyback: CopyBack | None = None,
             forward=None) -> None:
    """Decode -> views on the device -> batches -> forward -> part files (module docstring)."""
    from .pipeline import ExtractError          # noqa: PLC0415 (pipeline imports this module)

    cuda = dev.type == "cuda"
    forward = forward or _forward
    pad_last = cuda if pad_last is None else pad_last
    dv = DeviceViews(views, frame_cfg, dataset.n_frames, n_clips, dev)
    dtype = input_dtype(dev, prec)
    fmt = torch.channels_last_3d if cuda else torch.contiguous_format
    stager = stager if stager is not None else (Stager(dev) if cuda else None)
    back = copyback if copyback is not None else CopyBack(dev)
    feat_dim = int(getattr(model, "feature_dim", 1024))
    samples = dict(items)
    per_video = dv.n_per_video
    slots: dict[int, np.ndarray] = {}
    left: dict[int, int] = {}
    queue: deque = deque()               # [index, VideoClips, next clip]
    n_queued = 0
    bar = tqdm(total=len(items), unit="video", disable=not show, dynamic_ncols=True, desc="extract")
    bg = BackgroundWriter()
    t0 = time.perf_counter()

    def fail(index: int, err: str) -> None:
        vid = samples[index].video_id
        slots.pop(index, None)
        left.pop(index, None)
        log.warning("%s failed: %s", vid, err)
        bg.submit(writer.add_failure, cstore.FailureRecord(index, vid, err))
        res.n_failed += 1
        res.failures.append((vid, err))
        bar.update(1)

    def finish(index: int) -> None:
        feats = slots[index]
        with np.errstate(over="ignore"):
            n_bad = feats.size - int(np.count_nonzero(np.isfinite(feats.astype(np.float16))))
        if n_bad:       # checked before the part is written: a NaN/inf never reaches the cache
            err = (f"non-finite features: {n_bad} of {feats.size} values are NaN/inf (or beyond float16's "
                   f"range 65504); check the weights and this video's frames")
            if strict:
                raise ExtractError(f"{samples[index].video_id}: {err}")
            fail(index, err)
            return
        bg.submit(writer.add, _sample_record(index, samples[index], slots.pop(index)))
        del left[index]
        res.n_done_now += 1
        bar.update(1)

    def scatter(done: list) -> None:
        for host, where in done:
            o = 0
            for idx, lo, k in where:
                o += k
                if idx not in slots:                 # the video failed meanwhile
                    continue
                slots[idx].reshape(per_video, feat_dim)[lo:lo + k] = host[o - k:o]
                left[idx] -= k
                if left[idx] == 0:
                    finish(idx)

    def run(take: int) -> None:
        nonlocal n_queued
        rows = batch_clips if pad_last else take
        s = frame_cfg.crop
        x = torch.empty((rows, 3, CLIP_LEN, s, s), dtype=dtype, device=dev, memory_format=fmt)
        where, got = [], 0
        while got < take:
            entry = queue[0]
            idx, vc, lo = entry
            k = min(vc.n - lo, take - got)
            vc.write(x[got:got + k], lo, lo + k)
            where.append((idx, lo, k))
            entry[2] = lo + k
            if entry[2] == vc.n:
                queue.popleft()
            got += k
        if rows > take:
            x[take:].zero_()
        feats = forward(model, x, dev, prec)
        n_queued -= take
        res.n_clips += take
        scatter(back.push(feats[:take], where))
        el = time.perf_counter() - t0
        bar.set_postfix_str(f"{res.n_clips / el:.1f} clips/s, failed {res.n_failed}", refresh=False)

    try:
        with torch.inference_mode():
            for item in decoded_videos(dataset, items, dv.max_shift, workers=workers, mode=decode_mode,
                                       in_order=in_order):
                if item[0] == "fail":
                    if strict:
                        raise item[3]
                    fail(item[1], item[2])
                    continue
                _, idx, frames, release = item
                try:
                    # the staging copy (or, on the CPU, a copy of a shared slot) frees the decoded frames
                    if stager is not None:
                        on_dev = stager.put(frames)
                    elif dev.type == "cpu" and release is not _no_release:
                        on_dev = frames.clone()
                    else:
                        on_dev = frames.to(dev)
                    release()
                    vc = dv.prepare(on_dev)
                except ValueError as e:
                    if strict:
                        raise
                    fail(idx, f"{type(e).__name__}: {e}")
                    continue
                frames = on_dev = None
                slots[idx] = np.empty((len(views), n_clips, feat_dim), np.float32)
                left[idx] = per_video
                queue.append([idx, vc, 0])
                n_queued += vc.n
                while n_queued >= batch_clips:
                    run(batch_clips)
            if n_queued:
                run(n_queued)
            scatter(back.flush())
    except BaseException:
        with contextlib.suppress(Exception):      # batches already computed: their videos are finished
            scatter(back.flush())
        bg.close(raise_error=False)        # what was finished is written (the caller flushes the parts)
        raise
    bg.close()
    res.seconds = time.perf_counter() - t0
    bar.close()
    if res.n_failed:
        log.warning("%d of %d videos failed (recorded in the cache's failed_id/failed_error)",
                    res.n_failed, len(items))


__all__ = ["run_loop", "Features", "AMP", "input_dtype", "featurize_frames", "check_part_numerics", "backend_flags"]
