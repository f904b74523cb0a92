"""Plots of one run folder, written as PNG files into that folder (matplotlib, Agg backend).

    python -m evaluate plots artifacts/runs/aqa7/diving/core/seed0

- ``scatter.png``: predicted vs true test scores (predictions.csv, the val-selected model's ``pred``;
  the final epoch's ``pred_final`` in a lighter colour when present), identity line, rho in the title.
- ``curves.png``: per epoch (metrics.csv) the training loss, and validation and test rho; the selected
  epoch (summary.json ``selected_epoch``) is marked with a vertical line.
- ``leaves.png`` (tree heads, leaf_counts.json): how often each leaf was chosen at test inference, with
  the leaf intervals from groups.json on the axis when present.
A plot whose input file is missing is skipped with a log message; the function returns what it wrote.
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
from train_head.runfolder import RunFolder  # noqa: E402

log = logging.getLogger(__name__)


def _read_json(p: Path) -> dict | None:
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        log.info("no usable %s (%s)", p, e)
        return None


def _title(run: Path, summary: dict | None) -> str:
    if summary:
        parts = [str(summary.get(k)) for k in ("dataset", "cls", "head") if summary.get(k) not in (None, "")]
        if summary.get("fold") not in (None, ""):
            parts.append(f"fold {summary['fold']}")
        if summary.get("seed") is not None:
            parts.append(f"seed {summary['seed']}")
        return " / ".join(parts)
    return run.name


def _fmt(x: float) -> str:
    return "undefined" if x is None or math.isnan(x) else f"{x:.4f}"


def plot_scatter(run: Path, summary: dict | None = None) -> Path | None:
    p = RunFolder(run).file("predictions.csv")
    if not p.is_file():
        log.info("%s: no predictions.csv, no scatter plot", run)
        return None
    df = pd.read_csv(p)
    if not {"true", "pred"} <= set(df.columns) or df.empty:
        log.warning("%s lacks true/pred columns or rows; no scatter plot", p)
        return None
    true, pred = df["true"].to_numpy(float), df["pred"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    label = f"val-selected (rho {_fmt(spearman(pred, true))})"
    if "pred_final" in df.columns and not df["pred_final"].isna().any():
        pf = df["pred_final"].to_numpy(float)
        ax.scatter(true, pf, s=12, alpha=0.35, color="tab:gray",
                   label=f"final epoch (rho {_fmt(spearman(pf, true))})")
    ax.scatter(true, pred, s=14, alpha=0.8, color="tab:blue", label=label)
    lo = float(np.nanmin([true.min(), pred.min()]))
    hi = float(np.nanmax([true.max(), pred.max()]))
    pad = 0.02 * (hi - lo if hi > lo else 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="identity")
    ax.set_xlabel("true score")
    ax.set_ylabel("predicted score")
    ax.set_title(f"{_title(run, summary)}\nval-selected model: rho = {_fmt(spearman(pred, true))} "
                 f"(n = {len(df)} test videos)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.set_aspect("equal", adjustable="datalim")
    out = RunFolder(run).file("scatter.png")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_curves(run: Path, summary: dict | None = None) -> Path | None:
    p = RunFolder(run).file("metrics.csv")
    if not p.is_file():
        log.info("%s: no metrics.csv, no training curves", run)
        return None
    df = pd.read_csv(p)
    if "epoch" not in df.columns or df.empty:
        log.warning("%s has no epoch column or rows; no training curves", p)
        return None
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(6, 6), dpi=100, sharex=True)
    ep = df["epoch"].to_numpy()
    if "train_loss" in df.columns:
        ax1.plot(ep, df["train_loss"], color="tab:red", label="train loss")
    ax1.set_ylabel("train loss")
    for col, colour, name in (("val_rho", "tab:green", "val rho"), ("test_rho", "tab:blue", "test rho")):
        if col in df.columns:
            pts = df[["epoch", col]].dropna()          # with val_every > 1 the other epochs are empty
            ax2.plot(pts["epoch"], pts[col], color=colour, label=name, marker="." if len(pts) < 60 else None)
    ax2.set_ylabel("Spearman rho")
    ax2.set_xlabel("epoch")
    sel = summary.get("selected_epoch") if summary else None
    if sel is not None:
        for ax in (ax1, ax2):
            ax.axvline(float(sel), color="k", ls="--", lw=1, label=f"selected (val) epoch {sel}")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax1, ax2):
        ax.legend(fontsize=7)
    ax1.set_title(_title(run, summary), fontsize=9)
    out = RunFolder(run).file("curves.png")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_leaves(run: Path, summary: dict | None = None) -> Path | None:
    counts = _read_json(RunFolder(run).file("leaf_counts.json"))
    if not counts:
        return None
    groups = (_read_json(RunFolder(run).file("groups.json")) or {}).get("groups")
    series = {k: v for k, v in counts.items() if isinstance(v, list) and v}
    if not series:
        log.warning("%s has no per-leaf count lists", RunFolder(run).file("leaf_counts.json"))
        return None
    n = max(len(v) for v in series.values())
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * n), 4), dpi=100)
    width = 0.8 / len(series)
    for i, (name, v) in enumerate(series.items()):
        x = np.arange(len(v)) + (i - (len(series) - 1) / 2) * width
        ax.bar(x, v, width=width, label=name)
    ax.set_xticks(np.arange(n))
    if groups and len(groups) == n:
        ax.set_xticklabels([f"{k}\n[{a:.3g}, {b:.3g}]" for k, (a, b) in enumerate(groups)], fontsize=6)
    ax.set_xlabel("leaf (relative-score interval)")
    ax.set_ylabel("times chosen (test inference)")
    ax.set_title(_title(run, summary), fontsize=9)
    ax.legend(fontsize=7)
    out = RunFolder(run).file("leaves.png")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_run(run_dir) -> list[Path]:
    """Every plot the run folder has data for; returns the PNG paths written."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a folder; give a run folder (it holds summary.json)")
    summary = _read_json(RunFolder(run).file("summary.json"))
    out = []
    for fn in (plot_scatter, plot_curves, plot_leaves):
        p = fn(run, summary)
        if p is not None:
            out.append(p)
    return out
