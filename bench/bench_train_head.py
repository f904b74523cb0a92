"""Benchmark stage two on a cache the size of MTL-AQA.

    .venv/bin/python bench/bench_train_head.py                 # default core_dd schedule, 200 epochs
    .venv/bin/python bench/bench_train_head.py --epochs 20 --head core

The cache (1412 videos x 15 views (1 test + 7 end-frame shifts x 2 flips) x 10 clips x 1024, random
float16 features, about 430 MB) carries the real MTL-AQA final scores, difficulties and train/test
split, read from the annotation pickles shipped in data/meta/ (restricted unpickler). It is written
once to artifacts/bench/mtl_aqa_random.h5 and reused. The features are random, so the printed rho
means nothing; the timings are the point. Target: the whole default core_dd run (200 epochs,
validation and test every epoch with 10 voters, final test inference) under 150 s on a 2-core CPU.

Measured 2026-11-26 on the shared 2-core AMD EPYC VM (another engineer's jobs running, see load):
  before (commit e8da788), --threads 1, load ~4: training 421 s (2.1 s/epoch); 20 epochs back to back
  with the "after" run below (load ~0.9): 1487 ms/epoch.
  after, --threads 1, load ~1: 20 epochs 879 ms/epoch; the full 200 epochs 170-182 s (848-907 ms/epoch).
  after, --threads 2, machine otherwise idle (load 0.97 before): 200 epochs 127.0 s (635 ms/epoch),
  total 129.1 s. With a free second core 2 threads win; under contention 1 thread does.
Per epoch (after, 1 thread): ~27 training steps of 64 pair rows (~18 ms each: fwd ~5, bwd ~9, fused Adam
~2), validation + test inference of 5650 query-voter pairs (~250 ms), checkpoint.pt (40 MB, ~40-80 ms;
`--checkpoint-every 10` saves most of it). Where the time went before: einsum permute copies in the
tree, the full last split (half of the tree's work) for 16 leaves when one is needed, the first
layer recomputed per pair at inference, fresh gradient buffers every step.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and not __package__:
    # Run as a file (`python bench/bench_train_head.py`, what `make bench` does): re-run as a module
    # from the repository root so the project's packages import without editing sys.path.
    os.chdir(ROOT)
    os.execv(sys.executable, [sys.executable, "-m", "bench.bench_train_head", *sys.argv[1:]])

import numpy as np  # noqa: E402

from cache import VideoRecord, write_cache  # noqa: E402
from data.safe_pickle import restricted_load  # noqa: E402
META_DIRS = (ROOT / "data" / "meta" / "mtl_aqa", ROOT / "data" / "meta")
CACHE = ROOT / "artifacts" / "bench" / "mtl_aqa_random.h5"


def _meta(name: str) -> Path:
    for d in META_DIRS:
        if (d / name).is_file():
            return d / name
    raise SystemExit(f"{name} not found in {[str(d) for d in META_DIRS]}")


def mtl_aqa_labels():
    """[(video_id, score, difficulty, split)] of the 1412 MTL-AQA samples."""
    anno = restricted_load(_meta("final_annotations_dict_with_dive_number.pkl"))
    out = []
    for split, fname in (("train", "train_split_0.pkl"), ("test", "test_split_0.pkl")):
        for key in restricted_load(_meta(fname)):
            a = anno[tuple(key)]
            out.append((f"{int(key[0]):02d}_{int(key[1]):02d}", float(a["final_score"]), float(a["difficulty"]),
                        split))
    return out


def make_cache(path: Path, n_views: int = 15, n_clips: int = 10, dim: int = 1024, seed: int = 0) -> Path:
    labels = mtl_aqa_labels()
    rng = np.random.default_rng(seed)
    views = [{"name": "test", "shift": 0, "flip": False, "crop": "center", "role": "test"}]
    views += [{"name": f"s{s:+d}{'_flip' if f else ''}", "shift": s, "flip": f, "crop": "random", "role": "train"}
              for s in range(-3, 4) for f in (False, True)][: n_views - 1]
    recs = [VideoRecord(i, vid, rng.standard_normal((n_views, n_clips, dim), dtype=np.float32).astype(np.float16),
                        score, diff, split, "mtl_aqa")
            for i, (vid, score, diff, split) in enumerate(labels)]
    attrs = {"dataset": "mtl_aqa", "backbone": "i3d", "weights_source": "random", "weights_sha256": "random",
             "normalization": "imagenet", "clip_rule": {"T": 103, "n_clips": n_clips, "clip_len": 16},
             "frame_config": {}, "views": views, "code_version": "bench"}
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_cache(path, recs, [], attrs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", default="core_dd")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--rebuild", action="store_true", help="rewrite the fake cache")
    ap.add_argument("--cache", default=str(CACHE), help="fake cache path (written when missing)")
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "bench" / "runs"), help="run folder root "
                    "(deleted first)")
    ap.add_argument("--checkpoint-every", type=int, default=None,
                    help="checkpoint.pt every k epochs (default: the config's default)")
    args = ap.parse_args()

    import torch

    from train_head.config import resolve_config
    from train_head.presets import default_preset
    from train_head.trainer import load_cache_data, train

    cache = Path(args.cache)
    if args.rebuild or not cache.is_file():
        t = time.perf_counter()
        make_cache(cache)
        print(f"wrote {cache} ({cache.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    load_cache_data(cache, "mtl_aqa")
    t_load = time.perf_counter() - t0
    extra = {} if args.checkpoint_every is None else {"checkpoint_every": args.checkpoint_every}
    cfg = resolve_config(default_preset("mtl_aqa", args.head), cache=str(cache), head=args.head,
                         epochs=args.epochs, device=args.device, out=str(out), threads=args.threads, **extra)
    t1 = time.perf_counter()
    run = train(cfg, progress=False)
    t_train = time.perf_counter() - t1
    print(f"torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, device {args.device}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"checkpoint every {cfg.checkpoint_every} epochs")
    print(f"cache load + mean over clips: {t_load:.1f} s")
    print(f"train {args.head}, {args.epochs} epochs (val+test every epoch, {cfg.voters} voters, batch "
          f"{cfg.batch_size}): {t_train:.1f} s  ({t_train / args.epochs * 1000:.0f} ms/epoch)")
    print(f"total (load + train): {t_load + t_train:.1f} s   run folder: {run}")


if __name__ == "__main__":
    main()
