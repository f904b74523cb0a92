"""Plots of one run folder, written into that folder as PNG (print resolution, 300 dpi by default) and
as a vector PDF beside it (matplotlib, Agg backend).

    python -m evaluate plots artifacts/runs/aqa7/diving/core/seed0

- ``scatter.png/.pdf``: predicted vs true test scores (predictions.csv, the val-selected model's
  ``pred``; the final epoch's ``pred_final`` in grey when present), identity line, rho in the title.
- ``curves.png/.pdf``: per epoch (metrics.csv) the training loss, and validation and test rho; the
  selected epoch (summary.json ``selected_epoch``) is marked with a vertical line.
- ``leaves.png/.pdf`` (tree heads, leaf_counts.json): how often each leaf was chosen at test inference,
  as horizontal bars, one line per leaf with its relative-score interval (groups.json), so the labels
  never overlap however many leaves there are.
Titles use the dataset's and method's proper names (evaluate.names). A plot whose input file is
missing, empty or not numbers is not drawn; `plot_run(..., problems=[])` collects why, nothing raises.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from evaluate.metrics import spearman  # noqa: E402
from evaluate.names import fmt_rho, run_title  # noqa: E402
from train_head.runfolder import RunFolder  # noqa: E402

log = logging.getLogger(__name__)

DPI = 300
VECTOR = ".pdf"


def save_figure(fig, png: Path, *, dpi: int = DPI) -> list[Path]:
    """`png` at `dpi` and the same figure as a vector PDF beside it; the figure is closed."""
    png = Path(png)
    try:
        fig.savefig(png, dpi=dpi)
        fig.savefig(png.with_suffix(VECTOR))
    finally:
        plt.close(fig)
    return [png, png.with_suffix(VECTOR)]


def _read_json(p: Path) -> dict | None:
    try:
        with open(p, encoding="utf-8") as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError) as e:
        log.info("no usable %s (%s)", p, e)
        return None


def read_numeric_csv(p: Path, need: tuple[str, ...], problems: list[str] | None = None) -> pd.DataFrame | None:
    """A CSV with the `need` columns as float (non-numbers -> NaN), or None with the reason in `problems`."""
    def fail(why):
        if problems is not None:
            problems.append(f"{p.name}: {why}")
        return None
    if not p.is_file():
        return fail("missing")
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        return fail(f"unreadable ({str(e).splitlines()[0][:80]})")
    if df.empty or not set(need) <= set(df.columns):
        return fail(f"no rows or lacks {', '.join(need)}")
    for c in df.columns:
        if c != "video_id":
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def _title(run: Path, summary: dict | None) -> str:
    if summary and summary.get("dataset") and summary.get("head"):
        head = str(summary["head"]) + (f"+{summary['tag']}" if summary.get("tag") else "")
        return run_title(str(summary["dataset"]), summary.get("cls"), head, fold=summary.get("fold"),
                         seed=summary.get("seed"))
    return run.name


def plot_scatter(run: Path, summary: dict | None = None, *, dpi: int = DPI,
                 problems: list[str] | None = None) -> list[Path]:
    df = read_numeric_csv(RunFolder(run).file("predictions.csv"), ("true", "pred"), problems)
    if df is None:
        return []
    ok = df[["true", "pred"]].notna().all(axis=1)
    if not ok.any():
        problems is not None and problems.append("predictions.csv: no finite true/pred pair")
        return []
    true, pred = df.loc[ok, "true"].to_numpy(float), df.loc[ok, "pred"].to_numpy(float)
    rho = spearman(df["pred"].to_numpy(float), df["true"].to_numpy(float))
    fig, ax = plt.subplots(figsize=(5, 5))
    if "pred_final" in df.columns and df["pred_final"].notna().all():
        pf = df["pred_final"].to_numpy(float)
        ax.scatter(df["true"], pf, s=12, alpha=0.35, color="tab:gray",
                   label=f"final-epoch model (ρ {fmt_rho(spearman(pf, df['true'].to_numpy(float)))})")
    ax.scatter(true, pred, s=14, alpha=0.8, color="tab:blue", label=f"val-selected model (ρ {fmt_rho(rho)})")
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    pad = 0.02 * (hi - lo if hi > lo else 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="identity")
    ax.set_xlabel("true score")
    ax.set_ylabel("predicted score")
    note = "" if ok.all() else f", {int((~ok).sum())} NaN not drawn"
    ax.set_title(f"{_title(run, summary)}\nval-selected model: ρ = {fmt_rho(rho)} "
                 f"(n = {len(df)} test videos{note})", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    return save_figure(fig, RunFolder(run).file("scatter.png"), dpi=dpi)


def plot_curves(run: Path, summary: dict | None = None, *, dpi: int = DPI,
                problems: list[str] | None = None) -> list[Path]:
    df = read_numeric_csv(RunFolder(run).file("metrics.csv"), ("epoch",), problems)
    if df is None:
        return []
    df = df[df["epoch"].notna()]
    if df.empty:
        problems is not None and problems.append("metrics.csv: no numeric epoch")
        return []
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    ep = df["epoch"].to_numpy()
    if "train_loss" in df.columns:
        ax1.plot(ep, df["train_loss"], color="tab:red", label="training loss")
    ax1.set_ylabel("training loss")
    for col, colour, name in (("val_rho", "tab:green", "validation ρ"), ("test_rho", "tab:blue", "test ρ")):
        if col in df.columns:
            pts = df[["epoch", col]].dropna()          # with val_every > 1 the other epochs are empty
            ax2.plot(pts["epoch"], pts[col], color=colour, label=name, marker="." if len(pts) < 60 else None)
    ax2.set_ylabel("Spearman ρ")
    ax2.set_xlabel("epoch")
    sel = summary.get("selected_epoch") if summary else None
    if isinstance(sel, (int, float)) and not isinstance(sel, bool) and math.isfinite(sel):
        for ax in (ax1, ax2):
            ax.axvline(float(sel), color="k", ls="--", lw=1, label=f"selected epoch {sel} (validation)")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax1.set_title(_title(run, summary), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, RunFolder(run).file("curves.png"), dpi=dpi)


def plot_leaves(run: Path, summary: dict | None = None, *, dpi: int = DPI,
                problems: list[str] | None = None) -> list[Path]:
    counts = _read_json(RunFolder(run).file("leaf_counts.json"))
    if not counts:
        return []
    names = {"selected": "val-selected model", "final": "final-epoch model"}
    series = {names.get(k, k): np.asarray(v, dtype=float) for k, v in counts.items()
              if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)}
    if not series:
        problems is not None and problems.append("leaf_counts.json: no per-leaf count lists")
        return []
    groups = (_read_json(RunFolder(run).file("groups.json")) or {}).get("groups")
    n = max(len(v) for v in series.values())
    fig, ax = plt.subplots(figsize=(6.5, 1.4 + 0.28 * n))
    height = 0.8 / len(series)
    for i, (name, v) in enumerate(series.items()):
        y = np.arange(len(v)) + (i - (len(series) - 1) / 2) * height
        ax.barh(y, v, height=height, label=name)
    ax.set_yticks(np.arange(n))
    if isinstance(groups, list) and len(groups) == n and all(
            isinstance(g, list) and len(g) == 2 and all(isinstance(x, (int, float)) for x in g) for g in groups):
        span = max(abs(float(x)) for g in groups for x in g)
        nd = 1 if span >= 10 else 2 if span >= 1 else 3     # one number format per plot
        ax.set_yticklabels([f"leaf {k}: [{a:.{nd}f}, {b:.{nd}f}]" for k, (a, b) in enumerate(groups)],
                           fontsize=7)
        ax.set_ylabel("leaf (relative-score interval)")
    else:
        ax.set_yticklabels([f"leaf {k}" for k in range(n)], fontsize=7)
        ax.set_ylabel("leaf")
    ax.invert_yaxis()                                   # leaf 0 (most negative difference) on top
    ax.set_xlabel("times chosen at test inference (test videos × exemplars)")
    ax.set_title(f"{_title(run, summary)}\nleaf of the regression tree chosen at test inference", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, RunFolder(run).file("leaves.png"), dpi=dpi)


def plot_run(run_dir, *, dpi: int = DPI, problems: list[str] | None = None) -> list[Path]:
    """Every plot the run folder has data for; returns the files written (PNG and PDF of each).
    Reasons a plot was not drawn are appended to `problems` (when given) and logged."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a folder; give a run folder (it holds summary.json)")
    summary = _read_json(RunFolder(run).file("summary.json"))
    found: list[str] = []
    out = []
    for fn in (plot_scatter, plot_curves, plot_leaves):
        try:
            out += fn(run, summary, dpi=dpi, problems=found)
        except OSError as e:                 # a read-only or full run folder: say so, draw the others
            found.append(f"{fn.__name__[5:]}: cannot write into {run} ({e.strerror or e})")
    for p in found:
        log.info("%s: %s", run, p)
    if problems is not None:
        problems.extend(found)
    return out
