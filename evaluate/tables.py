"""The long result table of run folders (pandas): one row per (experiment, dataset, class-or-fold, head,
selection protocol). It is the material of the compact table (evaluate.compact), of results.csv (a tidy
table for tools) and of `python -m evaluate table --long`.

A run folder is any folder holding ``summary.json`` (docs/ARCHITECTURE.md, "Run folder"; found by
evaluate.runs.find_runs). The seeds of a group are its runs. "experiment" is the part of the run
folder's path (relative to the path given on the command line) above the ``<dataset>/...`` folders, so
that runs of a sweep kept in ``runs/<sweep-name>/<dataset>/...`` are never pooled with other runs; it is
empty for the standard layout.

Protocols (docs/METHOD.md §7):
- ``val-selected``: the epoch chosen on the validation split carved from training (``summary.selected``,
  predictions column ``pred``) -- the number to report;
- ``final-epoch``: the last epoch (``summary.final``, column ``pred_final``);
- ``best-epoch-on-test (selected on test!)``: only on request (``best_on_test=True``, CLI
  ``--best-on-test``): the reference implementation's habit, chosen on the test set and optimistic by
  construction; no stored predictions, so no confidence interval.

Columns: ``rho`` (arithmetic mean over seeds of each seed's rho from summary.json), ``rho_std`` (sample
std over seeds, NaN for one seed), ``rho_ci_lo``/``rho_ci_hi`` (95% percentile bootstrap over *test
videos* of that seed-mean: each draw resamples the videos once and applies the draw to every seed, using
predictions.csv; see evaluate.metrics.bootstrap_ci), ``L2`` and ``RL2x100`` (means over seeds), ``n_runs``
(seeds), ``n_test`` (test videos), ``method`` (the paper's name, evaluate.names), ``backbone`` ("frozen"
for cached features, "fine-tuned"), ``selection`` (the runs' rule in words), ``published_*`` (the
published number of the same method and dataset, evaluate.published), ``note``. A seed whose rho is
undefined makes the row's rho NaN and is named in the note, rather than being dropped; a broken run
(evaluate.runs) is named in the note with what is broken.

Average rows: AQA-7 over its six classes and JIGSAWS over tasks (each task over its folds first, then
all tasks x folds) with the Fisher-z mean of the member rows' rho (NaN propagates); RL2 and L2 are
arithmetic means; the std is over seeds of the per-seed Fisher-z averages (seeds present in every
member); the CI is a bootstrap stratified by member (every class's test videos resampled on their own).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from evaluate.metrics import bootstrap_ci_fisher, fisher_z_mean, spearman
from evaluate.names import method_name
from evaluate.published import AQA7_CLASSES, JIGSAWS_TASKS, published_for
from evaluate.runs import Run, find_runs

__all__ = ["PROTOCOLS", "SELECTED", "FINAL", "BEST_ON_TEST", "COLUMNS", "Run", "find_runs", "build_table",
           "results_table"]

SELECTED, FINAL, BEST_ON_TEST = "val-selected", "final-epoch", "best-epoch-on-test (selected on test!)"
PROTOCOLS = {
    # protocol label -> (summary key, predictions.csv column or None)
    SELECTED: ("selected", "pred"),
    FINAL: ("final", "pred_final"),
    BEST_ON_TEST: ("best_on_test", None),
}
COLUMNS = ["experiment", "dataset", "class/fold", "head", "method", "protocol", "rho", "rho_std", "rho_ci_lo",
           "rho_ci_hi", "L2", "RL2x100", "n_runs", "n_test", "backbone", "selection", "published_rho",
           "published_RL2x100", "published_source", "note"]
# config keys that legitimately differ between the seeds of one experiment
_SEED_KEYS = ("seed", "dir", "path", "out", "time", "created", "commit", "version", "host", "git", "device",
              "resumed")


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _config_diff(runs: list[Run]) -> list[str]:
    def strip(c: dict) -> dict:
        return {k: v for k, v in c.items() if not any(t in k.lower() for t in _SEED_KEYS)}
    base = strip(runs[0].config)
    diff = set()
    for r in runs[1:]:
        other = strip(r.config)
        diff |= {k for k in set(base) | set(other) if base.get(k) != other.get(k)}
    return sorted(diff)


@dataclass
class _Cell:
    """One (group, protocol): per-seed numbers and the bootstrap material."""
    rhos: dict            # seed -> rho
    l2s: list
    rl2s: list
    item: tuple | None    # (true [N], pred [S, N]) aligned over seeds, or None
    n_test: int
    notes: list
    cls_fold: tuple = (None, None, None)   # (class or task, fold, protocol) of the runs, for the averages
    info: dict | None = None               # _info of the runs


def _cell(runs: list[Run], skey: str, pcol: str | None) -> _Cell:
    notes: list[str] = []
    rhos, l2s, rl2s = {}, [], []
    for r in runs:
        m = r.summary.get(skey) or {}
        rhos[r.seed] = _num(m.get("rho"))
        l2s.append(_num(m.get("l2")))
        rl2s.append(_num(m.get("rl2")))
    undefined = [str(k) for k, v in rhos.items() if math.isnan(v)]
    if undefined:
        notes.append(f"rho null or NaN in summary.json for seed {', '.join(undefined)} (constant "
                     "predictions, or a broken run)")
    n_tests = {int(_num(r.summary.get("n_test"))) for r in runs if not math.isnan(_num(r.summary.get("n_test")))}
    item = None
    if pcol is not None:
        frames = [r.predictions() for r in runs]
        if any(f is None or pcol not in f.columns for f in frames):
            notes.append(f"no CI: predictions.csv or its '{pcol}' column missing")
        else:
            common = set(frames[0]["video_id"])
            for f in frames[1:]:
                common &= set(f["video_id"])
            if any(len(set(f["video_id"])) != len(common) for f in frames):
                notes.append(f"seeds' test sets differ; CI on the {len(common)} shared videos")
            ids = sorted(common)
            aligned = [f.drop_duplicates("video_id").set_index("video_id").loc[ids] for f in frames]
            true = aligned[0]["true"].to_numpy(np.float64)
            pred = np.stack([a[pcol].to_numpy(np.float64) for a in aligned])
            if np.isnan(true).any() or np.isnan(pred).any():
                notes.append("no CI: NaN in predictions.csv")
            elif len(ids) >= 2:
                item = (true, pred)
                # the CI comes from predictions.csv, rho from summary.json: say so when they disagree
                if len(ids) == len(frames[0]):
                    for r, p_row in zip(runs, pred):
                        got, want = spearman(p_row, true), rhos[r.seed]
                        if not (math.isnan(got) and math.isnan(want)) and not abs(got - want) <= 1e-3:
                            notes.append(f"seed {r.seed}: summary rho {want:.4f} != {got:.4f} from "
                                         f"predictions.csv '{pcol}'")
            if not n_tests:
                n_tests = {len(f) for f in frames}
    if len(n_tests) > 1:
        notes.append(f"n_test differs between seeds: {sorted(n_tests)}")
    for r in runs:                       # after predictions() ran: what is broken in each seed's folder
        if r.problems:
            notes.append(f"seed {r.seed} broken: {', '.join(r.problems)}")
    return _Cell(rhos, l2s, rl2s, item, max(n_tests) if n_tests else 0, notes)


def _std(v: Sequence[float]) -> float:
    a = np.asarray(v, dtype=np.float64)
    return float(np.std(a, ddof=1)) if a.size >= 2 else math.nan


def _mean(v: Sequence[float]) -> float:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()) if a.size else math.nan


def _row(exp, dataset, label, head, proto, rho, rho_std, ci, l2, rl2, n_runs, n_test, notes,
         info: dict) -> dict:
    pub = published_for(dataset, label, head)
    return {"experiment": exp, "dataset": dataset, "class/fold": label, "head": head,
            "method": method_name(head), "protocol": proto,
            "rho": rho, "rho_std": rho_std, "rho_ci_lo": ci[0], "rho_ci_hi": ci[1], "L2": l2,
            "RL2x100": 100.0 * rl2 if not math.isnan(rl2) else math.nan, "n_runs": n_runs,
            "n_test": n_test, "backbone": info["backbone"], "selection": info["selection"],
            "published_rho": pub[0] if pub else math.nan, "published_RL2x100": pub[1] if pub else math.nan,
            "published_source": pub[2] if pub else "", "note": "; ".join(dict.fromkeys(notes))}


def _info(runs: list[Run]) -> dict:
    """What the seeds of a group share: backbone (frozen or fine-tuned) and the selection rule."""
    modes = sorted({"fine-tuned" if r.mode == "finetune" else "frozen" for r in runs})
    rules = sorted({str(r.summary.get("selection") or "not recorded") for r in runs})
    return {"backbone": " + ".join(modes), "selection": " | ".join(rules)}


def _merge_info(infos: list[dict]) -> dict:
    return {k: " | ".join(dict.fromkeys(i[k] for i in infos)) for k in ("backbone", "selection")}


def _average_row(exp, dataset, label, head, proto, members: list[tuple[str, _Cell]], *, n_boot, seed):
    cells = [c for _, c in members]
    class_rhos = [_mean(list(c.rhos.values())) for c in cells]
    rho = fisher_z_mean(class_rhos)
    common_seeds = set(cells[0].rhos)
    for c in cells[1:]:
        common_seeds &= set(c.rhos)
    per_seed = [fisher_z_mean([c.rhos[s] for c in cells]) for s in sorted(common_seeds, key=str)]
    notes = [f"Fisher z of {len(cells)}: " + ", ".join(n for n, _ in members)]
    if any(math.isnan(r) for r in class_rhos):
        notes.append("a member's rho is undefined, so the average is too")
    if all(c.item is not None for c in cells):
        ci = bootstrap_ci_fisher([c.item for c in cells], n_boot=n_boot, seed=seed)
    else:
        ci = (math.nan, math.nan)
        if proto in PROTOCOLS and PROTOCOLS[proto][1] is not None:
            notes.append("no CI: a member lacks predictions")
    l2 = _mean([_mean(c.l2s) for c in cells])
    rl2 = _mean([_mean(c.rl2s) for c in cells])
    broken = [n for n, c in members if any(" broken: " in x for x in c.notes)]
    if broken:
        notes.append(f"broken runs in {', '.join(broken)} (see those rows)")
    return _row(exp, dataset, label, head, proto, rho, _std(per_seed), ci, l2, rl2,
                sum(len(c.rhos) for c in cells), sum(c.n_test for c in cells), notes,
                _merge_info([c.info for c in cells]))


def _cls_order(dataset: str, label: str) -> tuple:
    order = AQA7_CLASSES if dataset == "aqa7" else JIGSAWS_TASKS if dataset == "jigsaws" else ()
    base = label.split(" ")[0]          # class/task names carry no spaces
    if label.startswith("avg"):
        return (2, 0, 0, label)
    known = base in order
    return (0 if known else 1, order.index(base) if known else 0, int(" avg" in label), label)


def build_table(runs: Iterable[Run], *, n_boot: int = 1000, seed: int = 0, best_on_test: bool = False,
                protocols: Sequence[str] | None = None) -> pd.DataFrame:
    """One DataFrame row per (experiment, dataset, class-or-fold, head, protocol), plus average rows.
    Protocols: val-selected and final-epoch; best-epoch-on-test too only when `best_on_test`."""
    if protocols is None:
        protocols = (SELECTED, FINAL, BEST_ON_TEST) if best_on_test else (SELECTED, FINAL)
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault((r.experiment, r.dataset, r.label, r.head), []).append(r)
    rows: list[dict] = []
    cells: dict[tuple, _Cell] = {}
    for (exp, dataset, label, head), members in groups.items():
        members.sort(key=lambda r: str(r.seed))
        seeds = [r.seed for r in members]
        diff = _config_diff(members)
        for proto in protocols:
            skey, pcol = PROTOCOLS[proto]
            if skey == "best_on_test" and not all(isinstance(r.summary.get(skey), dict) for r in members):
                continue
            c = _cell(members, skey, pcol)
            notes = list(c.notes)
            if len(set(map(str, seeds))) != len(seeds):
                notes.append(f"duplicate seeds {seeds}")
            if diff:
                notes.append("configs of the seeds differ in: " + ", ".join(diff))
            ci = bootstrap_ci_fisher([c.item], n_boot=n_boot, seed=seed) if c.item else (math.nan, math.nan)
            for w in dict.fromkeys(w for r in members for w in (r.summary.get("warnings") or [])
                                   if isinstance(w, str)):
                notes.append(w)
            c.info = _info(members)
            rows.append(_row(exp, dataset, label, head, proto, _mean(list(c.rhos.values())),
                             _std(list(c.rhos.values())), ci, _mean(c.l2s), _mean(c.rl2s), len(members),
                             c.n_test, notes, c.info))
            c.cls_fold = (members[0].cls, members[0].fold, members[0].protocol)
            cells[(exp, dataset, label, head, proto)] = c

    # averages: AQA-7 over its classes; JIGSAWS per task over folds, then over everything
    by_model: dict[tuple, list[tuple[str, _Cell]]] = {}
    for (exp, dataset, label, head, proto), c in cells.items():
        if dataset in ("aqa7", "jigsaws"):
            by_model.setdefault((exp, dataset, head, proto, c.cls_fold[2]), []).append((label, c))
    for (exp, dataset, head, proto, cv), members in by_model.items():
        cv_txt = f"{cv} " if cv else ""
        if dataset == "aqa7":
            members = [m for m in members if m[1].cls_fold[0] in AQA7_CLASSES]
            if len(members) >= 2:
                rows.append(_average_row(exp, dataset, f"avg (Fisher z, {len(members)}/6 classes)", head,
                                         proto, members, n_boot=n_boot, seed=seed))
        else:
            tasks: dict[str, list] = {}
            for m in members:
                tasks.setdefault(m[1].cls_fold[0], []).append(m)
            for task, tm in tasks.items():
                if len(tm) >= 2:
                    rows.append(_average_row(exp, dataset, f"{task} avg (Fisher z, {len(tm)} {cv_txt}folds)", head,
                                             proto, tm, n_boot=n_boot, seed=seed))
            if len(tasks) >= 2:
                folds = sorted({len(tm) for tm in tasks.values()})
                what = f"{len(tasks)} tasks" + (f" x {folds[0]} {cv_txt}folds" if folds[0] > 1 and len(folds) == 1 else "")
                rows.append(_average_row(exp, dataset, f"avg (Fisher z, {what})", head, proto, members,
                                         n_boot=n_boot, seed=seed))

    df = pd.DataFrame(rows, columns=COLUMNS)
    if len(df):
        proto_rank = {p: i for i, p in enumerate(PROTOCOLS)}
        key = df.apply(lambda r: (r["experiment"], r["dataset"], r["head"],
                                  _cls_order(r["dataset"], r["class/fold"]), proto_rank[r["protocol"]]),
                       axis=1)
        df = df.iloc[sorted(range(len(df)), key=lambda i: key.iloc[i])].reset_index(drop=True)
    df["n_runs"] = df["n_runs"].astype("int64")
    df["n_test"] = df["n_test"].astype("int64")
    return df


def results_table(paths: Sequence[str | os.PathLike], *, n_boot: int = 1000, seed: int = 0,
                  best_on_test: bool = False) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """find_runs + build_table: (table, skipped)."""
    runs, skipped = find_runs(paths)
    return build_table(runs, n_boot=n_boot, seed=seed, best_on_test=best_on_test), skipped
