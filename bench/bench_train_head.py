"""Benchmark stage two: every head's default schedule on a cache the size of MTL-AQA.

    .venv/bin/python -m bench.bench_train_head                        # every head, 200 epochs (make bench)
    .venv/bin/python -m bench.bench_train_head --heads core_dd,musdl --epochs 20 --threads 2

The cache has MTL-AQA's shape: 1412 videos x 15 views (the views the MTL-AQA extraction stores: the
test view + end-frame shifts -3..3 x flip) x 10 clips x 1024, float16 (about 430 MB), with MTL-AQA's
real labels (final scores, difficulties, the 7 judges' scores, the 1059/353 split) read from the
annotation pickles shipped in data/meta/ (restricted unpickler). Its features are synthetic but
learnable: each video's clips carry its completeness (score / difficulty) and difficulty along fixed
random directions, plus per-view offsets and per-clip noise, so the printed rho says the run learned
something (it is not a result on MTL-AQA). It is written once to artifacts/bench/mtl_aqa_learnable.h5.

Each head runs its default schedule: the preset `default_preset("mtl_aqa", head)` picks (dd heads:
mtl_aqa_dd, usdl: mtl_aqa/usdl), 200 epochs, validation and test every epoch (10 voters for the pairwise
heads), a checkpoint every 10 epochs, final test inference. Printed per head: the training time, the
time per epoch, the process's CPU time (all threads; with --threads 1 less sensitive than the wall time
to other jobs on the machine) and the final test rho. `--epochs k` runs k epochs instead; the time of
200 epochs is then NOT measured (the table says which epochs ran).

The cache is read once, before the heads run (its time is printed apart); each head's time is its whole
`train` call on it (protocol, training, evaluation, checkpoints, final predictions, run files).

The numbers depend on the machine's load: the load average is printed with them. History (2-core AMD
EPYC VM, torch 2.13.0 CPU): core_dd on random features, before the tree fast paths (commit e8da788) 2.1
s/epoch at 1 thread under load ~4; after them 635 ms/epoch, 200 epochs 127.0 s at 2 threads (idle). On
this learnable cache the epochs slowed from ~400 to ~650 ms after epoch 20: Adam's first moments of dead
units decayed into subnormal floats (train_head.loop.flush_subnormal_state), and every large temporary
was new memory the kernel faulted in (train_head.runenv.keep_freed_memory). With both fixed the full
core_dd schedule went from 124.8 s to 55.6-58.9 s at 2 threads, with byte-identical metrics, predictions
and models (issue 14's numbers are in the README).
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
    # Run as a file (`python bench/bench_train_head.py`): re-run as a module from the repository root so
    # the project's packages import without editing sys.path.
    os.chdir(ROOT)
    os.execv(sys.executable, [sys.executable, "-m", "bench.bench_train_head", *sys.argv[1:]])

import numpy as np  # noqa: E402

from cache import VideoRecord, write_cache  # noqa: E402
from data.safe_pickle import restricted_load  # noqa: E402

META_DIRS = (ROOT / "data" / "meta" / "mtl_aqa", ROOT / "data" / "meta")
CACHE = ROOT / "artifacts" / "bench" / "mtl_aqa_learnable.h5"


def _meta(name: str) -> Path:
    for d in META_DIRS:
        if (d / name).is_file():
            return d / name
    raise SystemExit(f"{name} not found in {[str(d) for d in META_DIRS]}")


def mtl_aqa_labels():
    """[(video_id, score, difficulty, split, judge_scores)] of the 1412 MTL-AQA samples."""
    anno = restricted_load(_meta("final_annotations_dict_with_dive_number.pkl"))
    out = []
    for split, fname in (("train", "train_split_0.pkl"), ("test", "test_split_0.pkl")):
        for key in restricted_load(_meta(fname)):
            a = anno[tuple(key)]
            judges = [float(j) for j in np.asarray(a["judge_scores"]).ravel()]
            out.append((f"{int(key[0]):02d}_{int(key[1]):02d}", float(a["final_score"]), float(a["difficulty"]),
                        split, judges))
    return out


def learnable_clips(completeness: float, difficulty: float, dirs: np.ndarray, view_off: np.ndarray,
                    rng: np.random.Generator, n_clips: int, noise: float = 1.0) -> np.ndarray:
    """(V, C, D) float16 features of one video: completeness (0..30 -> -1..1) along dirs[0], its square
    along dirs[1], difficulty along dirs[2], per-view offsets and per-clip Gaussian noise."""
    c = completeness / 15.0 - 1.0
    base = 0.1 * (c * dirs[0] + 0.3 * c * c * dirs[1] + 0.5 * (difficulty - 3.0) * dirs[2])
    V, D = view_off.shape
    x = base + view_off[:, None, :] + noise * rng.standard_normal((V, n_clips, D), dtype=np.float32)
    return x.astype(np.float16)


def make_cache(path: Path, n_clips: int = 10, dim: int = 1024, seed: int = 0) -> Path:
    from data.transforms import default_views

    labels = mtl_aqa_labels()
    views = [v.to_dict() for v in default_views("mtl_aqa")]
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((3, dim)).astype(np.float32)
    view_off = 0.2 * rng.standard_normal((len(views), dim)).astype(np.float32)
    recs = [VideoRecord(i, vid, learnable_clips(score / diff, diff, dirs, view_off, rng, n_clips),
                        score, diff, split, "mtl_aqa", {}, {"judge_scores": judges})
            for i, (vid, score, diff, split, judges) in enumerate(labels)]
    attrs = {"dataset": "mtl_aqa", "backbone": "i3d", "weights_source": "synthetic-learnable",
             "weights_sha256": "none", "normalization": "imagenet",
             "clip_rule": {"T": 103, "n_clips": n_clips, "clip_len": 16}, "frame_config": {}, "views": views,
             "code_version": "bench"}
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_cache(path, recs, [], attrs)


def main() -> None:
    from train_head.heads import HEADS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", default="all", help=f"comma-separated heads or 'all' ({', '.join(HEADS)})")
    ap.add_argument("--head", default=None, help="one head (same as --heads HEAD)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--rebuild", action="store_true", help="rewrite the benchmark cache")
    ap.add_argument("--cache", default=str(CACHE), help="benchmark cache path (written when missing)")
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "bench" / "runs"),
                    help="run folder root (deleted first)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every head (e.g. checkpoint_every=200)")
    args = ap.parse_args()

    import json

    import torch

    from train_head.config import parse_set_options, resolve_config
    from train_head.presets import default_preset
    from train_head.trainer import load_cache_data, train

    heads = [args.head] if args.head else (list(HEADS) if args.heads == "all" else args.heads.split(","))
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise SystemExit(f"unknown head(s) {unknown}; heads: {', '.join(HEADS)}")
    cache = Path(args.cache)
    if args.rebuild or not cache.is_file():
        t = time.perf_counter()
        make_cache(cache)
        print(f"wrote {cache} ({cache.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    data = load_cache_data(cache, "mtl_aqa")
    t_load = time.perf_counter() - t0
    print(f"torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, device {args.device}, "
          f"{os.cpu_count()} CPUs; cache load + mean over clips {t_load:.1f} s")
    print(f"{'head':16s} {'preset':13s} {'epochs':>6s} {'train s':>8s} {'ms/epoch':>8s} {'CPU s':>7s} "
          f"{'rho final':>9s} {'load before':>11s}")
    overrides = parse_set_options(args.sets)
    for head in heads:
        preset = default_preset("mtl_aqa", head)
        cfg = resolve_config(preset, cache=str(cache), head=head, epochs=args.epochs, device=args.device,
                             out=str(out), threads=args.threads, **overrides)
        load = os.getloadavg()[0]
        t1, c1 = time.perf_counter(), time.process_time()
        run = train(cfg, progress=False, cache=data)      # the cache read above: its time is printed apart
        t_train, cpu = time.perf_counter() - t1, time.process_time() - c1
        rho = json.loads((run / "summary.json").read_text())["final"]["rho"]
        print(f"{head:16s} {preset:13s} {args.epochs:6d} {t_train:8.1f} {t_train / args.epochs * 1000:8.0f} "
              f"{cpu:7.1f} {rho:9.3f} {load:11.1f}", flush=True)


if __name__ == "__main__":
    main()
