"""Stage one: run I3D over a dataset and write per-clip features to an HDF5 cache.

    python -m extract features --dataset synthetic --root artifacts/datasets/synthetic
    torchrun --nproc_per_node 4 -m extract features --dataset aqa7 --root /data/AQA-7   # one GPU per rank

Per sample the frames are decoded ONCE (``read_frames(sample, max_shift=max |view.shift|)``), in decode
workers (`extract.feed`: one item per video, delivered as soon as it is ready), and the uint8 frames go
to the device once: views (resize, crop, flip), normalisation and clip cutting run there
(`extract.views_device`; equal to ``apply_view`` + ``cut_clips``, bitwise for nearest resizing), giving a
(V, n_clips) grid of 16-frame clips per video. Clips of several videos fill batches of ``batch_clips``
for ``I3D`` under ``torch.inference_mode`` (`extract.runloop`). Results per video: float32 ``(V, n_clips,
1024)``, stored as float16.

Numerics by device (batch norm is folded into the convolutions on every device):
- CPU: float32, channels_last_3d weights. bfloat16 is not used on CPU: on CPUs without native bf16
  matrix units it is far slower than float32 (measured on the 2-core reference machine at 64 px, 2
  clips: autocast bf16 17x, bf16 weights 5x slower; 50-280x has been seen at larger sizes), so
  ``precision`` is ignored there (with a warning). float32 results depend on the batch composition and
  the thread count at the 1e-5 level (different convolution algorithms), so two runs agree bitwise only
  with the same batches and threads (``workers=0``, the CPU default, keeps the dataset order).
- CUDA: bfloat16 autocast (``precision="fp16"`` for float16, ``"fp32"`` for none), channels_last_3d
  batches built on the GPU, ``cudnn.benchmark`` with one batch shape (the last batch is padded); the
  final feature map is averaged in float32. Pinned staging buffers, a side stream for the copies,
  asynchronous copy-back and part-file writes on their own thread (`extract.staging`).
  ``deterministic=True`` (opt-in) sets ``CUBLAS_WORKSPACE_CONFIG``, deterministic algorithms and
  in-order delivery instead of the autotuner. ``compile=True`` wraps the network in ``torch.compile``.
- The cache records ``precision`` and ``device`` (the kind: cpu, cuda); resuming parts made with another
  precision or device kind is refused (`check_part_numerics`), so one cache never mixes them.

Crash safety and resume (see ``cache.store``): finished videos and failures go to atomic part files
every ``part_every`` videos; a rerun skips finished videos (failed ones are retried), and at the end the
parts are merged into ``out_path`` (temp file + ``os.replace``). A complete ``out_path`` with the same
settings makes a rerun a no-op; one with other settings is refused unless ``overwrite``.

A video whose reading or transform raises (``data.DataError`` or any decode error), or whose features are
not finite (NaN/inf, also after the float16 cast), is recorded with its error and skipped; ``strict=True``
re-raises instead. If every video of a run fails, nothing is merged and `ExtractError` names the first
error (a wrong setting, not bad videos).

One extraction per output file: the run holds ``data.locks.exclusive_lock(out)`` (``<out>.lock``; under
torchrun rank 0 takes it), so a second run on the same file fails at once naming the first one's pid.
Before extracting it checks that ``out`` is not a folder and that the disk has room for the parts and the
merged file; a failed write (full disk, read-only folder) is a ``cache.CacheWriteError`` naming the file,
and the parts finished before are kept for the rerun. A complete file whose labels (scores, difficulty,
split, class, ...) differ from the dataset's gets its labels refreshed (``cache.sync_labels``; no
re-extraction); ``ExtractResult.labels_changed`` says what changed.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from cache import store as cstore
from data.transforms import FrameConfig, View, clip_starts

from . import dist
from .devices import PRECISIONS, DeviceError, resolve_device  # noqa: F401  (re-exported)
from .feed import default_workers  # noqa: F401  (re-exported)
from .runloop import AMP as _AMP, Features, _forward, input_dtype, run_loop  # noqa: F401
from .runloop import backend_flags, check_part_numerics, featurize_frames  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

CLIP_LEN = 16
BACKBONE = "i3d"


class ExtractError(RuntimeError):
    """A run that cannot produce a cache (every video failed, no samples): the message says what to check."""


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device.type != "cuda":
        if precision not in ("auto", "fp32"):
            log.warning("precision %s ignored on %s: float32 is used there (bf16 is much slower on CPUs)",
                        precision, device)
        return "fp32"
    return "bf16" if precision == "auto" else precision


def default_batch_clips(device: torch.device) -> int:
    return 128 if device.type == "cuda" else 16


def max_shift_of(views: Sequence[View]) -> int:
    return max((abs(int(v.shift)) for v in views), default=0)


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last_3d)
    return model


# ---------------------------------------------------------------------------------------- the run
@dataclass
class ExtractResult:
    path: Path
    n_videos: int = 0           # videos in the run (after max_videos)
    n_done_now: int = 0         # finished by this process in this call
    n_skipped: int = 0          # already finished by an earlier (interrupted) run
    n_failed: int = 0           # failed in this process in this call
    n_clips: int = 0            # clips run through the network by this process
    seconds: float = 0.0        # wall time of the extraction loop (decode included)
    already_complete: bool = False
    labels_changed: dict[str, int] = field(default_factory=dict)   # field -> changed values (refreshed)
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def videos_per_s(self) -> float:
        return (self.n_done_now + self.n_failed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def clips_per_s(self) -> float:
        return self.n_clips / self.seconds if self.seconds > 0 else 0.0


def video_list_sha256(video_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(video_ids).encode("utf-8")).hexdigest()


def run_extraction(dataset, out_path: str | os.PathLike, *, views: Sequence[View], frame_cfg: FrameConfig,
                   n_clips: int = 10, weights: str | os.PathLike = "kinetics400", device: str = "auto",
                   batch_clips: int | None = None, workers: int | None = None, strict: bool = False,
                   max_videos: int | None = None, overwrite: bool = False, precision: str = "auto",
                   part_every: int = 8, dataset_options: Mapping[str, Any] | None = None,
                   progress: bool = True, deterministic: bool = False, compile: bool = False,
                   decode_mode: str = "auto") -> ExtractResult:
    """`extract_dataset` returning an `ExtractResult` (counts and rates) instead of the path."""
    from .weights import load_i3d, weights_sha256

    out = Path(out_path)
    views = list(views)
    _check_counts(n_clips=n_clips, batch_clips=batch_clips, workers=workers, max_videos=max_videos,
                  part_every=part_every)
    cstore.check_not_folder(out)
    if not views:
        raise ValueError("no views to extract")
    if len({v.name for v in views}) != len(views):
        raise ValueError(f"view names must be unique: {[v.name for v in views]}")
    info = dist.dist_info()
    try:
        dev = dist.rank_device(resolve_device(device), info)
        info, started = dist.init(dev, info, backend="gloo")    # no GPU collectives: gloo on CUDA too
    except dist.DistError as e:
        raise ExtractError(str(e)) from None
    held = contextlib.ExitStack()
    try:
        _lock_output(out, info, held)
        prec = resolve_precision(precision, dev)
        samples = dataset.samples()
        if max_videos is not None:
            samples = samples[:max_videos]
        n = len(samples)
        if n == 0:
            raise ExtractError(f"{dataset.name} at {getattr(dataset, 'root', '?')}: no samples to extract; "
                               "check --root and the dataset options")
        t_frames = int(dataset.n_frames)
        starts = clip_starts(t_frames, n_clips, CLIP_LEN)
        sha = weights_sha256(weights)
        identity = {
            "schema_version": cstore.SCHEMA_VERSION, "dataset": dataset.name,
            "dataset_options": dict(dataset_options or {}), "backbone": BACKBONE,
            "weights_source": str(weights), "weights_sha256": sha, "normalization": frame_cfg.norm,
            "clip_rule": {"T": t_frames, "n_clips": n_clips, "clip_len": CLIP_LEN, "starts": starts},
            "frame_config": frame_cfg.to_dict(), "views": [v.to_dict() for v in views],
            "n_videos": n, "video_list_sha256": video_list_sha256([s.video_id for s in samples]),
        }
        attrs = {**identity, "dataset_root": str(getattr(dataset, "root", "")), "precision": prec,
                 "device": dev.type, "code_version": cstore.code_version()}
        res = ExtractResult(out, n_videos=n, rank=info.rank, world_size=info.world_size, device=str(dev),
                            precision=prec)

        if not overwrite:      # every rank checks, so that every rank raises the same error
            if cstore.final_status(out, identity) == "complete":
                if info.is_main:
                    import shutil
                    shutil.rmtree(cstore.parts_dir(out), ignore_errors=True)   # killed after the merge
                    # features do not depend on the labels: edited scores/splits are refreshed in place
                    res.labels_changed = cstore.sync_labels(out, {s.video_id: s for s in samples},
                                                            frame_keys=getattr(dataset, "frame_keys", ()))
                log.info("%s is already complete with these settings: nothing to do", out)
                res.already_complete = True
                return res
            cstore.scan_parts(out, identity, cleanup=False)
            check_part_numerics(out, prec, dev.type)
        if info.is_main:
            if overwrite:
                cstore.clear_outputs(out)
            else:
                removed = cstore.remove_stale_tmp(out) + cstore.scan_parts(out, identity, cleanup=True).removed
                if removed:
                    log.info("removed leftovers of an interrupted run: %s", ", ".join(removed))
        dist.barrier(info, "cleaned", dist.collective_timeout())
        state = cstore.scan_parts(out, identity, cleanup=False)
        todo = [i for i in range(n) if i not in state.done]
        mine = dist.shard(todo, info)
        res.n_skipped = n - len(todo)
        if res.n_skipped and info.is_main:
            log.info("resuming: %d of %d videos already done in %s", res.n_skipped, n, cstore.parts_dir(out))
        # room for the parts still to write and the merged file (float16 features; labels are small)
        per_video = len(views) * n_clips * 1024 * 2 + 4096
        cstore.check_free_space(out, len(todo) * per_video + n * per_video + 2 ** 20)

        # batch norm folded on every device (on CUDA it would be a separate pass over each map)
        model = prepare_model(load_i3d(weights, device="cpu", fuse_bn=True), dev)
        feat_dim = int(getattr(model, "feature_dim", 1024))
        net: torch.nn.Module = Features(model)
        if compile:
            net = torch.compile(net, dynamic=False)
        writer = cstore.PartWriter(out, attrs, (len(views), n_clips, feat_dim), rank=info.rank, every=part_every)
        try:
            with backend_flags(dev, deterministic):
                run_loop(net, dataset, [(i, samples[i]) for i in mine], views, frame_cfg, n_clips, dev, prec,
                         batch_clips or default_batch_clips(dev),
                         default_workers(dev) if workers is None else workers, strict, writer, res,
                         progress and info.is_main, in_order=deterministic, decode_mode=decode_mode,
                         forward=lambda m, x, d, p: _forward(m, x, d, p))   # looked up at call time
            writer.close()
        except BaseException:
            with contextlib.suppress(Exception):      # keep what is finished (Ctrl-C, --strict, a bad video)
                writer.flush()                         # (after a failed write this fails again, quietly)
            raise
        del model, net
        dist.barrier(info, "extracted")                 # the slowest rank's share; a failure ends it
        if info.is_main:
            st = cstore.scan_parts(out, identity, cleanup=False)
            if not st.done and st.failed:
                first = st.failed[min(st.failed)]
                raise ExtractError(
                    f"all {len(st.failed)} videos failed, nothing was written to {out}; first error: "
                    f"{first.video_id}: {first.error} (check --root and the dataset layout)")
            cstore.merge_parts(out, extra_attrs={"created": cstore.now_iso()}, labels=dict(enumerate(samples)))
            log.info("wrote %s: %d videos, %d failed", out, len(st.done), len(st.failed))
        dist.barrier(info, "merged")
        return res
    except dist.DistError as e:
        raise ExtractError(str(e)) from None
    except BaseException as e:
        dist.report_failure(info, e)                    # the other ranks stop at their next barrier
        raise
    finally:
        held.close()
        dist.finalize(started)


def _check_counts(**counts: int | None) -> None:
    """ValueError naming an option that must be a whole number >= 1 (workers: >= 0); None = the default."""
    for name, v in counts.items():
        lo = 0 if name == "workers" else 1
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo):
            raise ValueError(f"{name} must be a whole number >= {lo}, got {v!r}")


def _lock_output(out: Path, info: dist.DistInfo, held: contextlib.ExitStack) -> None:
    """Take the one-writer lock of ``out`` (rank 0 for all ranks; the outcome is shared so that every rank
    stops with the same error). A second extraction on the same file raises LockedError naming the pid
    of the first; a folder where the lock file cannot be created raises CacheWriteError."""
    from data.locks import LockedError, exclusive_lock, lock_path

    err: str | None = None
    if info.is_main:
        try:
            held.enter_context(exclusive_lock(out, "feature extraction"))
        except LockedError as e:
            err = str(e)
        except OSError as e:
            err = "write:" + str(cstore.write_error(lock_path(out), e))
    if info.enabled and torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [err]
        torch.distributed.broadcast_object_list(box, src=0)
        err = box[0]
    if err is not None:
        if err.startswith("write:"):
            raise cstore.CacheWriteError(err[len("write:"):])
        raise LockedError(err, out, lock_path(out), None)


def extract_dataset(dataset, out_path: str | os.PathLike, *, views: Sequence[View], frame_cfg: FrameConfig,
                    n_clips: int = 10, weights: str | os.PathLike = "kinetics400", device: str = "auto",
                    batch_clips: int | None = None, workers: int | None = None, strict: bool = False,
                    max_videos: int | None = None, **kwargs) -> Path:
    """Extract ``(V, n_clips, 1024)`` features of every sample of ``dataset`` into ``out_path``; returns it.

    ``weights``: "kinetics400" | "random" | a state-dict path (``extract.weights.load_i3d``).
    ``device``: "auto" | "cpu" | "cuda" (under torchrun: ``cuda:LOCAL_RANK``). ``batch_clips``: clips per
    forward (default 128 on CUDA, 16 on CPU). ``workers``: DataLoader decode workers (default 0 on CPU,
    up to 8 on CUDA). ``strict``: re-raise the first failing video instead of recording it.
    ``max_videos``: only the first N samples. Keyword extras: ``overwrite``, ``precision``
    ("auto"|"bf16"|"fp16"|"fp32", CUDA only), ``part_every`` (videos per part file),
    ``dataset_options`` (recorded in the attrs), ``progress``, ``deterministic`` (CUDA: reproducible
    algorithms instead of the autotuner; in-order delivery everywhere), ``compile`` (``torch.compile``),
    ``decode_mode`` ("auto"|"processes"|"threads", `extract.feed`).
    """
    return run_extraction(dataset, out_path, views=views, frame_cfg=frame_cfg, n_clips=n_clips, weights=weights,
                          device=device, batch_clips=batch_clips, workers=workers, strict=strict,
                          max_videos=max_videos, **kwargs).path
