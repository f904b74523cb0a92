"""Many runs from one command: units (classes, folds), seeds and hyper-parameter grids.

    python -m train_head sweep --cache artifacts/features/synthetic.h5 \
        --grid head=core,mlp depth=3,5 voters=5,10 seeds=0,1 --jobs 2 --out artifacts/runs

Folder of a grid point: the usual `<out>/<dataset>/<cls-or-fold>/<head>/seed<k>/`, where the head level
becomes `<head>+<key>=<value>+...` for every grid key (other than head, seed, cls, fold) whose value
differs from the base config (defaults <- preset <- --set). A grid point equal to the base config
therefore shares the plain `<head>` folder with `python -m train_head train`, and is skipped when that
run is complete. Example: `core+depth=3+voters=5/seed1`.

Units: `cls="all"` expands to every class (task) in the cache; a cross-validation protocol with
`fold="all"` (or no fold) expands to every fold of that protocol in the cache.

Execution: `jobs=1` runs in this process; `jobs>1` uses joblib's loky process pool (each worker keeps
the last cache it read in memory); `scheduler="tcp://host:8786"` sends the runs to a dask.distributed
cluster through joblib's dask backend (optional: `pip install -r requirements-dask.txt`). A failing run
is logged and reported; the other runs go on. Complete runs are skipped unless `force`. More than one run:
one progress line per run on stderr (runs done of total, the current run, elapsed time, an estimate;
`train_head.tracking.RunProgress`); pooled results are returned in the order of the configs.
"""
from __future__ import annotations

import itertools
import logging
import sys
import time
import traceback
from typing import Any, Iterable, Mapping, Sequence

from train_head.config import FIELDS, ConfigError, RunConfig, config_from_dict, resolve_config

log = logging.getLogger(__name__)

# grid/CLI key aliases -> RunConfig field
ALIASES = {"seeds": "seed", "class": "cls", "classes": "cls", "heads": "head", "folds": "fold",
           "batch-size": "batch_size", "lr": "lr"}
# keys that have their own folder level, so they never go into the tag
_OWN_LEVEL = ("head", "seed", "cls", "fold", "protocol", "out", "cache", "dataset", "device", "tag")


def parse_grid(items: Iterable[str]) -> dict[str, list[str]]:
    """`["head=core,mlp", "depth=3,5", "seeds=0,1"]` -> {"head": [...], "depth": [...], "seed": [...]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        for part in item.split():
            if "=" not in part:
                raise ConfigError(f"grid entry {part!r} is not key=v1,v2,...")
            key, values = part.split("=", 1)
            key = ALIASES.get(key.strip(), key.strip().replace("-", "_"))
            if key not in FIELDS:
                raise ConfigError(f"grid: unknown config key {key!r}; valid keys: {', '.join(FIELDS)} "
                                  "(and 'seeds')")
            vals = [v.strip() for v in values.split(",") if v.strip()]
            if not vals:
                raise ConfigError(f"grid: no values for {key!r}")
            if key in grid:
                raise ConfigError(f"grid: key {key!r} given twice")
            grid[key] = vals
    return grid


def expand_grid(grid: Mapping[str, Sequence[str]]) -> list[dict[str, str]]:
    """Cartesian product in the order given (last key varies fastest)."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _tag(base: RunConfig, cfg: RunConfig, keys: Iterable[str]) -> str:
    parts = []
    for k in keys:
        if k in _OWN_LEVEL:
            continue
        v = getattr(cfg, k)
        if v != getattr(base, k):
            parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    tag = "+".join(parts)
    if "/" in tag:
        raise ConfigError(f"grid values become folder names and must not contain '/': {tag!r}")
    return tag


def expand_units(cfg: RunConfig, data=None) -> list[RunConfig]:
    """One config per unit: `cls="all"` -> every class of the cache; with a protocol, `fold` None or
    "all" -> every fold of that protocol (per class). Needs the cache's labels (`data`, CacheData; read
    from cfg.cache when None and a unit must be expanded)."""
    want_cls = cfg.cls == "all"
    want_fold = cfg.protocol is not None and cfg.fold in (None, "all")
    if not (want_cls or want_fold):
        return [cfg]
    if data is None:
        from train_head.trainer import load_cache_data
        data = load_cache_data(cfg.cache)
    import numpy as np

    classes = sorted(set(data.cls.tolist())) if want_cls else [cfg.cls]
    out = []
    for c in classes:
        if not want_fold:
            out.append(cfg.replace(cls=c))
            continue
        keep = np.ones(len(data.cls), bool) if c is None else data.cls == c
        folds = sorted({str(f.get(cfg.protocol)) for f, k in zip(data.folds, keep) if k and cfg.protocol in f},
                       key=lambda s: (len(s), s))
        if not folds:
            raise ConfigError(f"{cfg.cache}: no fold of protocol {cfg.protocol!r} for class {c!r}")
        out.extend(cfg.replace(cls=c, fold=f) for f in folds)
    return out


def plan_runs(preset: str | None, overrides: Mapping[str, Any], grid: Mapping[str, Sequence[str]] | None = None,
              data=None) -> list[RunConfig]:
    """All run configs of a command: base = resolve_config(preset, **overrides); each grid point
    overrides the base (tagged, see module docstring); then units are expanded."""
    base = resolve_config(preset, **overrides)
    points = expand_grid(grid) if grid else [{}]
    cfgs: list[RunConfig] = []
    for point in points:
        cfg = resolve_config(preset, **{**overrides, **point})
        tag = _tag(base, cfg, point.keys())
        if tag:
            cfg = cfg.replace(tag=tag)
        cfgs.extend(expand_units(cfg, data))
    seen, unique = set(), []
    for c in cfgs:                      # identical points (e.g. a grid value equal to the base) run once
        key = tuple(sorted(c.to_dict().items()))
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def _train_and_summarise(cfg: RunConfig, force: bool, progress: bool) -> dict[str, Any]:
    """Train one config (or skip it when complete) and return its result row."""
    from train_head.runfolder import RunFolder
    from train_head.trainer import load_cache_data, run_dataset, train

    dataset = run_dataset(cfg, load_cache_data(cfg.cache))
    was_complete = RunFolder(cfg.run_dir(dataset)).complete and not force
    run_dir = train(cfg, force=force, progress=progress)
    summary = RunFolder(run_dir).read_json("summary.json")
    return {"run_dir": str(run_dir), "status": "skipped" if was_complete else "done",
            "selected_rho": summary["selected"]["rho"], "final_rho": summary["final"]["rho"],
            "selected_epoch": summary["selected_epoch"], "error": "",
            "warnings": summary.get("warnings", [])}


def _run_one(cfg_dict: dict[str, Any], force: bool, pooled: bool = False, bar: bool = False) -> dict[str, Any]:
    """Worker entry point (module level so process pools can pickle it by name); `bar`: the run's epoch bar.
    The row's "seconds" is the run's wall time (for the progress estimate)."""
    from data.locks import LockedError
    from train_head.protocol import UnitTooSmall
    from train_head.workers import exit_with_parent

    if pooled:
        exit_with_parent()      # a killed command takes its pool workers with it
    t0 = time.perf_counter()
    cfg = config_from_dict(cfg_dict)
    row = {"run_dir": str(cfg.run_dir(cfg.dataset or "?")), "selected_rho": None, "final_rho": None,
           "selected_epoch": None}
    try:
        out = _train_and_summarise(cfg, force, progress=bar)
    except UnitTooSmall as exc:  # e.g. a class with a single video under --class all: reported, skipped
        log.warning("run %s skipped: %s", row["run_dir"], exc)
        out = {**row, "status": "skipped", "error": str(exc)}
    except (ValueError, OSError, LockedError) as exc:  # an error of the data or options: its message says it all
        log.error("run %s failed: %s", row["run_dir"], exc)
        out = {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # one failing run must not stop a sweep; it is reported below
        log.error("run %s failed: %s", row["run_dir"], exc)
        out = {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"}
    return {**out, "seconds": time.perf_counter() - t0}


def run_many(cfgs: Sequence[RunConfig], *, jobs: int = 1, scheduler: str | None = None,
             force: bool = False) -> list[dict[str, Any]]:
    """Run every config; returns one result dict per config, in the order given (run_dir, status,
    selected/final rho, error, seconds). More than one config: overall progress on stderr
    (`train_head.tracking.RunProgress`: runs done of total, the current run, elapsed, an estimate)."""
    payload = [c.to_dict() for c in cfgs]
    if not payload:
        return []
    if len(payload) == 1 and not scheduler:   # a single in-process run: epoch bar, errors reach the caller
        return [_train_and_summarise(cfgs[0], force, progress=True)]
    from train_head.tracking import RunProgress, run_label

    if scheduler:
        return _run_dask(payload, scheduler, force)
    if jobs == 1:
        progress = RunProgress(len(payload))
        bar = sys.stderr.isatty()              # the current run's epoch bar, where it redraws in place
        rows = []
        for p in payload:
            progress.start(run_label(p))
            rows.append(_run_one(p, force, bar=bar))
            progress.done(rows[-1], run_label(p))
        return rows
    from joblib import Parallel, delayed

    if any(not p.get("threads") for p in payload):
        # joblib caps each worker's threads (cpu_count // jobs); float sums then run in another order than
        # in a one-process run, so the last digits differ from `--jobs 1` unless the thread count is fixed
        log.info("--jobs %d: runs with threads=0 use joblib's per-worker thread count (summary.json "
                 "`torch_threads`); for numbers equal to a --jobs 1 run, fix it: --set threads=N", jobs)
    progress = RunProgress(len(payload), parallel=jobs)
    par = Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")
    return _in_order(par(delayed(_indexed)(i, p, force) for i, p in enumerate(payload)), payload, progress)


def _indexed(i: int, cfg_dict: dict[str, Any], force: bool) -> tuple[int, dict[str, Any]]:
    """A pooled run that says which config it was (results arrive in the order they finish)."""
    return i, _run_one(cfg_dict, force, pooled=True)


def _in_order(results: Iterable[tuple[int, dict]], payload: list[dict], progress) -> list[dict[str, Any]]:
    """Rows as they arrive (progress for each), returned in the order of `payload`."""
    from train_head.tracking import run_label

    rows: list[dict | None] = [None] * len(payload)
    for i, row in results:
        rows[i] = row
        progress.done(row, run_label(payload[i]))
    return rows  # type: ignore[return-value]


def _run_dask(payload: list[dict], scheduler: str, force: bool) -> list[dict[str, Any]]:
    try:
        from dask.distributed import Client
    except ImportError:
        raise ConfigError("--scheduler needs dask.distributed, which is not installed: "
                          "pip install -r requirements-dask.txt") from None
    from joblib import Parallel, delayed, parallel_config

    from train_head.tracking import RunProgress

    with Client(scheduler) as client:
        n_workers = len(client.scheduler_info().get("workers", {}))
        log.info("sending %d runs to %s (%d workers)", len(payload), scheduler, n_workers)
        progress = RunProgress(len(payload), parallel=max(1, n_workers))
        with parallel_config(backend="dask"):
            par = Parallel(n_jobs=-1, return_as="generator_unordered")
            return _in_order(par(delayed(_indexed)(i, p, force) for i, p in enumerate(payload)), payload, progress)
