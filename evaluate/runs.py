"""Finding run folders and reading them for the tables, through train_head.runfolder.RunFolder.

    from evaluate.runs import find_runs
    runs, skipped = find_runs(["artifacts/runs"])     # complete runs, [(folder, why not in the table)]

A folder with summary.json marked complete is a run; one with a run's other files but no (readable,
complete) summary is listed in `skipped` with the reason. A complete run can still be *broken*: a
model file that is truncated, a predictions.csv that is empty, non-numeric or NaN, metrics that are
null or NaN in summary.json (the tables say so per seed). Such a run stays in the table (its numbers are what they are) and its
problems are listed in `Run.problems`, which the tables print in the row's note; nothing here raises on
a broken file.
"""
from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from train_head.runfolder import RunFolder, RunFolderError

log = logging.getLogger(__name__)

PRED_NUMERIC = ("true", "pred", "pred_final")
MODEL_FILES = ("model_selected.pt", "model_final.pt")


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
    problems: list = field(default_factory=list)   # what is broken in this run (notes of its rows)
    _pred: pd.DataFrame | None = field(default=None, repr=False)
    _pred_loaded: bool = field(default=False, repr=False)

    @property
    def label(self) -> str:
        """class-or-fold label: the class, or "<task> fold <k>" for cross-validation."""
        if self.fold in (None, ""):
            return self.cls
        return f"{self.cls} {self.protocol} fold {self.fold}" if self.protocol else f"{self.cls} fold {self.fold}"

    @property
    def mode(self) -> str:
        return str(self.summary.get("mode") or self.config.get("mode") or "cached")

    def _problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def predictions(self) -> pd.DataFrame | None:
        """predictions.csv with its score columns as numbers (a non-number becomes NaN and is a problem),
        or None (missing or unreadable: a problem)."""
        if not self._pred_loaded:
            self._pred_loaded = True
            folder = RunFolder(self.path)
            p = folder.file("predictions.csv")
            if not p.is_file():
                self._problem("predictions.csv missing")
                return None
            try:
                df = folder.read_predictions()
            except (OSError, ValueError, pd.errors.ParserError) as e:
                self._problem(f"predictions.csv unreadable ({str(e).splitlines()[0][:80]})")
                return None
            if not {"video_id", "true", "pred"} <= set(df.columns) or df.empty:
                self._problem("predictions.csv has no rows or lacks video_id/true/pred")
                return None
            for col in PRED_NUMERIC:
                if col in df.columns:
                    num = pd.to_numeric(df[col], errors="coerce")
                    if (num.isna() & df[col].notna()).any():
                        self._problem(f"predictions.csv '{col}' holds non-numbers")
                    df[col] = num.astype("float64")
            if df[[c for c in PRED_NUMERIC if c in df.columns]].isna().any().any():
                self._problem("NaN in predictions.csv")
            self._pred = df
        return self._pred


def _experiment(path: Path, root: Path, dataset: str) -> str:
    try:
        parts = path.resolve().relative_to(root.resolve()).parts
    except ValueError:
        return ""
    # the standard layout is <root>/[<experiment>/]<dataset>/<cls-or-fold>/<head>/seed<k>/ (RunFolder.layout):
    # keep what is above <dataset> (a class folder may carry the dataset's name too: count from the run)
    if len(parts) >= 4 and parts[-4] == dataset:
        return "/".join(parts[:-4])
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


def model_problems(folder: RunFolder) -> list[str]:
    """The head's model files that `evaluate score` would fail on: missing, empty, or not an intact torch
    zip archive (CRC of every member checked; no torch import, nothing unpickled)."""
    out = []
    for name in MODEL_FILES:
        p = folder.file(name)
        if not p.is_file():
            out.append(f"{name} missing")
            continue
        try:
            with zipfile.ZipFile(p) as z:
                bad = z.testzip()
            if bad is not None:
                out.append(f"{name} damaged (member {bad})")
        except (OSError, zipfile.BadZipFile, EOFError, ValueError):
            out.append(f"{name} truncated or not a torch file")
    return out


def _seed(s: dict, d: Path) -> int | str:
    seed = s.get("seed", d.name)
    return seed if isinstance(seed, (int, str)) and not isinstance(seed, bool) else str(seed)


def find_runs(paths: Sequence[str | os.PathLike]) -> tuple[list[Run], list[tuple[str, str]]]:
    """Every run folder under `paths` -> (complete runs, [(folder, why it is not in the table), ...])."""
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
            run = Run(path=d, summary=s, config=cfg, experiment=_experiment(d, root, dataset),
                      dataset=dataset, cls=str(s.get("cls") or dataset),
                      fold=None if fold in (None, "") else str(fold),
                      # a sweep's tag is part of the model's name (the trainer's `<head>+<tag>` folder)
                      head=str(s["head"]) + (f"+{s['tag']}" if s.get("tag") else ""),
                      seed=_seed(s, d), protocol=s.get("protocol") or None)
            for p in model_problems(folder):
                run._problem(p)
            runs.append(run)
    # the same folder reached from two given paths counts once
    seen, unique = set(), []
    for r in runs:
        key = r.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique, skipped
