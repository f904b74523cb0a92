"""The feeding path of stage one alone: decode + everything the CPU does per video, device step a no-op.

    .venv/bin/python -m bench.bench_feed                        # 1, 7 and 15 views; 0, 1 and 2 workers
    .venv/bin/python -m bench.bench_feed --videos 96 --workers 0,1,2,4 --json feed.json

Per video the CPU decodes the JPEG frames (``read_frames``: 103 frames of 455 x 256, 109 with the
MTL-AQA shifts), hands them to the main process (worker processes: through shared memory) and copies
them into the staging buffer (`extract.staging.Stager`, unpinned here; the copy to the GPU is DMA). Views, normalisation and
clip cutting are device work (`extract.views_device`), so here they cost nothing, and the clips a video
delivers are V x 10 whatever the number of views.

"per core" = clips delivered / CPU seconds of the whole process tree (main process + decode workers,
``getrusage``), which does not depend on how many cores the machine lends; "wall" is clips/s with that
many workers. Targets (issue 12): >= 500 clips/s per core with 7 views, >= 1,000 with 15.
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from bench.frames import BenchFrames, mean_frame_kb, write_frames
from data.transforms import TEST_VIEW, default_views
from extract.feed import available_cores, decoded_videos
from extract.staging import Stager

VIEWSETS = {1: [TEST_VIEW], 7: default_views("synthetic"), 15: default_views("mtl_aqa")}
TARGETS = {7: 500.0, 15: 1000.0}


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def feed_once(ds, n_views: int, workers: int, mode: str, n_clips: int = 10) -> dict:
    views = VIEWSETS[n_views]
    ms = max(abs(v.shift) for v in views)
    items = list(enumerate(ds.samples()))
    stager = Stager("cpu", pin=False, keep=False)
    c0, t0 = cpu_seconds(), time.perf_counter()
    n = 0
    for item in decoded_videos(ds, items, ms, workers=workers, mode=mode):
        if item[0] != "frames":
            raise RuntimeError(item[2])
        stager.put(item[2])               # what the host does before the GPU copy; the device step: none
        item[3]()                         # release the shared slot
        n += 1
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    clips = n * n_views * n_clips
    return {"views": n_views, "workers": workers, "mode": mode if workers else "inline", "videos": n,
            "frames_per_video": ds.n_frames + 2 * ms, "wall_s": wall, "cpu_s": cpu,
            "clips_per_s": clips / wall, "clips_per_cpu_s": clips / cpu, "videos_per_cpu_s": n / cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=48, help="videos per configuration (cycling over 6 folders)")
    ap.add_argument("--views", default="1,7,15")
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--mode", default="processes", choices=["processes", "threads"])
    ap.add_argument("--frames", default=None, help="frame folders (default: written into a temp folder)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    root = Path(a.frames) if a.frames else Path(tempfile.mkdtemp(prefix="bench-feed-")) / "frames"
    write_frames(root)
    ds = BenchFrames(root, a.videos)
    print(f"torch {torch.__version__}; {available_cores()} cores in the affinity mask; {a.videos} videos of "
          f"455x256 JPEG frames ({mean_frame_kb(root):.1f} KB per frame on average), 10 clips per view; "
          f"device step: none", flush=True)
    feed_once(BenchFrames(root, 6), 15, 0, a.mode)                 # warm the page cache
    rows = []
    for nv in (int(v) for v in a.views.split(",")):
        for w in (int(v) for v in a.workers.split(",")):
            r = feed_once(ds, nv, w, a.mode)
            rows.append(r)
            target = TARGETS.get(nv)
            verdict = "" if target is None else (" (target >= %d: %s)" % (target, "met" if r["clips_per_cpu_s"]
                                                                         >= target else "NOT met"))
            print(f"{nv:2d} views, {r['mode']:9s} workers {w}: {r['clips_per_s']:7.0f} clips/s wall, "
                  f"{r['clips_per_cpu_s']:7.0f} clips per CPU second{verdict}; {r['videos_per_cpu_s']:.1f} videos "
                  f"per CPU second ({r['frames_per_video']} frames each)", flush=True)
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "frame_kb": mean_frame_kb(root)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
