"""Comparison figures across runs: one per (experiment, dataset), as PNG (300 dpi) and vector PDF.

    from evaluate.figures import comparison_figures
    comparison_figures(runs, long_table, out_dir)     # -> [comparison-<dataset>.png, .pdf, ...]

Left panel, "rho per method": for each class/fold (x groups; AQA-7/JIGSAWS averages as their own group)
and method (colour), every seed's val-selected test rho as a small dot (the seed spread), the mean over
seeds as a large marker, and the bootstrap 95 % interval of that mean as an error bar (evaluate.tables;
no bar where the interval is undefined). Right panel, "curves": validation rho (dashed) and test rho
(solid) over epochs for each method, averaged over seeds (and over the classes/folds when there are
several, said in the panel's title), with a band of ±1 std of test rho over those runs. Names: evaluate.names.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from evaluate.names import class_name, dataset_name, method_name
from evaluate.plots import DPI, plt, read_numeric_csv, save_figure
from evaluate.runs import Run
from evaluate.tables import SELECTED, _cls_order
from train_head.runfolder import RunFolder

COLOURS = plt.get_cmap("tab10").colors


def figure_name(dataset: str, experiment: str = "") -> str:
    """comparison-<dataset>[-<experiment>] (file-name safe)."""
    stem = "comparison-" + dataset + (f"-{experiment}" if experiment else "")
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", stem)


def _mean_curves(runs: list[Run]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """column -> (epochs, mean over runs, std over runs) for val_rho and test_rho (epochs any run has)."""
    frames = []
    for r in runs:
        df = read_numeric_csv(RunFolder(r.path).file("metrics.csv"), ("epoch",))
        if df is not None:
            frames.append(df.dropna(subset=["epoch"]).drop_duplicates("epoch").set_index("epoch"))
    out = {}
    for col in ("val_rho", "test_rho"):
        series = [f[col] for f in frames if col in f.columns and f[col].notna().any()]
        if not series:
            continue
        table = pd.concat(series, axis=1).sort_index()
        mean = table.mean(axis=1, skipna=True)
        std = table.std(axis=1, ddof=1, skipna=True) if table.shape[1] > 1 else mean * np.nan
        keep = mean.notna()
        out[col] = (table.index.to_numpy()[keep], mean.to_numpy()[keep], std.to_numpy()[keep])
    return out


def _rho_panel(ax, runs: list[Run], rows: pd.DataFrame, methods: list[str], colour: dict) -> None:
    units = sorted(dict.fromkeys(rows["class/fold"]), key=lambda u: _cls_order(rows["dataset"].iloc[0], u))
    width = 0.8 / max(len(methods), 1)
    for ui, unit in enumerate(units):
        for mi, head in enumerate(methods):
            x = ui + (mi - (len(methods) - 1) / 2) * width
            row = rows[(rows["class/fold"] == unit) & (rows["head"] == head)]
            seeds = [r for r in runs if r.label == unit and r.head == head]
            vals = [float(r.summary["selected"].get("rho")) for r in seeds
                    if isinstance(r.summary["selected"].get("rho"), (int, float))]
            if vals:
                jitter = np.linspace(-0.25, 0.25, len(vals)) * width if len(vals) > 1 else np.zeros(1)
                ax.scatter(x + jitter, vals, s=10, color=colour[head], alpha=0.5, zorder=2)
            if len(row):
                r = row.iloc[0]
                lo, hi = r["rho_ci_lo"], r["rho_ci_hi"]
                if not (math.isnan(lo) or math.isnan(hi)):   # the interval need not contain the mean
                    ax.errorbar([x], [(lo + hi) / 2], yerr=[[(hi - lo) / 2]], fmt="none", color=colour[head],
                                capsize=3, zorder=3)
                if not math.isnan(r["rho"]):
                    ax.plot([x], [r["rho"]], "o", ms=6, color=colour[head], zorder=4)
    ax.set_xticks(range(len(units)))
    ds = rows["dataset"].iloc[0]
    ax.set_xticklabels([class_name(ds, u) for u in units], rotation=30 if len(units) > 3 else 0,
                       ha="right" if len(units) > 3 else "center", fontsize=8)
    ax.set_xlim(-0.6, len(units) - 0.4)
    ax.set_ylabel("test Spearman ρ (val-selected model)")
    ax.set_title("test ρ per method: dots = seeds, marker = mean,\nbar = bootstrap 95% interval", fontsize=9)
    ax.set_xlabel("class / fold" if len(units) > 1 else "")
    for head in methods:
        ax.plot([], [], "o", color=colour[head], label=method_name(head))
    ax.legend(fontsize=7, loc="best")
    ax.grid(axis="y", alpha=0.3)


def _curve_panel(ax, runs: list[Run], methods: list[str], colour: dict, n_units: int) -> None:
    n_runs = max(sum(r.head == h for r in runs) for h in methods)
    for head in methods:
        curves = _mean_curves([r for r in runs if r.head == head])
        for col, ls in (("val_rho", "--"), ("test_rho", "-")):
            if col not in curves:
                continue
            ep, mean, std = curves[col]
            ax.plot(ep, mean, ls=ls, color=colour[head], lw=1.3)
            if col == "test_rho" and np.isfinite(std).any():      # one band per method: test rho
                ax.fill_between(ep, mean - std, mean + std, color=colour[head], alpha=0.12, lw=0)
    for head in methods:
        ax.plot([], [], "s", color=colour[head], label=method_name(head))
    ax.plot([], [], "k-", label="test ρ")
    ax.plot([], [], "k--", label="validation ρ")
    ax.legend(fontsize=7, loc="lower right", ncol=2 if len(methods) > 3 else 1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("Spearman ρ")
    over = "seeds" if n_units == 1 else f"seeds and {n_units} classes/folds"
    band = "band = ±1 std of test ρ over runs" if n_runs > 1 else "one run each: no band"
    ax.set_title(f"validation and test ρ per epoch,\nmean over {over}; {band}", fontsize=9)
    ax.grid(alpha=0.3)


def comparison_figure(runs: list[Run], rows: pd.DataFrame, png: Path, *, dpi: int = DPI) -> list[Path]:
    """One figure of one (experiment, dataset): `rows` are that part of the long table (val-selected)."""
    methods = list(dict.fromkeys(rows["head"]))
    colour = {h: COLOURS[i % len(COLOURS)] for i, h in enumerate(methods)}
    n_units = len(set(rows["class/fold"]))
    left = max(4.0, 0.9 + 0.35 * n_units * max(len(methods), 1))
    if left <= 6.5:                       # side by side
        fig, (a, b) = plt.subplots(1, 2, figsize=(left + 5.0, 4.6), gridspec_kw={"width_ratios": [left, 5.0]})
    else:                                 # many classes x methods: the curves go below, full width
        fig, (a, b) = plt.subplots(2, 1, figsize=(left, 9.0))
    _rho_panel(a, runs, rows, methods, colour)
    plain_units = len({r.label for r in runs})
    _curve_panel(b, runs, methods, colour, plain_units)
    b.xaxis.set_major_locator(MaxNLocator(integer=True))
    per = {}
    for r in runs:
        per[(r.label, r.head)] = per.get((r.label, r.head), 0) + 1
    seeds = sorted(set(per.values()))
    what = "class/fold" if plain_units > 1 else "method"
    exp = rows["experiment"].iloc[0]
    fig.suptitle(f"{dataset_name(rows['dataset'].iloc[0])}{f' ({exp})' if exp else ''}: methods compared "
                 f"({'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''} per {what})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, png, dpi=dpi)


def comparison_figures(runs: list[Run], long: pd.DataFrame, out_dir: str | Path, *, dpi: int = DPI
                       ) -> list[Path]:
    """comparison-<dataset>[-<experiment>].png/.pdf in `out_dir` for every (experiment, dataset)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sel = long[long["protocol"] == SELECTED] if len(long) else long
    written: list[Path] = []
    for (exp, ds), rows in sel.groupby(["experiment", "dataset"], sort=False):
        part = [r for r in runs if r.experiment == exp and r.dataset == ds]
        if part:
            written += comparison_figure(part, rows, out_dir / f"{figure_name(ds, exp)}.png", dpi=dpi)
    return written
