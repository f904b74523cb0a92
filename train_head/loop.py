"""The one training loop of stage two, shared by the cached trainer and end-to-end fine-tuning.

A mode supplies a `Task`: how a batch of pairs becomes a loss (cached features or frames through the
backbone), the optimiser's parameter groups, and how validation/test features are obtained. Everything
else exists once, here: opening the run folder (fresh / resume / complete), the protocol's preparation
(`prepare`), the epoch loop with accumulation, evaluation with the fixed voter draw, validation
selection, checkpoint cadence and resume, the selected and final predictions and the summary.

    ctx = prepare(cfg, labels, dataset)                                # nothing written yet
    folder, resume = open_run(cfg, dataset, record, force=force)      # None when complete
    record_protocol(ctx, folder)
    task = MyTask(ctx, ...)
    run(task, ctx, folder, resume=resume)

Resume: checkpoint.pt (model, optimiser, epoch, the train stream's and torch's RNG states, the metric
rows, the best-so-far model and the config it was trained with) is written atomically every
`checkpoint_every` epochs; a run continues from it to the same numbers as an uninterrupted run (CPU).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from train_head.heads import HEADS, build_head
from train_head.pairs import train_pairs
from train_head.protocol import (NAN_METRICS, Streams, TrainError, Unit, make_unit, pool_groups, run_targets,
                                 small_validation, summary_record, update_best)
from train_head.runfolder import RunFolder, RunFolderError, config_diff

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What the protocol decided for one run, before any training (`prepare`)."""
    cfg: Any
    labels: Any                  # video_ids, scores, difficulty, split, cls, folds, path
    dataset: str
    head_cls: type
    streams: Streams
    unit: Unit
    targets: np.ndarray          # every video's target (completeness for dd heads)
    d_tr: np.ndarray | None      # difficulty of the training pool (dd heads)
    groups: np.ndarray | None
    n_clamped: int
    is_main: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def n_judges(self) -> int | None:
        """How many judges' scores the head learns (heads with `judges`), else None."""
        return int(self.targets.shape[1]) if self.head_cls.judges else None


class Task:
    """What a mode supplies. Subclasses set `model` (what is checkpointed and selected), `head`,
    `optim`, and implement `batches` and `evaluators`."""
    model: torch.nn.Module
    head: torch.nn.Module
    optim: torch.optim.Optimizer
    desc = ""
    mode: str | None = None

    def begin_epoch(self, rng: np.random.Generator) -> None:
        """Draws the mode needs before the epoch's pairs (the cached trainer: one view per video)."""

    def batches(self, q: np.ndarray, e: np.ndarray | None, rng) -> Iterator[Callable[[], tuple]]:
        """One callable per micro-batch of `batch_size` pairs (q[k], e[k]); each returns
        (mean loss of this process's share, items in that share, weight of the share in the global mean)."""
        raise NotImplementedError

    def no_sync(self, skip: bool):
        return contextlib.nullcontext()

    def reduce_loss(self, total: torch.Tensor) -> float:
        return float(total.item())

    def evaluators(self):
        """(validation, test) Evaluators at the model's current state."""
        raise NotImplementedError

    def test_evaluator(self, state: dict | None):
        """The test Evaluator with `state` loaded into `model` (None: the current state)."""
        if state is not None:
            self.model.load_state_dict(state)
        return self.evaluators()[1]

    def save_models(self, folder: RunFolder, selected: dict, final: dict) -> None:
        folder.save("model_final.pt", final)
        folder.save("model_selected.pt", selected)

    def barrier(self) -> None:
        pass

    def summary_extra(self) -> dict:
        return {}


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# Adam's first moments below this are set to zero by `flush_subnormal_state`: at beta1 = 0.9 a zero-gradient
# entry takes ~170 steps to decay from here to the subnormal range, more than `FLUSH_EVERY` steps.
FIRST_MOMENT_FLOOR = 2.0 ** -100          # ~7.9e-31
FLUSH_EVERY = 64                          # optimiser steps between flushes inside an epoch (also at its start)


def flush_subnormal_state(optim: torch.optim.Optimizer) -> None:
    """Set the optimiser's CPU state entries that are, or are about to be, subnormal floats to zero: the
    first moments (``exp_avg``) below `FIRST_MOMENT_FLOOR` and every other floating state entry below the
    dtype's smallest normal number (1.18e-38 in float32). `run` calls it at each epoch's start and every
    `FLUSH_EVERY` optimiser steps.

    Why: a unit whose ReLU never fires gets exactly zero gradient, and Adam's first moment then decays by
    beta1 = 0.9 per step until, some 800 steps later, it is subnormal; it stays so for another ~150 steps
    on its way to zero. x86 CPUs compute on subnormal numbers through a slow path (a product ~4x slower
    here): in the default core_dd schedule on an MTL-AQA-sized cache 1.0 M of the 2.5 M first moments were
    subnormal by epoch 60, and an epoch took about 650 ms instead of the first 20 epochs' 400 ms.

    It changes no weight: an entry's update, at most lr * m / eps < 1e-3 * 7.9e-31 / 1e-8 ~ 1e-25, is
    many orders of magnitude below a float32 weight's rounding step (~1e-10 at the init's 1e-3 scale), and
    a later gradient g adds 0.1 * g to a moment that small, which rounds it away. (The processor's own
    flush-to-zero mode would also avoid the slow path, but it is a per-thread setting that the intra-op
    worker threads only inherit when it is set before they start.) CUDA state is left alone: GPUs compute
    on subnormals at full speed."""
    for state in optim.state.values():
        for key, t in state.items():
            if key == "step" or not isinstance(t, torch.Tensor) or t.device.type != "cpu" \
                    or not t.is_floating_point() or t.numel() == 0:
                continue
            floor = FIRST_MOMENT_FLOOR if key == "exp_avg" else torch.finfo(t.dtype).tiny
            # one mask, one fill (~4 ms per call for core_dd's 2 x 2.5 M entries; counting them cost 4x that)
            t.masked_fill_(t.abs() < floor, 0)


# ------------------------------------------------------------------------------------ opening
def open_run(cfg, dataset: str, record: dict, *, force: bool = False, is_main: bool = True
             ) -> tuple[RunFolder, bool | None]:
    """(folder, resume) for a run; resume None when the folder is complete with the same config (skip).

    A complete or resumable folder of another config is refused with the differences listed (unless
    `force`, which clears the run's files first). The main process writes config.json of a fresh run."""
    folder = RunFolder(cfg.run_dir(dataset))
    if force:
        if is_main:
            folder.clear()
        state = "fresh"
    else:
        state = folder.state
    if state != "fresh":
        diffs = _config_diffs(folder, cfg, dataset)
        if diffs:
            raise TrainError(f"{folder.path} holds a {'complete run' if state == 'complete' else 'checkpoint'} "
                             f"of a different config ({'; '.join(diffs)}); rerun with --force to replace it, "
                             "or change --out")
        if state == "complete":
            log.info("%s is complete; skipping (use --force to retrain)", folder.path)
            return folder, None
    if is_main:
        folder.create()
        if state == "fresh":
            folder.write_json("config.json", record)
        else:
            old = folder.read_config()
            if old.get("git_commit") != record["git_commit"]:
                old.setdefault("resumed_git_commits", []).append(record["git_commit"])
                folder.write_json("config.json", old)
    return folder, state == "resumable"


def _config_diffs(folder: RunFolder, cfg, dataset: str) -> list[str]:
    try:
        old = folder.read_config()
    except RunFolderError as exc:
        return [str(exc)]
    new = {**cfg.to_dict(), "dataset": dataset}
    keys = [k for k in type(cfg).fields() if k not in cfg.speed_only]
    return config_diff(old, new, keys)


def prepare(cfg, labels, dataset: str, *, is_main: bool = True) -> Context:
    """Apply the protocol (unit and validation carve, targets, groups) without writing anything: a run the
    labels cannot serve (no difficulty for a DD head, no judges, too few videos) fails before its folder
    is touched. `record_protocol` writes the result into the run folder."""
    head_cls = HEADS[cfg.head]
    streams = Streams.from_seed(cfg.seed)
    unit = make_unit(labels, cfg, streams)
    targets, d_tr = run_targets(head_cls, labels, unit, theta=cfg.theta)
    try:
        groups, n_clamped, n_pairs = pool_groups(head_cls, targets, unit, d_tr, cfg.depth, cfg.theta)
    except TrainError as exc:
        raise TrainError(f"{cfg.run_dir(dataset)}: {exc}") from None
    return Context(cfg, labels, dataset, head_cls, streams, unit, targets, d_tr, groups, n_clamped, is_main,
                   extra={"n_pairs": n_pairs})


def record_protocol(ctx: Context, folder: RunFolder) -> None:
    """Warn about a small validation split and clamped pairs; the main process writes split.json and
    groups.json."""
    cfg, unit, labels = ctx.cfg, ctx.unit, ctx.labels
    if small_validation(len(unit.val)):
        log.warning("%s: %s", folder.path, small_validation(len(unit.val)))
    if ctx.n_clamped:
        log.warning("%s: %d of %d training pair deltas exceed theta=%g and are clamped into the outer "
                    "leaves", folder.path, ctx.n_clamped, ctx.extra["n_pairs"], cfg.theta)
    if ctx.is_main:
        if ctx.groups is not None:
            folder.write_json("groups.json", {"groups": ctx.groups.tolist(), "theta": cfg.theta,
                                              "n_clamped": ctx.n_clamped, "n_pairs": ctx.extra["n_pairs"]})
        folder.write_split({k: labels.video_ids[getattr(unit, k)].tolist() for k in ("train", "val", "test")})


def build_run_head(cfg, feat_dim: int, groups=None, n_judges: int | None = None):
    """The head a run config describes: the one place that turns a config into `build_head`'s arguments
    (head, theta, depth, hidden, the tree's leaf activation and, for heads that learn the judges' scores,
    their number). Training (cached and fine-tuning, through `Context.n_judges`) and `evaluate score`
    (rebuilding a saved run from its typed config) both call it."""
    options: dict[str, Any] = {"leaf_activation": cfg.leaf_activation}
    if n_judges is not None:
        options["n_judges"] = int(n_judges)
    return build_head(cfg.head, feat_dim=int(feat_dim), theta=cfg.theta, depth=cfg.depth, hidden=cfg.hidden,
                      groups=groups, **options)


# ---------------------------------------------------------------------------------------- run
def run(task: Task, ctx: Context, folder: RunFolder, *, resume: bool, progress: bool = True,
        on_epoch_end: Callable[[int, dict], None] | None = None) -> RunFolder:
    """Train, select, predict and write the run (module docstring)."""
    cfg, unit, head_cls = ctx.cfg, ctx.unit, ctx.head_cls
    t_start = time.perf_counter()
    rng = ctx.streams.train
    rows: list[dict] = []
    best: dict = {"epoch": None, "val_rho": None}
    best_state = None
    start = 1
    if resume:
        rows, best, best_state, start = folder.load_checkpoint(task.model, task.optim, rng, cfg)
        log.info("%s: resuming after epoch %d", folder.path, start - 1)
    n_tr = len(unit.train)
    epochs = range(start, cfg.epochs + 1)
    bar = None
    if progress and ctx.is_main:
        from tqdm import tqdm
        bar = tqdm(epochs, desc=task.desc, leave=False, dynamic_ncols=True)
    from train_head.tracking import chain, epoch_logger

    tb = epoch_logger(folder.path, bool(getattr(cfg, "tensorboard", False)) and ctx.is_main)
    on_epoch_end = chain(tb, on_epoch_end)
    n_dropped = 0
    for epoch in (bar if bar is not None else epochs):
        task.model.train()
        flush_subnormal_state(task.optim)
        task.begin_epoch(rng)
        if head_cls.pairwise:
            q, e, n_dropped = train_pairs(n_tr, rng, difficulty=ctx.d_tr)
            perm = rng.permutation(q.size)
            q, e = q[perm], e[perm]
        else:
            q, e = rng.permutation(n_tr), None
        n_batches = math.ceil(q.size / cfg.batch_size)
        if q.size == 0:
            log.warning("%s: epoch %d has no training pair (no two pool videos share a difficulty); "
                        "nothing to train", folder.path, epoch)
        total = torch.zeros((), dtype=torch.float64)
        task.optim.zero_grad()
        n_steps = 0
        for b, step in enumerate(task.batches(q, e, rng)):
            sync = (b + 1) % cfg.grad_accum == 0 or b + 1 == n_batches
            with task.no_sync(not sync):
                loss, n_local, weight = step()
                (loss * (weight / cfg.grad_accum) if weight != 1.0 else loss / cfg.grad_accum).backward()
            total = total.to(loss.device) + loss.detach().double() * n_local
            if sync:
                task.optim.step()
                task.optim.zero_grad()
                n_steps += 1
                if n_steps % FLUSH_EVERY == 0:
                    flush_subnormal_state(task.optim)
        train_loss = task.reduce_loss(total) / max(1, q.size)
        if not math.isfinite(train_loss):
            raise TrainError(f"{folder.path}: the training loss is {train_loss} at epoch {epoch} (non-finite "
                             "features or targets, or a learning rate too high); the run is not complete. "
                             "Lower lr, check the cache (python -m cache info), then rerun with --force")
        row = {"epoch": epoch, "train_loss": train_loss}
        evaluated = epoch % cfg.val_every == 0 or epoch == cfg.epochs
        vm = tm = NAN_METRICS
        if evaluated:
            val_eval, test_eval = task.evaluators()
            vm, tm = val_eval.metrics(task.head), test_eval.metrics(task.head)
            if len(unit.val) >= 2 and math.isnan(vm["rho"]):
                log.warning("%s: epoch %d: validation rho is undefined (constant or non-finite predictions); "
                            "this epoch cannot be selected", folder.path, epoch)
        row.update({f"val_{k}": x for k, x in vm.items()})
        row.update({f"test_{k}": x for k, x in tm.items()})
        rows.append(row)
        if evaluated:
            new_best = update_best(best, epoch, vm["rho"], always=len(unit.val) == 0)
            if new_best is not None:
                best, best_state = new_best, cpu_state(task.model)
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.4g}", val=f"{vm['rho']:.3f}", test=f"{tm['rho']:.3f}")
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            if ctx.is_main:
                folder.write_metrics(rows)
                folder.save_checkpoint(cpu_state(task.model), task.optim, epoch, rng, rows, best, best_state, cfg)
            task.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    if bar is not None:
        bar.close()
    if tb is not None:
        tb.close()
    return _finish(task, ctx, folder, rows, best, best_state, n_dropped, t_start)


def _finish(task: Task, ctx: Context, folder: RunFolder, rows, best, best_state, n_dropped, t_start):
    cfg, unit = ctx.cfg, ctx.unit
    final_state = cpu_state(task.model)
    if best_state is None:
        best, best_state = {"epoch": cfg.epochs, "val_rho": None}, final_state
    test_eval = task.test_evaluator(None)
    fin = test_eval.predict(task.head)
    sel = fin if best["epoch"] == cfg.epochs else task.test_evaluator(best_state).predict(task.head)
    for name, (pred, _, _) in (("selected", sel), ("final", fin)):
        if not np.all(np.isfinite(pred)):
            raise TrainError(f"{folder.path}: the {name} model predicts non-finite scores for "
                             f"{int((~np.isfinite(pred)).sum())} test videos; the run is not marked complete")
    if not ctx.is_main:
        task.barrier()
        return folder
    from train_head.evaluator import predictions_frame

    folder.write_metrics(rows)
    task.save_models(folder, best_state, final_state)
    folder.write_predictions(predictions_frame(ctx.labels, unit, test_eval, sel, fin))
    if ctx.head_cls.tree:
        folder.write_leaf_counts(2 ** (cfg.depth - 1), sel[2], fin[2])
    summary = summary_record(cfg, ctx.labels, unit, ctx.dataset, rows, best, sel[0], fin[0],
                             n_dropped_pairs=n_dropped, n_clamped=ctx.n_clamped,
                             voters=cfg.voters if ctx.head_cls.pairwise else 0, mode=task.mode,
                             extra={**task.summary_extra(), "torch_threads": torch.get_num_threads()})
    folder.write_json("timing.json", {"seconds": time.perf_counter() - t_start})
    folder.write_json("summary.json", summary)
    task.barrier()
    log.info("%s: selected epoch %s test rho %s (final %s)", folder.path, best["epoch"],
             summary["selected"]["rho"], summary["final"]["rho"])
    return folder
