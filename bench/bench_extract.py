"""End-to-end extraction rate (decode + views + I3D, videos/s and clips/s) on the synthetic demo dataset.

    .venv/bin/python bench/bench_extract.py                       # CPU, demo frames, random weights
    .venv/bin/python bench/bench_extract.py --videos 32 --crop 224 --frame-size 455,256 --weights kinetics400
    .venv/bin/python bench/bench_extract.py --device cuda         # + bf16 at 224 and the decode rate alone

Prints one line per configuration. The rate is measured over the extraction loop only (model loading
and the final merge excluded); decode, view transforms and the part-file writes are included.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and not __package__:
    # Run as a file (`python bench/bench_extract.py`, what `make bench` does): re-run as a module from the
    # repository root so the project's packages import without editing sys.path.
    os.chdir(ROOT)
    os.execv(sys.executable, [sys.executable, "-m", "bench.bench_extract", *sys.argv[1:]])

import torch  # noqa: E402

from data import get_dataset  # noqa: E402
from data.synthetic import write_synthetic  # noqa: E402
from data.transforms import FrameConfig, default_views  # noqa: E402
from extract.feed import decoded_videos  # noqa: E402
from extract.pipeline import default_workers, max_shift_of, resolve_device, run_extraction  # noqa: E402


def decode_rate(ds, views, cfg, n_clips, workers, n_videos, half):
    """Videos/s and clips/s of decoding alone (what the CPU does per video; views run on the device)."""
    items = list(enumerate(ds.samples()[:n_videos]))
    t0 = time.perf_counter()
    n = sum(1 for x in decoded_videos(ds, items, max_shift_of(views), workers=workers) if x[0] == "frames")
    dt = time.perf_counter() - t0
    return len(items) / dt, n * len(views) * n_clips / dt


def one(ds, out, label, **kw):
    res = run_extraction(ds, out, overwrite=True, progress=False, **kw)
    print(f"{label:48s} {res.videos_per_s:8.3f} videos/s {res.clips_per_s:9.1f} clips/s  "
          f"({res.n_done_now} videos in {res.seconds:.1f}s, {res.device}, {res.precision})", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="demo dataset (default: rendered into a temp folder)")
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--size", type=int, default=128, help="demo frame size (python -m data synthetic --size)")
    ap.add_argument("--frame-size", default="128,128", help="resize HEIGHT,WIDTH")
    ap.add_argument("--crop", type=int, default=112)
    ap.add_argument("--views", choices=["default", "test-only"], default="default")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-clips", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    root = Path(a.root) if a.root else write_synthetic(tmp / "syn", n_videos=max(a.videos, 2), seed=0, size=a.size)
    ds = get_dataset("synthetic", root)
    views = default_views("synthetic")
    if a.views == "test-only":
        views = views[:1]
    h, w = (int(v) for v in a.frame_size.split(","))
    cfg = FrameConfig(resize_hw=(h, w), crop=a.crop)
    dev = resolve_device(a.device)
    workers = default_workers(dev) if a.workers is None else a.workers
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
          + f"; {a.videos} demo videos of {a.size}px, {len(views)} views x 10 clips, workers {workers}")
    kw = dict(views=views, n_clips=10, weights=a.weights, device=str(dev), batch_clips=a.batch_clips,
              workers=workers, max_videos=a.videos)
    one(ds, tmp / "a.h5", f"end-to-end {cfg.resize_hw} crop {a.crop}", frame_cfg=cfg, **kw)
    if dev.type == "cuda":
        full = FrameConfig()
        one(ds, tmp / "b.h5", "end-to-end (455, 256) crop 224 bf16", frame_cfg=full, precision="bf16", **kw)
        v, c = decode_rate(ds, views, full, 10, workers, a.videos, half=True)
        print(f"{'decode + views only, crop 224':48s} {v:8.3f} videos/s {c:9.1f} clips/s")
    else:
        v, c = decode_rate(ds, views, cfg, 10, workers, a.videos, half=False)
        print(f"{'decode + views only, crop ' + str(a.crop):48s} {v:8.3f} videos/s {c:9.1f} clips/s")


if __name__ == "__main__":
    main()
