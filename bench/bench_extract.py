"""Stage one end to end (decode + views + I3D) at 224 px from 455x256 JPEG frames: the new loop side by
side with the one before issue 12, and the network alone, in one run.

    .venv/bin/python -m bench.bench_extract                        # CPU: 1 video x 7 views x 10 clips, 2 rounds
    .venv/bin/python -m bench.bench_extract --device cuda --videos 64 --no-legacy --json e2e.json

What is timed is what ships: the pipeline's model (`load_i3d(fuse_bn=True)` + `prepare_model`, the
`Features` head with its float32 mean, the pipeline's input dtype and layout, autocast on CUDA) and its
loop (`extract.runloop.run_loop`: decode feed, device views, batches, copy-back, background writes; part
files replaced by an in-memory writer). Random weights: the speed does not depend on them. The host is
noisy: compare the rows of one run (ratios), not runs of different days.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.frames import BenchFrames, mean_frame_kb, write_frames
from bench.legacy_feed import legacy_extract
from data.transforms import FrameConfig, default_views
from extract.pipeline import (ExtractResult, Features, backend_flags, default_batch_clips, default_workers,
                              input_dtype, prepare_model, resolve_device, resolve_precision, run_loop)
from extract.weights import load_i3d


class MemWriter:
    """The part writer's interface, in memory."""

    def __init__(self):
        self.feats: dict[str, np.ndarray] = {}
        self.failed: list = []

    def add(self, rec) -> None:
        self.feats[rec.video_id] = rec.features

    def add_failure(self, rec) -> None:
        self.failed.append(rec)


def network_rate(net, dev, prec, batch: int, iters: int) -> float:
    """clips/s of the pipeline's forward alone on one batch (median of ``iters`` after a warm-up)."""
    fmt = torch.channels_last_3d if dev.type == "cuda" else torch.contiguous_format
    x = torch.randn(batch, 3, 16, 224, 224, device=dev).to(input_dtype(dev, prec)).contiguous(memory_format=fmt)
    from bench.bench_i3d import time_pipeline

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with backend_flags(dev, False):
        return time_pipeline(net, x, dev, prec, iters, warmup=1, sync=sync)


def new_extract(net, ds, samples, views, cfg, dev, prec, batch, workers):
    w = MemWriter()
    res = ExtractResult(Path("memory"))
    with backend_flags(dev, False):
        run_loop(net, ds, list(enumerate(samples)), views, cfg, 10, dev, prec, batch, workers, True, w, res, False)
    return w.feats, res.seconds, res.n_clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternating new/before rounds (CPU)")
    ap.add_argument("--views", type=int, choices=[1, 7, 15], default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch-clips", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--net-iters", type=int, default=None, help="timed network batches (default 2 CPU, 20 CUDA)")
    ap.add_argument("--no-legacy", action="store_true", help="skip the pre-issue-12 loop")
    ap.add_argument("--frames", default=None, help="frame folders (default: written into a temp folder)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    dev = resolve_device(a.device)
    prec = resolve_precision(a.precision, dev)
    batch = a.batch_clips or default_batch_clips(dev)
    workers = default_workers(dev) if a.workers is None else a.workers
    views = {1: default_views("synthetic")[:1], 7: default_views("synthetic"), 15: default_views("mtl_aqa")}[a.views]
    root = Path(a.frames) if a.frames else Path(tempfile.mkdtemp(prefix="bench-extract-")) / "frames"
    write_frames(root)
    ds = BenchFrames(root, a.videos)
    samples = ds.samples()
    cfg = FrameConfig()                                       # 455x256 nearest, crop 224, imagenet
    model = prepare_model(load_i3d("random", device="cpu", fuse_bn=True), dev)
    net = Features(model)
    res = {"device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
           "precision": prec, "threads": torch.get_num_threads(), "torch": torch.__version__, "batch_clips": batch,
           "workers": workers, "videos": a.videos, "views": a.views, "frame_kb": mean_frame_kb(root)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {dev} ({prec}); {a.videos} videos x "
          f"{a.views} views x 10 clips at 224 from 455x256 JPEG ({res['frame_kb']:.1f} KB/frame), batch {batch}, "
          f"workers {workers}", flush=True)
    iters = a.net_iters or (20 if dev.type == "cuda" else 2)
    res["network_clips_per_s"] = network_rate(net, dev, prec, batch, iters)
    print(f"{'network alone (pipeline forward)':40s} {res['network_clips_per_s']:9.2f} clips/s", flush=True)
    # rounds alternate the two loops over the same videos, so that a slower or faster stretch of a noisy
    # host falls on both
    tot = {"new": [0.0, 0], "before": [0.0, 0]}
    diff = 0.0
    for r in range(1 if a.no_legacy else a.rounds):
        feats, secs, clips = new_extract(net, ds, samples, views, cfg, dev, prec, batch, workers)
        tot["new"][0] += secs
        tot["new"][1] += clips
        print(f"round {r + 1}: {'end to end, new loop':31s} {clips / secs:9.2f} clips/s ({clips} clips in "
              f"{secs:.1f} s)", flush=True)
        if a.no_legacy:
            break
        old, osecs, oclips = legacy_extract(model, ds, samples, views, cfg, 10, batch, dev)
        tot["before"][0] += osecs
        tot["before"][1] += oclips
        diff = max([diff] + [float(np.abs(old[k] - feats[k]).max()) for k in old])
        print(f"round {r + 1}: {'end to end, loop before issue 12':31s} {oclips / osecs:9.2f} clips/s ({oclips} "
              f"clips in {osecs:.1f} s)", flush=True)
    res["new_clips_per_s"] = tot["new"][1] / tot["new"][0]
    print(f"{'end to end, new loop (all rounds)':40s} {res['new_clips_per_s']:9.2f} clips/s", flush=True)
    if not a.no_legacy:
        res["legacy_clips_per_s"] = tot["before"][1] / tot["before"][0]
        res["max_abs_diff_new_vs_legacy"] = diff
        print(f"{'end to end, before issue 12 (all rounds)':40s} {res['legacy_clips_per_s']:9.2f} clips/s; "
              f"features new vs before: max abs difference {diff:.3g}")
        print(f"ratios: new / before {res['new_clips_per_s'] / res['legacy_clips_per_s']:.3f}, new / network "
              f"{res['new_clips_per_s'] / res['network_clips_per_s']:.3f}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
