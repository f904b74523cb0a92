"""Stage two on cached features: train one head on an HDF5 feature cache and write one run folder.

    python -m train_head train --cache artifacts/features/mtl_aqa.h5 --preset mtl_aqa_dd --seeds 0

    >>> from train_head.config import resolve_config
    >>> from train_head.trainer import train
    >>> run_dir = train(resolve_config("synthetic", cache="artifacts/features/synthetic.h5", epochs=5))

This module supplies only what the cached mode adds to the shared loop (`train_head.loop`; the rules
are in `train_head.protocol`): the cache read once into memory (video feature = mean over clips,
(N, V, D) float32, all on the device), one stored training view per training video per epoch, and the
evaluation features = the test view of the cache. Same seed and thread count, same numbers on CPU.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from train_head.config import ConfigError, RunConfig
from train_head.evaluator import Evaluator
from train_head.heads_sdl import judge_matrix
from train_head.loop import Task, build_run_head, open_run, prepare, record_protocol, run
from train_head.runenv import run_environment
from train_head.protocol import TrainError, carve_validation  # noqa: F401  (public names of stage two)
from train_head.runfolder import RunFolder

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class CacheData:
    """What the trainer needs from a cache, features already averaged over clips."""
    path: str
    feats: np.ndarray          # (N, V, D) float32
    video_ids: np.ndarray      # (N,) str
    scores: np.ndarray         # (N,) float64
    difficulty: np.ndarray     # (N,) float64, NaN = none
    split: np.ndarray          # (N,) str
    cls: np.ndarray            # (N,) str
    folds: tuple               # (N,) dicts protocol -> fold id
    views: tuple               # (V,) view dicts
    attrs: Mapping[str, Any]
    test_view: int
    train_views: tuple         # indices of train-role views
    judges: np.ndarray | None = None   # (N, J) judges' scores from extra["judge_scores"] (NaN = missing);
                                       # None when no video has any


def cache_data_from(c) -> CacheData:
    """Reduce a `cache.FeatureCache` (or anything with its attributes) to CacheData."""
    # mean over clips in chunks of videos: float16 -> float32 of a whole MTL-AQA-sized cache at once
    # would need a second copy of it (1.6 GB) for no gain.
    f16 = c.features
    n = f16.shape[0]
    feats = np.empty((n, f16.shape[1], f16.shape[3]), dtype=np.float32)
    step = max(1, 256 * 1024 * 1024 // max(1, f16[0].size * 4))
    for s in range(0, n, step):
        feats[s:s + step] = f16[s:s + step].astype(np.float32).mean(axis=2)
    return CacheData(str(c.path), feats, np.asarray(c.video_ids, dtype=str),
                     np.asarray(c.scores, dtype=np.float64), np.asarray(c.difficulty, dtype=np.float64),
                     np.asarray(c.split, dtype=str), np.asarray(c.cls, dtype=str), tuple(c.folds),
                     tuple(c.views), dict(c.attrs), int(c.test_view_index), tuple(c.train_view_indices),
                     judge_matrix(getattr(c, "extra", None) or []))


@functools.lru_cache(maxsize=1)
def _load_cached(path: str, mtime_ns: int, size: int, dataset: str | None) -> CacheData:
    # Keyed on mtime/size so a rewritten file is read again; one entry so a sweep worker that runs
    # many configs on the same cache reads it once.
    from cache import load_cache

    expect = {"dataset": dataset} if dataset else None
    return cache_data_from(load_cache(path, expect=expect))


def load_cache_data(path: str | os.PathLike, dataset: str | None = None) -> CacheData:
    p = Path(path)
    if not p.is_file():
        from cache import load_cache  # raises the cache package's own "missing file" message
        load_cache(p)
    st = p.stat()
    return _load_cached(str(p.resolve()), st.st_mtime_ns, st.st_size, dataset)



def resolve_views(data: CacheData, spec: str) -> np.ndarray:
    """Indices of the views training draws from ("all", a count "k" or comma-separated names)."""
    train_views = list(data.train_views)
    names = [str(v.get("name", i)) for i, v in enumerate(data.views)]
    if not train_views:
        log.warning("%s holds no train-role view; training uses the test view only", data.path)
        train_views = [data.test_view]
    if spec == "all":
        return np.asarray(train_views, dtype=np.int64)
    if spec.strip().isdigit():
        k = int(spec)
        if not 1 <= k <= len(train_views):
            raise ConfigError(f"views={spec}: the cache has {len(train_views)} training views")
        return np.asarray(train_views[:k], dtype=np.int64)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ConfigError(f"views: unknown view name(s) {unknown}; views in {data.path}: {names}")
    return np.asarray([names.index(w) for w in wanted], dtype=np.int64)


# ------------------------------------------------------------------------------------------ task
class CachedTask(Task):
    """Batches of pairs from the cached features on the device; evaluation on the test view."""

    def __init__(self, ctx, data: CacheData, device: torch.device):
        cfg, unit = ctx.cfg, ctx.unit
        self.desc = f"{ctx.dataset}/{cfg.unit}/{cfg.head} seed{cfg.seed}"
        self.bs, self.device = cfg.batch_size, device
        self.F = F = torch.from_numpy(data.feats).to(device)                     # (N, V, D)
        self.views = torch.from_numpy(resolve_views(data, cfg.views)).to(device)  # (Vt,)
        self.tr_idx = torch.from_numpy(unit.train).to(device)                   # (n_tr,)
        self.t_tr = torch.from_numpy(ctx.targets[unit.train]).float().to(device)
        tv = data.test_view
        pool = F[self.tr_idx, tv]                                               # (n_tr, D)
        ev_rng = ctx.streams.voters()                                           # val draws first, then test

        def evaluator(pos):
            return Evaluator(ctx.head_cls, F[torch.from_numpy(pos).to(device), tv], data.scores[pos],
                             data.difficulty[pos] if ctx.head_cls.dd else None, pool, self.t_tr, ctx.d_tr,
                             cfg.voters, ev_rng)
        self._evals = (evaluator(unit.val), evaluator(unit.test))
        torch.manual_seed(ctx.streams.torch)
        self.model = self.head = build_run_head(cfg, F.shape[-1], ctx.groups, ctx.n_judges).to(device)
        # fused Adam: one kernel over all parameters; on CPU ~5x faster per step than the per-tensor loop
        # for this head (2.5M parameters), and still deterministic.
        self.optim = torch.optim.Adam(self.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      fused=device.type in ("cpu", "cuda"))

    def begin_epoch(self, rng):
        v = torch.from_numpy(rng.integers(0, len(self.views), size=len(self.tr_idx))).to(self.device)
        self.f_ep = self.F[self.tr_idx, self.views[v]]                           # (n_tr, D)

    def batches(self, q, e, rng):
        q = torch.from_numpy(q).to(self.device)
        e = None if e is None else torch.from_numpy(e).to(self.device)
        f, t, bs = self.f_ep, self.t_tr, self.bs
        for s in range(0, q.numel(), bs):
            qb = q[s:s + bs]
            if e is None:
                yield lambda qb=qb: (self.head.loss(f[qb], t[qb])[0], qb.numel(), 1.0)
            else:
                eb = e[s:s + bs]
                yield lambda qb=qb, eb=eb: (self.head.loss(f[qb], t[qb], f[eb], t[eb])[0], qb.numel(), 1.0)

    def evaluators(self):
        return self._evals


# ------------------------------------------------------------------------------------------ train
def train(cfg: RunConfig, *, force: bool = False, cache: CacheData | Any | None = None,
          on_epoch_end: Callable[[int, dict], None] | None = None, progress: bool = True) -> Path:
    """Train one run and return its folder (see the module docstring).

    cache: an already loaded `cache.FeatureCache` or `CacheData` (default: read `cfg.cache`).
    on_epoch_end(epoch, row): called after each epoch's checkpoint; raising from it interrupts the run
        (tests use it to check resume).
    force: retrain even if the folder holds a complete run (its files are deleted first).
    """
    from extract.devices import resolve_device

    if cfg.cls == "all" or cfg.fold == "all":
        raise TrainError("cls/fold 'all' names several runs: expand them with train_head.sweep.expand_units "
                         "(the CLI does this for --class all / --fold all)")
    if cache is None:
        data = load_cache_data(cfg.cache)
    else:
        data = cache if isinstance(cache, CacheData) else cache_data_from(cache)
    dataset = run_dataset(cfg, data)
    ctx = prepare(cfg, data, dataset)          # the labels' checks, before anything is written
    device = resolve_device(cfg.device)
    record = RunFolder.config_record(cfg, dataset, data.attrs)
    with RunFolder(cfg.run_dir(dataset)).lock():
        folder, resume = open_run(cfg, dataset, record, force=force)
        if resume is None:
            return folder.path
        record_protocol(ctx, folder)
        with run_environment(cfg.threads, device=device, deterministic=cfg.deterministic):
            run(CachedTask(ctx, data, device), ctx, folder, resume=resume, progress=progress,
                on_epoch_end=on_epoch_end)
    return folder.path


def run_dataset(cfg: RunConfig, data: CacheData) -> str:
    """The dataset level of the run's folder (and its summary): the cache's dataset, or for a CSV dataset
    `csv-<stem>-<hash8>` of the CSV file the cache was made from (`data.fileio.dataset_label`), so two CSV
    datasets never share run folders. `cfg.dataset`, when set, must name the cache's dataset (either form)."""
    from data.fileio import dataset_label

    held = str(data.attrs.get("dataset", "unknown"))
    label = dataset_label(held, data.attrs.get("dataset_root") or None)
    if cfg.dataset and cfg.dataset not in (held, label):
        raise TrainError(f"{data.path} holds dataset {held!r}, the config asks for {cfg.dataset!r}; point --cache "
                         "to the right file or drop --dataset")
    return label
