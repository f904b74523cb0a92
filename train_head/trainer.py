"""Stage two: train one head on a cached feature file and write one run folder.

    python -m train_head train --cache artifacts/features/mtl_aqa.h5 --preset mtl_aqa_dd --seeds 0

    >>> from train_head.config import resolve_config
    >>> from train_head.trainer import train
    >>> run_dir = train(resolve_config("synthetic", cache="artifacts/features/synthetic.h5", epochs=5))

What one run does (SPEC sections 3-5, 7):
  * reads the cache once into memory: video features = mean over clips, (N, V, D) float32;
  * keeps the videos of `cfg.cls`; train = split "train" (or every fold but `cfg.fold` under a
    cross-validation protocol), test = split "test" (or fold `cfg.fold`);
  * carves a validation set from train (`val_fraction`, stratified over score-quantile bins, drawn
    from the seed); the rest is the training pool (pairs, groups and exemplars all come from it);
  * targets are scores, or completeness = score / difficulty for dd heads;
  * each epoch draws one stored training view per training video, one exemplar per query
    (`train_pairs`), shuffles the pairs and takes Adam steps on batches (tensor indexing only);
  * every `val_every` epochs it predicts validation and test videos with `voters` exemplars from the
    training pool (test view; the voter draw is fixed for the whole run) and logs both to metrics.csv;
  * the selected model is the epoch with the best validation rho (ties -> earliest; NaN ranks
    lowest); the test set never selects anything - its best epoch is reported only as `best_on_test`.

Run folder (docs/ARCHITECTURE.md, "Run folder"): config.json, metrics.csv, predictions.csv,
groups.json + leaf_counts.json (tree heads), summary.json (written last; `"complete": true` marks a
finished run that a rerun skips unless `force`), model_selected.pt, model_final.pt, checkpoint.pt
(resume), split.json (video ids of train/val/test).

Resume: checkpoint.pt (model, optimiser, epoch, numpy and torch RNG states, the best-so-far model,
the metric rows) is written atomically every `checkpoint_every` epochs. A run whose folder holds a
checkpoint but no complete summary continues from it and ends with the same numbers as an
uninterrupted run (CPU). Determinism: all randomness flows from `cfg.seed` (a numpy Generator for
views, pairs and shuffling; torch's generator for the initial weights); same seed, same numbers on CPU.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from train_head.config import ConfigError, RunConfig, config_from_dict, config_record, dump_json
from train_head.groups import build_groups, leaf_labels
from train_head.heads import HEADS, build_head
from train_head.metrics import all_metrics
from train_head.pairs import test_voters, train_pairs

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "train_loss", "val_rho", "val_l2", "val_rl2", "test_rho", "test_l2", "test_rl2")
RUN_FILES = ("config.json", "metrics.csv", "predictions.csv", "groups.json", "leaf_counts.json",
             "summary.json", "model_selected.pt", "model_final.pt", "checkpoint.pt", "split.json",
             "timing.json")
# Query x voter pairs per inference batch: bounds memory (B*M*(2D+1) floats) while keeping batches big.
_INFER_PAIRS = 16384


class TrainError(ValueError):
    """A run cannot start with this cache/config; the message says what to change."""


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
                     tuple(c.views), dict(c.attrs), int(c.test_view_index), tuple(c.train_view_indices))


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


# -------------------------------------------------------------------------------------- selection
@dataclass(frozen=True)
class Unit:
    """Positions (into CacheData arrays) of the train pool, validation and test videos."""
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def select_unit(data: CacheData, cfg: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train+val positions, test positions) of the run's class/task and split or fold."""
    classes = sorted(set(data.cls.tolist()))
    if cfg.cls is not None:
        keep = data.cls == cfg.cls
        if not keep.any():
            raise TrainError(f"{data.path}: no video of class {cfg.cls!r}; classes in this cache: {classes}")
    else:
        if len(classes) > 1:
            raise TrainError(f"{data.path} holds {len(classes)} classes {classes}: each is trained on its own; "
                             "pass --class NAME or --class all")
        keep = np.ones(len(data.cls), dtype=bool)
    if cfg.protocol:
        if cfg.fold is None:
            raise TrainError(f"protocol {cfg.protocol!r} needs the held-out fold: pass --fold ID (or --fold all)")
        fold_of = np.array([str(f.get(cfg.protocol, "")) for f in data.folds])
        missing = keep & (fold_of == "")
        if missing.any():
            raise TrainError(f"{data.path}: {int(missing.sum())} videos have no fold for protocol "
                             f"{cfg.protocol!r} (e.g. {data.video_ids[missing][0]}); use a cache of a dataset "
                             "with that protocol or drop --protocol")
        test = keep & (fold_of == str(cfg.fold))
        train = keep & ~test
        if not test.any():
            raise TrainError(f"{data.path}: fold {cfg.fold!r} of protocol {cfg.protocol!r} has no video; folds: "
                             f"{sorted(set(fold_of[keep].tolist()))}")
    else:
        train = keep & (data.split == "train")
        test = keep & (data.split == "test")
        if not test.any():
            raise TrainError(f"{data.path}: no test video for class {cfg.cls or classes[0]!r} (split column); "
                             "for a cross-validation dataset pass --protocol and --fold")
    if train.sum() < 3:
        raise TrainError(f"{data.path}: only {int(train.sum())} training videos for {cfg.unit!r}; need >= 3")
    return np.flatnonzero(train), np.flatnonzero(test)


def carve_validation(scores: np.ndarray, fraction: float, n_bins: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..n-1 into (pool, val), stratified by score.

    The videos are sorted by score (ties broken at random), cut into `n_bins` equal-count bins, and
    each bin gives its share of round(fraction * n) validation videos (largest remainders first).
    Both outputs are sorted position arrays.
    """
    n = scores.size
    n_val = int(round(fraction * n))
    if fraction <= 0 or n_val == 0:
        return np.arange(n), np.empty(0, dtype=np.int64)
    n_val = min(n_val, n - 2)          # the pool needs pairs
    order = np.lexsort((rng.random(n), scores))
    bins = np.array_split(order, min(n_bins, n))
    quota = np.array([len(b) * n_val / n for b in bins])
    take = np.floor(quota).astype(int)
    short = n_val - take.sum()
    if short > 0:
        rem_order = np.argsort(-(quota - take), kind="stable")
        take[rem_order[:short]] += 1
    val = np.concatenate([rng.permutation(b)[:k] for b, k in zip(bins, take)]).astype(np.int64)
    val.sort()
    pool = np.setdiff1d(np.arange(n), val)
    return pool, val


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


# --------------------------------------------------------------------------------------- helpers
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optim: torch.optim.Optimizer, epoch: int,
                    rng: np.random.Generator, rows: list[dict], best: dict, best_state) -> None:
    """checkpoint.pt for resume (atomic): weights, optimiser, RNG states, metrics rows and best-so-far.
    Shared by the cached trainer and end-to-end fine-tuning."""
    atomic_torch_save({
        "model": cpu_state(model), "optim": optim.state_dict(), "epoch": epoch,
        "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
        "rows": json.dumps(rows), "best": json.dumps(best), "best_model": best_state,
    }, run_dir / "checkpoint.pt")


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optim: torch.optim.Optimizer,
                    rng: np.random.Generator, map_location) -> tuple[list[dict], dict, Any, int]:
    """Restore what `save_checkpoint` wrote into `model`, `optim` and `rng`; returns
    (rows, best, best_state, first epoch still to run)."""
    ck = torch.load(run_dir / "checkpoint.pt", map_location=map_location, weights_only=True)
    model.load_state_dict(ck["model"])
    optim.load_state_dict(ck["optim"])
    rng.bit_generator.state = json.loads(ck["numpy_rng"])
    torch.set_rng_state(ck["torch_rng"])
    log.info("%s: resuming after epoch %d", run_dir, ck["epoch"])
    return json.loads(ck["rows"]), json.loads(ck["best"]), ck["best_model"], int(ck["epoch"]) + 1


def _set_deterministic(mode: bool, *, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms`` without its import of torch._inductor (~3 s on first use,
    a large share of a small run); that import only serves compiled code, which stage two never uses.
    Once torch._inductor is loaded (someone compiles), the public call keeps its config in step."""
    import sys

    if "torch._inductor" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


def _fmt(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))


def metrics_csv(rows: list[dict]) -> str:
    lines = [",".join(METRIC_COLUMNS)]
    for r in rows:
        lines.append(",".join(str(r["epoch"]) if c == "epoch" else _fmt(r[c]) for c in METRIC_COLUMNS))
    return "\n".join(lines) + "\n"


def nan_to_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _same_config(run_dir: Path, cfg: RunConfig, data: CacheData, dataset: str) -> bool:
    """Does run_dir/config.json hold the same RunConfig (dataset filled in) as `cfg`?"""
    try:
        old = config_from_dict(json.loads((run_dir / "config.json").read_text())).to_dict()
    except (OSError, ValueError, TypeError):
        return False
    return old == {**cfg.to_dict(), "dataset": dataset}


class OncePerMessage(logging.Filter):
    """Lets each distinct message through once (train_pairs warns about the same dropped queries every
    epoch)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg in self.seen:
            return False
        self.seen.add(msg)
        return True


def is_complete(run_dir: Path) -> bool:
    """True when `run_dir/summary.json` exists and says complete."""
    p = Path(run_dir) / "summary.json"
    try:
        return bool(json.loads(p.read_text()).get("complete"))
    except (OSError, ValueError):
        return False


class Evaluator:
    """Predicts a fixed query set against a fixed voter draw from the training pool.

    All queries x voters go through the head in a few large batches of `_INFER_PAIRS` pairs.
    """

    def __init__(self, head_cls, q_feats: torch.Tensor, q_scores: np.ndarray, q_diff: np.ndarray | None,
                 pool_feats: torch.Tensor, pool_t: torch.Tensor, pool_diff: np.ndarray | None, voters: int,
                 rng: np.random.Generator):
        self.q_feats, self.q_scores, self.q_diff = q_feats, q_scores, q_diff    # (B, D), (B,), (B,)|None
        self.pool_feats, self.pool_t = pool_feats, pool_t                        # (P, D), (P,)
        self.pairwise, self.dd = head_cls.pairwise, head_cls.dd
        self.idx = self.mask = None
        if self.pairwise and len(q_scores):
            idx, mask = test_voters(pool_diff if self.dd else None, q_diff if self.dd else None,
                                    voters, rng, n_pool=len(pool_t), n_query=len(q_scores))
            dev = q_feats.device
            self.idx = torch.from_numpy(idx).to(dev)                             # (B, M)
            self.mask = torch.from_numpy(mask).to(dev)                           # (B, M)
        self._scale = (torch.from_numpy(q_diff).to(q_feats) if self.dd else None)

    def __len__(self) -> int:
        return len(self.q_scores)

    @torch.inference_mode()
    def predict(self, head) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(score (B,), per-voter score (B, M) | None, leaf (B, M) | None) on the evaluation scale."""
        was_training = head.training
        head.eval()
        B = len(self)
        if not self.pairwise:
            step = _INFER_PAIRS
            t = torch.cat([head.predict(self.q_feats[s:s + step]).target for s in range(0, B, step)])
            pv = leaf = None
        else:
            M = self.idx.shape[1]
            step = max(1, _INFER_PAIRS // M)
            outs, pvs, leaves = [], [], []
            for s in range(0, B, step):
                idx = self.idx[s:s + step]
                # pool indices, not gathered features: the head projects each pool video once
                p = head.predict_indexed(self.q_feats[s:s + step], self.pool_feats, self.pool_t, idx,
                                         self.mask[s:s + step])
                outs.append(p.target)
                pvs.append(p.per_voter)
                if p.leaf is not None:
                    leaves.append(p.leaf)
            t, pv = torch.cat(outs), torch.cat(pvs)
            leaf = torch.cat(leaves) if leaves else None
        if self.dd:
            t = t * self._scale
            pv = pv * self._scale[:, None] if pv is not None else None
        head.train(was_training)
        return (t.double().cpu().numpy(), None if pv is None else pv.double().cpu().numpy(),
                None if leaf is None else leaf.cpu().numpy())

    def metrics(self, head) -> dict[str, float]:
        if not len(self):
            return {"rho": math.nan, "l2": math.nan, "rl2": math.nan}
        return all_metrics(self.predict(head)[0], self.q_scores)


# ------------------------------------------------------------------------------------------ train
def train(cfg: RunConfig, *, force: bool = False, cache: CacheData | Any | None = None,
          on_epoch_end: Callable[[int, dict], None] | None = None, progress: bool = True) -> Path:
    """Train one run and return its folder (see the module docstring).

    cache: an already loaded `cache.FeatureCache` or `CacheData` (default: read `cfg.cache`).
    on_epoch_end(epoch, row): called after each epoch's checkpoint; raising from it interrupts the run
        (tests use it to check resume).
    force: retrain even if the folder holds a complete run (its files are deleted first).
    """
    if cfg.cls == "all" or cfg.fold == "all":
        raise TrainError("cls/fold 'all' names several runs: expand them with train_head.sweep.expand_units "
                         "(the CLI does this for --class all / --fold all)")
    if cfg.head not in HEADS:
        raise ConfigError(f"unknown head {cfg.head!r}; heads: {sorted(HEADS)}")
    head_cls = HEADS[cfg.head]
    if cache is None:
        data = load_cache_data(cfg.cache, cfg.dataset)
    else:
        data = cache if isinstance(cache, CacheData) else cache_data_from(cache)
    dataset = cfg.dataset or str(data.attrs.get("dataset", "unknown"))
    if cfg.dataset and str(data.attrs.get("dataset")) != cfg.dataset:
        raise TrainError(f"{data.path} holds dataset {data.attrs.get('dataset')!r}, the config asks for "
                         f"{cfg.dataset!r}; point --cache to the right file or drop --dataset")
    run_dir = cfg.run_dir(dataset)

    if is_complete(run_dir) and not force:
        if not _same_config(run_dir, cfg, data, dataset):
            raise TrainError(f"{run_dir} holds a complete run of a different config (config.json differs); "
                             "rerun with --force to replace it, or change --out")
        log.info("%s is complete; skipping (use --force to retrain)", run_dir)
        return run_dir
    if force and run_dir.exists():
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    # ---- resume bookkeeping: a checkpoint must belong to the same config
    ckpt_path = run_dir / "checkpoint.pt"
    cfg_path = run_dir / "config.json"
    record = config_record(cfg, data.attrs, dataset)
    resume = ckpt_path.is_file()
    if resume:
        if not _same_config(run_dir, cfg, data, dataset):
            raise TrainError(f"{run_dir} holds a checkpoint of a different config (config.json differs); "
                             "rerun with --force to start over, or change --out")
        old = json.loads(cfg_path.read_text())
        if old.get("git_commit") != record["git_commit"]:
            old.setdefault("resumed_git_commits", []).append(record["git_commit"])
            atomic_write_text(cfg_path, dump_json(old))
    else:
        atomic_write_text(cfg_path, dump_json(record))

    t_start = time.perf_counter()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    _set_deterministic(True, warn_only=True)
    pairs_log, once = logging.getLogger("train_head.pairs"), OncePerMessage()
    pairs_log.addFilter(once)
    prev_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, head_cls, data, dataset, run_dir, resume, on_epoch_end, progress, t_start)
    finally:
        _set_deterministic(prev_det, warn_only=prev_warn)
        pairs_log.removeFilter(once)
        torch.set_num_threads(prev_threads)


def _train(cfg, head_cls, data: CacheData, dataset: str, run_dir: Path, resume: bool, on_epoch_end,
           progress: bool, t_start: float) -> Path:
    device = _device(cfg.device)
    trainval, test = select_unit(data, cfg)

    # ---- validation carve and targets
    pool_pos, val_pos = carve_validation(data.scores[trainval], cfg.val_fraction, cfg.val_bins,
                                         np.random.default_rng([cfg.seed, 1]))
    unit = Unit(trainval[pool_pos], trainval[val_pos], test)
    diff = data.difficulty
    targets, d_tr = run_targets(head_cls, data, unit, source=data.path,
                                hint=f"use the head without '_dd' (e.g. {cfg.head[:-3]!r})")

    # ---- groups from the training pool only
    groups, n_clamped = run_groups(head_cls, targets, unit, d_tr, cfg.depth, cfg.theta, run_dir)
    write_split(run_dir, data, unit)

    # ---- tensors on the device
    F = torch.from_numpy(data.feats).to(device)                        # (N, V, D)
    feat_dim = F.shape[-1]
    views = torch.from_numpy(resolve_views(data, cfg.views)).to(device)  # (Vt,)
    tr_idx = torch.from_numpy(unit.train).to(device)                   # (n_tr,)
    t_tr = torch.from_numpy(targets[unit.train]).float().to(device)    # (n_tr,)
    tv = data.test_view
    pool_feats = F[tr_idx, tv]                                         # (n_tr, D) test view of the pool
    eval_rng = np.random.default_rng([cfg.seed, 2])                    # fixed voters for val and test

    def evaluator(pos):
        return Evaluator(head_cls, F[torch.from_numpy(pos).to(device), tv], data.scores[pos],
                          diff[pos] if head_cls.dd else None, pool_feats, t_tr, d_tr, cfg.voters, eval_rng)

    val_eval, test_eval = evaluator(unit.val), evaluator(unit.test)

    # ---- model, optimiser, RNG
    torch.manual_seed(cfg.seed)
    head = build_head(cfg.head, feat_dim=feat_dim, theta=cfg.theta, depth=cfg.depth, hidden=cfg.hidden,
                      groups=groups).to(device)
    # fused Adam: one kernel over all parameters; on CPU ~5x faster per step than the per-tensor loop
    # for this head (2.5M parameters), and still deterministic.
    fused = device.type in ("cpu", "cuda")
    optim = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    rng = np.random.default_rng(cfg.seed)
    rows: list[dict] = []
    best = {"epoch": None, "val_rho": None}
    best_state = None
    start_epoch = 1
    if resume:
        rows, best, best_state, start_epoch = load_checkpoint(run_dir, head, optim, rng, device)

    n_tr = len(unit.train)
    bs, accum = cfg.batch_size, cfg.grad_accum
    epochs = range(start_epoch, cfg.epochs + 1)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(epochs, desc=f"{dataset}/{cfg.unit}/{cfg.head} seed{cfg.seed}", leave=False,
                   dynamic_ncols=True)
    n_dropped_pairs = 0
    for epoch in (bar if bar is not None else epochs):
        head.train()
        # one stored training view per video for this epoch
        v = torch.from_numpy(rng.integers(0, len(views), size=n_tr)).to(device)
        f_ep = F[tr_idx, views[v]]                                       # (n_tr, D)
        if head_cls.pairwise:
            q, e, n_dropped_pairs = train_pairs(n_tr, rng, difficulty=d_tr)
            perm = rng.permutation(q.size)
            q = torch.from_numpy(q[perm]).to(device)
            e = torch.from_numpy(e[perm]).to(device)
        else:
            q = torch.from_numpy(rng.permutation(n_tr)).to(device)
            e = None
        n_items = q.numel()
        n_batches = max(1, math.ceil(n_items / bs))
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        # zeroing (not freeing) the gradients: the next backward adds into the same buffers (0 + g = g),
        # instead of allocating ~10 MB of fresh gradient memory every step (page faults: ~20% of a step)
        optim.zero_grad(set_to_none=False)
        for b in range(n_batches):
            qb = q[b * bs:(b + 1) * bs]
            if e is not None:
                eb = e[b * bs:(b + 1) * bs]
                loss, _ = head.loss(f_ep[qb], t_tr[qb], f_ep[eb], t_tr[eb])
            else:
                loss, _ = head.loss(f_ep[qb], t_tr[qb])
            (loss / accum).backward()
            loss_sum += loss.detach().double() * qb.numel()
            if (b + 1) % accum == 0 or b + 1 == n_batches:
                optim.step()
                optim.zero_grad(set_to_none=False)
        train_loss = float(loss_sum.item()) / max(1, n_items)

        row = {"epoch": epoch, "train_loss": train_loss}
        evaluated = epoch % cfg.val_every == 0 or epoch == cfg.epochs
        vm = val_eval.metrics(head) if evaluated else {"rho": math.nan, "l2": math.nan, "rl2": math.nan}
        tm = test_eval.metrics(head) if evaluated else {"rho": math.nan, "l2": math.nan, "rl2": math.nan}
        row.update({f"val_{k}": x for k, x in vm.items()})
        row.update({f"test_{k}": x for k, x in tm.items()})
        rows.append(row)
        if evaluated:
            new_best = update_best(best, epoch, vm["rho"], always=len(val_eval) == 0)  # no val: last epoch
            if new_best is not None:
                best, best_state = new_best, cpu_state(head)
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.4g}", val=f"{vm['rho']:.3f}", test=f"{tm['rho']:.3f}")

        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            atomic_write_text(run_dir / "metrics.csv", metrics_csv(rows))
            save_checkpoint(run_dir, head, optim, epoch, rng, rows, best, best_state)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    if bar is not None:
        bar.close()

    atomic_write_text(run_dir / "metrics.csv", metrics_csv(rows))
    final_state = cpu_state(head)
    if best_state is None:            # val_every > epochs cannot happen (last epoch evaluates); be safe
        best, best_state = {"epoch": cfg.epochs, "val_rho": None}, final_state
    atomic_torch_save(final_state, run_dir / "model_final.pt")
    atomic_torch_save(best_state, run_dir / "model_selected.pt")

    # ---- test predictions of the selected and final models
    head.load_state_dict(best_state)
    sel_pred, sel_pv, sel_leaf = test_eval.predict(head)
    head.load_state_dict(final_state)
    fin_pred, fin_pv, fin_leaf = test_eval.predict(head)
    write_predictions(run_dir, data, unit, test_eval, sel_pred, sel_pv, fin_pred, fin_pv)
    if head_cls.tree:
        write_leaf_counts(run_dir, cfg.depth, sel_leaf, fin_leaf)
    summary = run_summary(cfg, data, unit, dataset, rows, best, sel_pred, fin_pred,
                          n_dropped_pairs=n_dropped_pairs, n_clamped=n_clamped,
                          voters=cfg.voters if head_cls.pairwise else 0, has_val=len(unit.val) > 0)
    atomic_write_text(run_dir / "timing.json", dump_json({"seconds": time.perf_counter() - t_start}))
    atomic_write_text(run_dir / "summary.json", dump_json(summary))
    log.info("%s: selected epoch %s test rho %.4f (final %.4f)", run_dir, best["epoch"],
             summary["selected"]["rho"] or math.nan, summary["final"]["rho"] or math.nan)
    return run_dir


# ------------------------------------------------------------------- shared with train_head.finetune
def run_targets(head_cls, data: CacheData, unit: Unit, *, source: Any, hint: str
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """(targets of every video, difficulty of the training pool or None).

    Targets are scores, or completeness = score / difficulty for dd heads, which then need a positive
    difficulty on every used video (TrainError naming `source` and ending with `hint` otherwise)."""
    diff = data.difficulty
    if not head_cls.dd:
        return data.scores.copy(), None
    used = np.concatenate([unit.train, unit.val, unit.test])
    bad = ~(np.isfinite(diff[used]) & (diff[used] > 0))
    if bad.any():
        raise TrainError(f"head {head_cls.name!r} divides scores by difficulty, but {int(bad.sum())} videos of "
                         f"{source} have none (e.g. {data.video_ids[used][bad][0]}); {hint}")
    return data.scores / np.where(np.isfinite(diff) & (diff > 0), diff, 1.0), diff[unit.train]


def run_groups(head_cls, targets: np.ndarray, unit: Unit, d_tr: np.ndarray | None, depth: int, theta: float,
               run_dir: Path, *, write: bool = True) -> tuple[np.ndarray | None, int]:
    """(leaf intervals from the training pool, number of clamped training pair deltas); (None, 0) for heads
    without a tree. Writes groups.json when `write` (the main process). Warns when deltas are clamped."""
    if not head_cls.tree:
        return None, 0
    t = targets[unit.train]
    try:
        groups = build_groups(t, depth=depth, theta=theta, difficulty=d_tr)
    except ValueError as exc:
        raise TrainError(f"{run_dir}: cannot build the leaf intervals: {exc}") from None
    i, j = np.nonzero(~np.eye(t.size, dtype=bool))     # ordered pairs, both directions
    if d_tr is not None:
        same = d_tr[i] == d_tr[j]
        i, j = i[same], j[same]
    n_clamped = int(leaf_labels(t[i] - t[j], groups)[2])
    if n_clamped:
        log.warning("%s: %d of %d training pair deltas exceed theta=%g and are clamped into the outer "
                    "leaves", run_dir, n_clamped, i.size, theta)
    if write:
        atomic_write_text(run_dir / "groups.json", dump_json(
            {"groups": groups.tolist(), "theta": theta, "n_clamped": n_clamped, "n_pairs": int(i.size)}))
    return groups, n_clamped


def write_split(run_dir: Path, data: CacheData, unit: Unit) -> None:
    """split.json: the video ids of the training pool, validation and test sets."""
    atomic_write_text(run_dir / "split.json", dump_json(
        {k: data.video_ids[getattr(unit, k)].tolist() for k in ("train", "val", "test")}))


def update_best(best: Mapping[str, Any], epoch: int, rho: float, *, always: bool = False) -> dict | None:
    """The new best-epoch record when validation rho `rho` of `epoch` beats `best` (the first evaluated
    epoch always does; ties keep the earlier epoch; NaN never beats), else None. `always`: every call wins
    (no validation set: the last evaluated epoch is selected)."""
    prev = best["val_rho"]
    if (best["epoch"] is None or always
            or (not math.isnan(rho) and (prev is None or math.isnan(prev) or rho > prev))):
        return {"epoch": epoch, "val_rho": None if math.isnan(rho) else rho}
    return None


def write_leaf_counts(run_dir: Path, depth: int, sel_leaf, fin_leaf) -> None:
    """leaf_counts.json: how often each leaf was the most probable one over the test voters."""
    L = 2 ** (depth - 1)

    def counts(leaf):
        return [0] * L if leaf is None else np.bincount(leaf[leaf >= 0].ravel(), minlength=L).tolist()
    atomic_write_text(run_dir / "leaf_counts.json", dump_json(
        {"selected": counts(sel_leaf), "final": counts(fin_leaf), "n_leaves": L}))


def run_summary(cfg, data: CacheData, unit: Unit, dataset: str, rows: list[dict], best: Mapping[str, Any],
                sel_pred: np.ndarray, fin_pred: np.ndarray, *, n_dropped_pairs: int, n_clamped: int, voters: int,
                has_val: bool = True, mode: str | None = None, extra: Mapping[str, Any] | None = None) -> dict:
    """summary.json's dict (docs/ARCHITECTURE.md, "Run folder"): selected / final test metrics with their
    validation numbers, best epoch on test (reported only), counts; `mode` (after "seed") and `extra`
    (before "complete") add fields."""
    ev = [r for r in rows if not math.isnan(r["test_rho"])] or rows
    bt = max(ev, key=lambda r: (-math.inf if math.isnan(r["test_rho"]) else r["test_rho"], -r["epoch"]))
    sel_row = next(r for r in rows if r["epoch"] == best["epoch"])
    fin_row = rows[-1]
    true = data.scores[unit.test]
    summary: dict[str, Any] = {
        "dataset": dataset, "cls": cfg.cls if cfg.cls is not None else str(data.cls[unit.test][0]),
        "protocol": cfg.protocol, "fold": cfg.fold, "head": cfg.head, "tag": cfg.tag, "seed": cfg.seed}
    if mode is not None:
        summary["mode"] = mode
    summary.update({
        "selected_epoch": best["epoch"], "final_epoch": cfg.epochs,
        "selected": nan_to_none({**all_metrics(sel_pred, true), "val_rho": sel_row["val_rho"],
                                 "val_l2": sel_row["val_l2"], "val_rl2": sel_row["val_rl2"]}),
        "final": nan_to_none({**all_metrics(fin_pred, true), "val_rho": fin_row["val_rho"],
                              "val_l2": fin_row["val_l2"], "val_rl2": fin_row["val_rl2"]}),
        "best_on_test": nan_to_none({"epoch": bt["epoch"], "rho": bt["test_rho"], "l2": bt["test_l2"],
                                     "rl2": bt["test_rl2"]}),
        "selection": ("best validation rho, ties -> earliest epoch; test never used" if has_val
                      else "no validation split (val_fraction=0): the final epoch"),
        "n_train": int(len(unit.train)), "n_val": int(len(unit.val)), "n_test": int(len(unit.test)),
        "n_dropped_pairs": int(n_dropped_pairs), "n_clamped": n_clamped, "voters": voters,
    })
    summary.update(extra or {})
    summary["complete"] = True
    return summary


def write_predictions(run_dir: Path, data: CacheData, unit: Unit, ev: Evaluator, sel_pred, sel_pv,
                       fin_pred, fin_pv) -> None:
    import pandas as pd

    pool_ids = data.video_ids[unit.train]
    n = len(unit.test)
    if ev.idx is not None:
        idx, mask = ev.idx.cpu().numpy(), ev.mask.cpu().numpy()
        exemplars = [" ".join(pool_ids[idx[i][mask[i]]]) for i in range(n)]
        ex_sel = [" ".join(repr(float(x)) for x in sel_pv[i][mask[i]]) for i in range(n)]
        ex_fin = [" ".join(repr(float(x)) for x in fin_pv[i][mask[i]]) for i in range(n)]
        n_voters = mask.sum(1)
    else:
        exemplars = ex_sel = ex_fin = [""] * n
        n_voters = np.zeros(n, dtype=int)
    df = pd.DataFrame({
        "video_id": data.video_ids[unit.test], "true": data.scores[unit.test], "pred": sel_pred,
        "pred_final": fin_pred, "difficulty": data.difficulty[unit.test], "n_voters": n_voters,
        "exemplars": exemplars, "exemplar_preds": ex_sel, "exemplar_preds_final": ex_fin,
    })
    tmp = run_dir / f"predictions.csv.tmp-{os.getpid()}"
    df.to_csv(tmp, index=False, float_format="%.17g")
    os.replace(tmp, run_dir / "predictions.csv")
