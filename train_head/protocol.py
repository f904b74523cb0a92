"""The training protocol of stage two, in one place and without I/O (docs/METHOD.md §3-5, 7).

Both modes (cached features, `trainer.py`; end-to-end fine-tuning, `finetune.py`) follow these rules
through `loop.py`; nothing here reads or writes a file.

  * Unit: the videos of the run's class/task; train = split "train" (or every fold but `fold` under a
    cross-validation protocol), test = split "test" (or fold `fold`).               -> `select_unit`
  * Validation: `val_fraction` of the training videos, stratified over `val_bins` score-quantile bins;
    the rest is the training pool (pairs, groups and exemplars all come from it).   -> `carve_validation`
  * Targets: scores, or completeness = score / difficulty for dd heads, or the judges'
    scores for heads that learn each judge (musdl).                                 -> `run_targets`
  * Groups: the leaf intervals of tree heads, from the training pool's targets.      -> `pool_groups`
  * Selection: the epoch with the best validation rho (ties -> earliest; NaN never wins; without a
    validation split the last evaluated epoch); the test set never selects anything, its best epoch is
    reported only as `best_on_test`.                                                 -> `update_best`
  * Randomness: every draw of a run comes from `cfg.seed` through the named streams of `Streams`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from train_head.groups import build_groups, leaf_labels
from train_head.metrics import all_metrics


class TrainError(ValueError):
    """A run cannot start with this cache/config; the message says what to change."""


class UnitTooSmall(TrainError):
    """The run's class/fold has too few training or no test videos (a sweep reports and skips it)."""


# ------------------------------------------------------------------------------------ RNG streams
@dataclass
class Streams:
    """The named random streams of one run, all drawn from its seed.

    carve   the validation carve (tie-breaks and picks inside the score bins)
    voters  the exemplars each validation/test video is compared with (one draw per run, reused at
            every evaluation, so epochs are compared on the same voters)
    train   everything per epoch: training views, pairs, shuffling, augmentation (checkpointed)
    torch   the seed of torch's generator (initial weights of the head)
    """
    carve: np.random.Generator
    train: np.random.Generator
    torch: int
    seed: int

    @classmethod
    def from_seed(cls, seed: int) -> "Streams":
        return cls(carve=np.random.default_rng([seed, 1]), train=np.random.default_rng(seed),
                   torch=int(seed), seed=int(seed))

    def voters(self) -> np.random.Generator:
        """A fresh copy of the voter stream: the same draw every time it is asked for."""
        return np.random.default_rng([self.seed, 2])


# ---------------------------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    """Positions (into the label arrays) of the training pool, validation and test videos."""
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def select_unit(labels, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(train+val positions, test positions) of the run's class/task and split or fold.

    `labels` has the arrays `cls`, `split`, `folds`, `video_ids` and a `path` naming its source."""
    src = labels.path
    classes = sorted(set(labels.cls.tolist()))
    if cfg.cls is not None:
        keep = labels.cls == cfg.cls
        if not keep.any():
            raise TrainError(f"{src}: no video of class {cfg.cls!r}; classes here: {classes}")
    else:
        if len(classes) > 1:
            raise TrainError(f"{src} holds {len(classes)} classes {classes}: each is trained on its own; "
                             "pass --class NAME or --class all")
        keep = np.ones(len(labels.cls), dtype=bool)
    if cfg.protocol:
        if cfg.fold is None:
            raise TrainError(f"protocol {cfg.protocol!r} needs the held-out fold: pass --fold ID (or --fold all)")
        fold_of = np.array([str(f.get(cfg.protocol, "")) for f in labels.folds])
        missing = keep & (fold_of == "")
        if missing.any():
            raise TrainError(f"{src}: {int(missing.sum())} videos have no fold for protocol "
                             f"{cfg.protocol!r} (e.g. {labels.video_ids[missing][0]}); use a dataset "
                             "with that protocol or drop --protocol")
        test = keep & (fold_of == str(cfg.fold))
        train = keep & ~test
        if not test.any():
            raise UnitTooSmall(f"{src}: fold {cfg.fold!r} of protocol {cfg.protocol!r} has no video; folds: "
                             f"{sorted(set(fold_of[keep].tolist()))}")
    else:
        train = keep & (labels.split == "train")
        test = keep & (labels.split == "test")
        if not test.any():
            raise UnitTooSmall(f"{src}: no test video for class {cfg.cls or classes[0]!r} (split column); "
                             "for a cross-validation dataset pass --protocol and --fold")
    if train.sum() < 3:
        raise UnitTooSmall(f"{src}: only {int(train.sum())} training videos for {cfg.unit!r}; need >= 3")
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


def make_unit(labels, cfg, streams: Streams) -> Unit:
    """The run's unit with its validation carve (`select_unit` then `carve_validation`)."""
    trainval, test = select_unit(labels, cfg)
    pool, val = carve_validation(labels.scores[trainval], cfg.val_fraction, cfg.val_bins, streams.carve)
    return Unit(trainval[pool], trainval[val], test)


# ------------------------------------------------------------------------------- targets, groups
def run_targets(head_cls, labels, unit: Unit, *, theta: float | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """(targets of every video, difficulty of the training pool or None).

    Targets are scores, or completeness = score / difficulty for dd heads, which then need a positive,
    finite difficulty on every used video, or for heads that learn the judges (`head_cls.judges`) the
    judges' scores (N, J) from `labels.judges`, which every training-pool video must have (TrainError
    naming the source and the head to use otherwise). With `theta`, the head's own check of the
    training targets' range (`head_cls.target_problem`) runs too."""
    diff = labels.difficulty
    targets = labels.scores.copy()
    if head_cls.judges:
        targets = _judge_targets(head_cls, labels, unit)
    if head_cls.dd:
        used = np.concatenate([unit.train, unit.val, unit.test])
        bad = ~(np.isfinite(diff[used]) & (diff[used] > 0))
        if bad.any():
            plain = head_cls.name[:-3] if head_cls.name.endswith("_dd") else "a head without '_dd'"
            if head_cls.judges:
                plain = "usdl"
            raise TrainError(f"head {head_cls.name!r} divides scores by difficulty, but {int(bad.sum())} videos "
                             f"of {labels.path} have none (e.g. {labels.video_ids[used][bad][0]}); use {plain!r}")
        if not head_cls.judges:
            targets = labels.scores / np.where(np.isfinite(diff) & (diff > 0), diff, 1.0)
    if theta is not None:
        problem = head_cls.target_problem(targets[unit.train], theta)
        if problem:
            raise TrainError(f"{labels.path}: {problem}")
    return targets, (diff[unit.train] if head_cls.dd else None)


def _judge_targets(head_cls, labels, unit: Unit) -> np.ndarray:
    """The judges' scores (N, J) of a judge head; every training-pool video needs all J of them."""
    judges = getattr(labels, "judges", None)
    alt = "use 'usdl' (one distribution over the final score) or 'mlp_dd'/'core_dd' instead"
    if judges is None:
        raise TrainError(f"head {head_cls.name!r} learns one score distribution per judge, but {labels.path} "
                         "has no judge scores (no video's extra holds 'judge_scores'); " + alt)
    judges = np.asarray(judges, dtype=np.float64)
    bad = ~np.isfinite(judges[unit.train]).all(axis=1)
    if bad.any():
        raise TrainError(f"head {head_cls.name!r} learns one score distribution per judge, but {int(bad.sum())} "
                         f"training videos of {labels.path} lack some of the {judges.shape[1]} judge scores "
                         f"(e.g. {labels.video_ids[unit.train][bad][0]}); " + alt)
    return judges.copy()


def pool_groups(head_cls, targets: np.ndarray, unit: Unit, d_tr: np.ndarray | None, depth: int, theta: float
                ) -> tuple[np.ndarray | None, int, int]:
    """(leaf intervals from the training pool, clamped training pair deltas, ordered training pairs);
    (None, 0, 0) for heads without a tree."""
    if not head_cls.tree:
        return None, 0, 0
    t = targets[unit.train]
    try:
        groups = build_groups(t, depth=depth, theta=theta, difficulty=d_tr)
    except ValueError as exc:
        raise TrainError(f"cannot build the leaf intervals: {exc}") from None
    i, j = np.nonzero(~np.eye(t.size, dtype=bool))     # ordered pairs, both directions
    if d_tr is not None:
        same = d_tr[i] == d_tr[j]
        i, j = i[same], j[same]
    return groups, int(leaf_labels(t[i] - t[j], groups)[2]), int(i.size)


# ------------------------------------------------------------------------------------- selection
NAN_METRICS = {"rho": math.nan, "l2": math.nan, "rl2": math.nan}
SELECTION_RULE = "best validation rho, ties -> earliest epoch; test never used"
NO_VAL_RULE = "no validation split (val_fraction=0): the final epoch"
UNDEFINED_VAL_RULE = "validation rho undefined at every evaluation (too few or constant predictions): the final epoch"
# below this many validation videos a selected epoch is mostly noise (Spearman rho of a handful of points)
MIN_VAL_VIDEOS = 10


def small_validation(n_val: int) -> str | None:
    """The warning for a validation split too small to select an epoch, or None."""
    if 0 < n_val < MIN_VAL_VIDEOS:
        return (f"the validation split has only {n_val} videos (< {MIN_VAL_VIDEOS}): the selected epoch is close to "
                "a guess; compare the final-epoch result, or use more training videos / a larger val_fraction")
    return None


def update_best(best: Mapping[str, Any], epoch: int, rho: float, *, always: bool = False) -> dict | None:
    """The new best-epoch record when validation rho `rho` of `epoch` beats `best`, else None: a defined
    rho beats an undefined one and a smaller one (ties keep the earlier epoch); an undefined rho (NaN:
    constant or non-finite predictions, or fewer than 2 validation videos) never beats a defined one, and
    while no epoch has a defined rho the latest epoch is kept, so that a validation split that can rank
    nothing ends in the final epoch, not in an arbitrary first one. `always`: every call wins (no
    validation set: the last evaluated epoch is selected)."""
    prev = best["val_rho"]
    undefined_so_far = prev is None or math.isnan(prev)
    if (best["epoch"] is None or always or (math.isnan(rho) and undefined_so_far)
            or (not math.isnan(rho) and (undefined_so_far or rho > prev))):
        return {"epoch": epoch, "val_rho": None if math.isnan(rho) else rho}
    return None


def nan_to_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def summary_record(cfg, labels, unit: Unit, dataset: str, rows: Sequence[dict], best: Mapping[str, Any],
                   sel_pred: np.ndarray, fin_pred: np.ndarray, *, n_dropped_pairs: int, n_clamped: int,
                   voters: int, mode: str | None = None, extra: Mapping[str, Any] | None = None) -> dict:
    """summary.json's dict (docs/ARCHITECTURE.md, "Run folder"): selected / final test metrics with their
    validation numbers, best epoch on test (reported only), counts; `mode` (after "seed") and `extra`
    (before "complete") add fields."""
    ev = [r for r in rows if not math.isnan(r["test_rho"])] or list(rows)
    bt = max(ev, key=lambda r: (-math.inf if math.isnan(r["test_rho"]) else r["test_rho"], -r["epoch"]))
    sel_row = next(r for r in rows if r["epoch"] == best["epoch"])
    fin_row = rows[-1]
    true = labels.scores[unit.test]
    summary: dict[str, Any] = {
        "dataset": dataset, "cls": cfg.cls if cfg.cls is not None else str(labels.cls[unit.test][0]),
        "protocol": cfg.protocol, "fold": cfg.fold, "head": cfg.head, "tag": cfg.tag, "seed": cfg.seed}
    if mode is not None:
        summary["mode"] = mode

    def block(pred, row):
        return nan_to_none({**all_metrics(pred, true), "val_rho": row["val_rho"], "val_l2": row["val_l2"],
                            "val_rl2": row["val_rl2"]})
    summary.update({
        "selected_epoch": best["epoch"], "final_epoch": cfg.epochs,
        "selected": block(sel_pred, sel_row), "final": block(fin_pred, fin_row),
        "best_on_test": nan_to_none({"epoch": bt["epoch"], "rho": bt["test_rho"], "l2": bt["test_l2"],
                                     "rl2": bt["test_rl2"]}),
        "selection": (NO_VAL_RULE if not len(unit.val) else SELECTION_RULE if best["val_rho"] is not None
                      else UNDEFINED_VAL_RULE),
        "n_train": int(len(unit.train)), "n_val": int(len(unit.val)), "n_test": int(len(unit.test)),
        "n_dropped_pairs": int(n_dropped_pairs), "n_clamped": n_clamped, "voters": voters,
        "validation_carve": (f"{len(unit.val)} of {len(unit.train) + len(unit.val)} training videos held out for "
                             f"selection (val_fraction={cfg.val_fraction}); leaf groups, pairs and exemplars come "
                             f"from the other {len(unit.train)}; val_fraction=0 uses every training video, as "
                             "the reference code does"),
        "warnings": [w for w in (small_validation(len(unit.val)),) if w],
    })
    summary.update(extra or {})
    summary["complete"] = True
    return summary
