"""Result tables from run folders (pandas), printed as markdown, written as CSV and LaTeX.

    python -m evaluate table artifacts/runs [--csv artifacts/results.csv] [--latex out.tex] [--no-reference]

A run folder is any folder holding ``summary.json`` (docs/ARCHITECTURE.md, "Run folder"). Runs are
grouped into one row per (experiment, dataset, class-or-fold, head, selection protocol); the seeds of a
group are its runs. "experiment" is the part of the run folder's path (relative to the path given on
the command line) above the ``<dataset>/...`` folders, so that runs of a sweep kept in
``runs/<sweep-name>/<dataset>/...`` are never pooled with other runs; it is empty for the standard layout.

Protocols (SPEC section 7):
- ``val-selected``: the epoch chosen on the validation split carved from training (``summary.selected``,
  predictions column ``pred``) -- the number to report;
- ``final-epoch``: the last epoch (``summary.final``, column ``pred_final``);
- ``best-epoch-on-test (selected on test!)``: the reference implementation's habit, shown only to
  compare with it; it is chosen on the test set and is optimistic by construction. It has no stored
  predictions, so no confidence interval.

Columns: ``rho`` (arithmetic mean over seeds of each seed's rho from summary.json), ``rho_std`` (sample
std over seeds, NaN for one seed), ``rho_ci_lo``/``rho_ci_hi`` (95% percentile bootstrap over *test
videos* of that seed-mean: each draw resamples the videos once and applies the draw to every seed, using
predictions.csv; see evaluate.metrics.bootstrap_ci), ``L2`` and ``RL2x100`` (means over seeds), ``n_runs``
(seeds), ``n_test`` (test videos), ``note``. A seed whose rho is undefined (constant predictions) makes
the row's rho NaN and is named in the note, rather than being dropped.

Average rows: AQA-7 over its six classes and JIGSAWS over tasks (each task over its folds first, then
all tasks x folds) with the Fisher-z mean of the member rows' rho (NaN propagates); RL2 and L2 are
arithmetic means; the std is over seeds of the per-seed Fisher-z averages (seeds present in every
member); the CI is a bootstrap stratified by member (every class's test videos resampled on their own).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from evaluate.metrics import bootstrap_ci_fisher, fisher_z_mean, spearman
from evaluate.published import AQA7_CLASSES, JIGSAWS_TASKS, LABEL, published_table
from train_head.runfolder import RunFolder, RunFolderError

log = logging.getLogger(__name__)

PROTOCOLS = {
    # protocol label -> (summary key, predictions.csv column or None)
    "val-selected": ("selected", "pred"),
    "final-epoch": ("final", "pred_final"),
    "best-epoch-on-test (selected on test!)": ("best_on_test", None),
}
COLUMNS = ["experiment", "dataset", "class/fold", "head", "protocol", "rho", "rho_std", "rho_ci_lo",
           "rho_ci_hi", "L2", "RL2x100", "n_runs", "n_test", "note"]
# config keys that legitimately differ between the seeds of one experiment
_SEED_KEYS = ("seed", "dir", "path", "out", "time", "created", "commit", "version", "host", "git", "device",
              "resumed")


@dataclass
class Run:
    path: Path
    summary: dict
    config: dict
    experiment: str
    dataset: str
    cls: str
    fold: str | None
    head: str
    seed: int | str
    protocol: str | None = None   # cross-validation protocol (JIGSAWS "4fold", "loso", "louo")
    _pred: pd.DataFrame | None = field(default=None, repr=False)
    _pred_loaded: bool = field(default=False, repr=False)

    @property
    def label(self) -> str:
        """class-or-fold label: the class, or "<task> fold <k>" for cross-validation."""
        if self.fold in (None, ""):
            return self.cls
        return f"{self.cls} {self.protocol} fold {self.fold}" if self.protocol else f"{self.cls} fold {self.fold}"

    def predictions(self) -> pd.DataFrame | None:
        if not self._pred_loaded:
            self._pred_loaded = True
            folder = RunFolder(self.path)
            p = folder.file("predictions.csv")
            if p.is_file():
                try:
                    df = folder.read_predictions()
                    if {"video_id", "true"} <= set(df.columns):
                        self._pred = df
                    else:
                        log.warning("%s lacks video_id/true columns; no CI for this run", p)
                except (OSError, ValueError, pd.errors.ParserError) as e:
                    log.warning("cannot read %s (%s); no CI for this run", p, e)
        return self._pred


def _experiment(path: Path, root: Path, dataset: str) -> str:
    try:
        parts = path.resolve().relative_to(root.resolve()).parts
    except ValueError:
        return ""
    # the standard layout is <root>/<dataset>/<cls-or-fold>/<head>/seed<k>/: keep what is above <dataset>
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == dataset:
            return "/".join(parts[:i])
    return "/".join(parts[:-4]) if len(parts) > 4 else ""


def _summary_problem(s: dict) -> str | None:
    if s.get("complete") is not True:
        return "summary.json says complete is not true (interrupted or still running)"
    for key in ("dataset", "head", "selected", "final"):
        if key not in s:
            return f"summary.json lacks '{key}'"
    for key in ("selected", "final"):
        if not isinstance(s[key], dict) or "rho" not in s[key]:
            return f"summary.json '{key}' has no rho"
    return None


def find_runs(paths: Sequence[str | os.PathLike]) -> tuple[list[Run], list[tuple[str, str]]]:
    """Every run folder under `paths` -> (complete runs, [(folder, why skipped), ...]).

    A folder with summary.json is a run; one that has a run's other files (config.json, metrics.csv,
    checkpoint.pt) but no summary.json is listed as skipped, as is one whose summary is not complete.
    """
    runs: list[Run] = []
    skipped: list[tuple[str, str]] = []
    for root in map(Path, paths):
        if not root.exists():
            skipped.append((str(root), "path does not exist"))
            continue
        for folder in RunFolder.find(root):
            d = folder.path
            if not folder.file("summary.json").is_file():
                skipped.append((str(d), "no summary.json (still training, or crashed)"))
                continue
            try:
                s = folder.read_json("summary.json")
            except RunFolderError as e:
                skipped.append((str(d), f"unreadable summary.json: {e}"))
                continue
            problem = _summary_problem(s)
            if problem:
                skipped.append((str(d), problem))
                continue
            try:
                cfg = folder.read_json("config.json", required=False) or {}
            except RunFolderError as e:
                log.warning("%s", e)
                cfg = {}
            dataset = str(s["dataset"])
            fold = s.get("fold")
            runs.append(Run(path=d, summary=s, config=cfg, experiment=_experiment(d, root, dataset),
                            dataset=dataset, cls=str(s.get("cls") or dataset),
                            fold=None if fold in (None, "") else str(fold),
                            # a sweep's tag is part of the model's name (the trainer's `<head>+<tag>` folder)
                            head=str(s["head"]) + (f"+{s['tag']}" if s.get("tag") else ""),
                            seed=s.get("seed", d.name), protocol=s.get("protocol") or None))
    # the same folder reached from two given paths counts once
    seen, unique = set(), []
    for r in runs:
        key = r.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique, skipped


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
        notes.append(f"rho undefined (constant predictions?) for seed {', '.join(undefined)}")
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
    return _Cell(rhos, l2s, rl2s, item, max(n_tests) if n_tests else 0, notes)


def _std(v: Sequence[float]) -> float:
    a = np.asarray(v, dtype=np.float64)
    return float(np.std(a, ddof=1)) if a.size >= 2 else math.nan


def _mean(v: Sequence[float]) -> float:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()) if a.size else math.nan


def _row(exp, dataset, label, head, proto, rho, rho_std, ci, l2, rl2, n_runs, n_test, notes) -> dict:
    return {"experiment": exp, "dataset": dataset, "class/fold": label, "head": head, "protocol": proto,
            "rho": rho, "rho_std": rho_std, "rho_ci_lo": ci[0], "rho_ci_hi": ci[1], "L2": l2,
            "RL2x100": 100.0 * rl2 if not math.isnan(rl2) else math.nan, "n_runs": n_runs,
            "n_test": n_test, "note": "; ".join(notes)}


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
    return _row(exp, dataset, label, head, proto, rho, _std(per_seed), ci, l2, rl2,
                sum(len(c.rhos) for c in cells), sum(c.n_test for c in cells), notes)


def _cls_order(dataset: str, label: str) -> tuple:
    order = AQA7_CLASSES if dataset == "aqa7" else JIGSAWS_TASKS if dataset == "jigsaws" else ()
    base = label.split(" ")[0]          # class/task names carry no spaces
    if label.startswith("avg"):
        return (2, 0, 0, label)
    known = base in order
    return (0 if known else 1, order.index(base) if known else 0, int(" avg" in label), label)


def build_table(runs: Iterable[Run], *, n_boot: int = 1000, seed: int = 0,
                protocols: Sequence[str] = tuple(PROTOCOLS)) -> pd.DataFrame:
    """One DataFrame row per (experiment, dataset, class-or-fold, head, protocol), plus average rows."""
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
            rows.append(_row(exp, dataset, label, head, proto, _mean(list(c.rhos.values())),
                             _std(list(c.rhos.values())), ci, _mean(c.l2s), _mean(c.rl2s), len(members),
                             c.n_test, notes))
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


def results_table(paths: Sequence[str | os.PathLike], *, n_boot: int = 1000, seed: int = 0
                  ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """find_runs + build_table: (table, skipped)."""
    runs, skipped = find_runs(paths)
    return build_table(runs, n_boot=n_boot, seed=seed), skipped


def display_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy for printing: numbers rounded, the CI as one "[lo, hi]" column, empty columns dropped."""
    def f(x, nd):
        return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"
    out = pd.DataFrame({
        "experiment": df["experiment"], "dataset": df["dataset"], "class/fold": df["class/fold"],
        "head": df["head"], "protocol": df["protocol"],
        "rho": [f(x, 4) for x in df["rho"]],
        "rho std": ["-" if math.isnan(x) else f(x, 4) for x in df["rho_std"]],   # one seed: no std
        "rho 95% CI": [("[" + f(a, 3) + ", " + f(b, 3) + "]") if not (math.isnan(a) or math.isnan(b)) else "-"
                       for a, b in zip(df["rho_ci_lo"], df["rho_ci_hi"])],
        "L2": [f(x, 3) for x in df["L2"]], "RL2x100": [f(x, 3) for x in df["RL2x100"]],
        "n_runs": df["n_runs"], "n_test": df["n_test"], "note": df["note"],
    })
    if not (out["experiment"] != "").any():
        out = out.drop(columns="experiment")
    if not (out["note"] != "").any():
        out = out.drop(columns="note")
    return out


def to_markdown(df: pd.DataFrame) -> str:
    if not len(df):
        return "(no complete runs)"
    return display_frame(df).to_markdown(index=False)


def reference_frame(df: pd.DataFrame | None) -> pd.DataFrame:
    datasets = set(df["dataset"]) if df is not None and len(df) else None
    return published_table(datasets)


def reference_markdown(df: pd.DataFrame | None) -> str:
    ref = reference_frame(df).drop(columns="source")
    ref["rho"] = [f"{x:.4g}" for x in ref["rho"]]
    ref["RL2x100"] = ["-" if math.isnan(x) else f"{x:.4g}" for x in ref["RL2x100"]]
    return (f"Reference ({LABEL}):\nThese fine-tune I3D end to end; runs on cached features keep the backbone "
            "frozen and should be expected to score lower (SPEC section 6).\n\n" + ref.to_markdown(index=False))


def skipped_text(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    return "Skipped (incomplete):\n" + "\n".join(f"- {p}: {why}" for p, why in skipped)


def to_latex(df: pd.DataFrame, *, reference: bool = True) -> str:
    """LaTeX for the table (and the reference block as a separate table when `reference`)."""
    parts = [display_frame(df).to_latex(index=False, escape=True,
                                        caption="Our runs (cached I3D features, frozen backbone)")]
    if reference:
        ref = reference_frame(df).drop(columns="source")
        parts.append(ref.to_latex(index=False, escape=True, na_rep="-", float_format="%.4g",
                                  caption=f"Reference ({LABEL})"))
    return "\n".join(parts)


def render(df: pd.DataFrame, skipped, *, reference: bool = True) -> str:
    """What `python -m evaluate table` prints."""
    text = [to_markdown(df)]
    if len(df) and (df["protocol"] == "best-epoch-on-test (selected on test!)").any():
        text.append("Rows marked 'selected on test!' choose the epoch on the test set; they are optimistic "
                    "and only for comparison with the reference implementation. Report 'val-selected'.")
    sk = skipped_text(skipped)
    if sk:
        text.append(sk)
    if reference:
        text.append(reference_markdown(df))
    return "\n\n".join(text)
