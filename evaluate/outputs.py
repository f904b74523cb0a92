"""Where `evaluate report` / `evaluate table` write, and the rule that results never vanish.

Default files of `python -m evaluate report RUNS` live with the runs they describe (so `make eval
RUNS=other` never overwrites the results of artifacts/runs):

    RUNS/results.md              the compact table (caption, table, sources, runs not in the table)
    RUNS/results.tex             the compact table as a LaTeX document (booktabs; compiles as given)
    RUNS/results.csv             the tidy long table (a row per protocol; numbers unrounded)
    RUNS/results_published.csv   the published numbers of these datasets with their sources
    RUNS/comparison-<dataset>.png/.pdf   the comparison figure (evaluate.figures)

`--out DIR` moves them all; `--csv FILE` / `--latex FILE` move one. A table with no complete run is never
written: the command stops with one message, and says so when an existing results file is being kept.
Files are written atomically (data.fileio), so an interrupted write leaves the previous version.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from data.fileio import atomic_path, atomic_write_text


class OutputError(Exception):
    """An output cannot be written, or would replace results with nothing; the message says what to do."""


def default_paths(runs_root: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Path]:
    d = Path(out) if out else Path(runs_root)
    return {"markdown": d / "results.md", "latex": d / "results.tex", "csv": d / "results.csv",
            "published": d / "results_published.csv", "figures": d}


def data_rows(path: str | os.PathLike) -> int:
    """Data rows of an existing CSV (0 when missing or empty; an unreadable one counts as 1: keep it)."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return 0
    try:
        return len(pd.read_csv(p))
    except (OSError, ValueError, pd.errors.ParserError):
        return 1


def refuse_empty(n_rows: int, roots, skipped, protected: list[str | os.PathLike]) -> None:
    """Raise OutputError when the table is empty: never replace results with an empty table."""
    if n_rows:
        return
    where = ", ".join(map(str, roots))
    why = (f"{len(skipped)} run folder(s) found but none complete (listed above)" if skipped else
           "no run folders (summary.json) found there")
    kept = [f"{p} ({data_rows(p)} rows)" for p in protected if data_rows(p)]
    keep = f"; kept {', '.join(kept)} as it was" if kept else ""
    raise OutputError(f"no complete runs under {where}: {why}. Nothing written{keep}. Give the folder that "
                      "`python -m train_head train --out` wrote (make eval RUNS=...), or finish the runs first")


def _parent(path: Path, option: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder of {path} ({exc.strerror or exc}); choose another "
                          f"{option}") from None


def write_text(path: str | os.PathLike, text: str, option: str) -> Path:
    p = Path(path)
    _parent(p, option)
    try:
        atomic_write_text(p, text)
    except OSError as exc:
        raise OutputError(f"cannot write {p} ({exc.strerror or exc}); choose another {option}") from None
    return p


def write_csv(path: str | os.PathLike, df: pd.DataFrame, option: str) -> Path:
    p = Path(path)
    _parent(p, option)
    try:
        with atomic_path(p) as tmp:
            df.to_csv(tmp, index=False)
    except OSError as exc:
        raise OutputError(f"cannot write {p} ({exc.strerror or exc}); choose another {option}") from None
    return p
