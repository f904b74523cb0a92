"""The compact result table: one row per (experiment, dataset, class-or-fold, method), built from the long
table (evaluate.tables), printed as markdown with its caption; LaTeX in evaluate.latex.

Columns: Seeds; rho as "mean ± std" over seeds of the val-selected model with its bootstrap 95 %
interval; RL2x100 of the val-selected model; "rho final epoch" (mean ± std of the last epoch's model:
always shown, one column, because with a small validation split the selected epoch is close to a guess);
"rho best epoch on test" only on request (``best_on_test``, labelled "selected on test!"); the published
rho and RL2x100 of the same method, dataset and class/fold in their own columns, each marked with a
letter whose source is named under the table; a note (broken runs, warnings). The selection protocol,
the bootstrap and the backbone setting are stated once, in the caption; a column appears only when the
rows differ in them. Number format: evaluate.names (rho 4 decimals, RL2x100 3 decimals).
"""
from __future__ import annotations

import math
import re

import pandas as pd

from evaluate.names import (NONE, class_name, dataset_name, fmt_ci, fmt_pm, fmt_rho, fmt_rl2)
from evaluate.published import LABEL, published_table
from evaluate.tables import BEST_ON_TEST, FINAL, SELECTED

KEY = ["experiment", "dataset", "class/fold", "head"]
NUMERIC = ["experiment", "dataset", "class/fold", "head", "method", "backbone", "selection", "n_seeds",
           "n_test", "rho", "rho_std", "rho_ci_lo", "rho_ci_hi", "RL2x100", "rho_final", "rho_final_std",
           "RL2x100_final", "rho_best_on_test", "published_rho", "published_RL2x100", "published_source",
           "note"]


_MISMATCH = re.compile(r"^seed (.+?): summary rho \S+ != \S+ from predictions\.csv '(\w+)'$")
_BROKEN = re.compile(r"^seed (.+?) broken: (.+)$")


def _short_notes(*notes: str) -> str:
    """The notes worth a reader's eye in a compact row, per-seed notes of one kind merged ("... (seeds 0,
    1)"); the member list of an average is in its label, the numbers of a mismatch in the long table."""
    parts: list[str] = []
    grouped: dict[str, list[str]] = {}
    for n in notes:
        for p in str(n or "").split("; "):
            m, b = _MISMATCH.match(p), _BROKEN.match(p)
            if m:
                grouped.setdefault(f"summary.json rho differs from predictions.csv '{m[2]}'", []).append(m[1])
            elif b:
                grouped.setdefault(f"broken: {b[2]}", []).append(b[1])
            elif p and not p.startswith("Fisher z of") and p not in parts:
                parts.append(p)
    for text, seeds in grouped.items():
        seeds = list(dict.fromkeys(seeds))
        parts.append(f"{text} (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})")
    return "; ".join(parts)


def compact_frame(long: pd.DataFrame, *, best_on_test: bool = False) -> pd.DataFrame:
    """The compact table as numbers (NUMERIC columns), in the long table's row order."""
    rows = []
    if not len(long):
        return pd.DataFrame(columns=NUMERIC)
    sel = long[long["protocol"] == SELECTED]
    fin = long[long["protocol"] == FINAL].set_index(KEY)
    best = long[long["protocol"] == BEST_ON_TEST].set_index(KEY)
    plain = sel[~sel["class/fold"].str.contains("avg")]
    for _, r in sel.iterrows():
        k = tuple(r[c] for c in KEY)
        n_seeds = int(r["n_runs"])
        if "avg" in r["class/fold"]:       # an average's runs are seeds x members: show the seeds
            same = plain[(plain["experiment"] == r["experiment"]) & (plain["dataset"] == r["dataset"])
                         & (plain["head"] == r["head"])]
            n_seeds = int(same["n_runs"].min()) if len(same) else n_seeds
        f = fin.loc[k] if k in fin.index else None
        b = best.loc[k] if k in best.index else None
        rows.append({
            **{c: r[c] for c in ("experiment", "dataset", "class/fold", "head", "method", "backbone", "selection")},
            "n_seeds": n_seeds, "n_test": int(r["n_test"]),
            "rho": r["rho"], "rho_std": r["rho_std"], "rho_ci_lo": r["rho_ci_lo"], "rho_ci_hi": r["rho_ci_hi"],
            "RL2x100": r["RL2x100"],
            "rho_final": f["rho"] if f is not None else math.nan,
            "rho_final_std": f["rho_std"] if f is not None else math.nan,
            "RL2x100_final": f["RL2x100"] if f is not None else math.nan,
            "rho_best_on_test": b["rho"] if b is not None else math.nan,
            "published_rho": r["published_rho"], "published_RL2x100": r["published_RL2x100"],
            "published_source": r["published_source"],
            "note": _short_notes(r["note"], f["note"] if f is not None else ""),
        })
    out = pd.DataFrame(rows, columns=NUMERIC)
    if not best_on_test:
        out = out.drop(columns="rho_best_on_test")
    return out


def sources(compact: pd.DataFrame) -> dict[str, str]:
    """Published source -> footnote letter, in order of first use."""
    used = [s for s in compact.get("published_source", []) if isinstance(s, str) and s]
    return {s: "abcdefghijklmnopqrstuvwxyz"[i] for i, s in enumerate(dict.fromkeys(used))}


def display(compact: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of strings (unicode ρ, ±, ×, –; evaluate.latex turns them into macros)."""
    rho, times = "ρ", "×"
    letters = sources(compact)
    show_exp = bool((compact["experiment"] != "").any())
    show_backbone = compact["backbone"].nunique() > 1
    show_sel = compact["selection"].nunique() > 1
    show_pub = bool(compact["published_source"].astype(bool).any())
    show_best = "rho_best_on_test" in compact.columns
    show_note = bool((compact["note"] != "").any())
    header = (["Experiment"] if show_exp else []) + ["Dataset", "Class/fold", "Method"] \
        + (["Backbone"] if show_backbone else []) + (["Selection"] if show_sel else []) \
        + ["Seeds", f"{rho} (mean ± std)", f"{rho} 95% CI", f"RL2{times}100", f"{rho} final epoch"] \
        + ([f"{rho} best epoch on test (selected on test!)"] if show_best else []) \
        + ([f"Published {rho}", f"Published RL2{times}100"] if show_pub else []) + (["Note"] if show_note else [])
    rows = []
    for _, r in compact.iterrows():
        mark = f" [{letters[r['published_source']]}]" if r["published_source"] in letters else ""
        pub = [fmt_rho(r["published_rho"]) + mark if mark else NONE,
               fmt_rl2(r["published_RL2x100"]) if mark and not math.isnan(r["published_RL2x100"]) else NONE]
        row = ([r["experiment"]] if show_exp else []) \
            + [dataset_name(r["dataset"]), class_name(r["dataset"], r["class/fold"]), r["method"]] \
            + ([r["backbone"]] if show_backbone else []) + ([r["selection"]] if show_sel else []) \
            + [str(r["n_seeds"]), fmt_pm(r["rho"], r["rho_std"]), fmt_ci(r["rho_ci_lo"], r["rho_ci_hi"]),
               fmt_rl2(r["RL2x100"]), fmt_pm(r["rho_final"], r["rho_final_std"])] \
            + ([fmt_rho(r["rho_best_on_test"])] if show_best else []) + (pub if show_pub else []) \
            + ([r["note"]] if show_note else [])
        rows.append([str(x) for x in row])
    return header, rows


def caption(compact: pd.DataFrame, *, n_boot: int) -> str:
    """The one place where the protocol is stated (plain text; LaTeX escapes it)."""
    sel = list(dict.fromkeys(compact["selection"])) if len(compact) else []
    backbones = set(compact["backbone"]) if len(compact) else set()
    text = ["Spearman ρ on the test split: mean ± sample std over seeds (no std for one seed), and the "
            f"95% percentile bootstrap interval of that mean over test videos ({n_boot} draws); RL2×100 "
            "is the mean over seeds. Averages over classes or folds combine ρ by Fisher z."]
    if len(sel) == 1:
        text.append(f"Model selection (val-selected): {sel[0]}; the final-epoch column is the last "
                    "epoch's model.")
    else:
        text.append("Model selection differs between rows (column Selection); the final-epoch column is "
                    "the last epoch's model.")
    if backbones == {"frozen"}:
        text.append("Ours: I3D (Kinetics-400) backbone frozen, features cached, only the head trained.")
    else:
        text.append("Ours: I3D (Kinetics-400) backbone frozen with cached features, or fine-tuned end to "
                    "end where the Backbone column says so.")
    if compact["published_source"].astype(bool).any() if len(compact) else False:
        text.append("Published numbers are end-to-end fine-tuned (not ours), so frozen-backbone results "
                    "are expected to be lower; their sources are listed below the table.")
    if "rho_best_on_test" in compact.columns:
        text.append("'Best epoch on test' picks the epoch on the test set itself: optimistic by "
                    "construction, shown only for comparison with the reference implementation.")
    return " ".join(text)


def source_lines(compact: pd.DataFrame) -> list[str]:
    return [f"[{letter}] {src} ({LABEL})" for src, letter in sources(compact).items()]


def no_published_line(compact: pd.DataFrame) -> str | None:
    """For tables with no comparable published number (e.g. the demo): say so, once."""
    if not len(compact) or compact["published_source"].astype(bool).any():
        return None
    names = ", ".join(dict.fromkeys(dataset_name(d) for d in compact["dataset"]))
    return (f"Published numbers: none for these rows ({names}); results_published.csv lists the published "
            "numbers of the CoRe paper with their sources (end-to-end fine-tuned, not ours).")


def to_markdown(compact: pd.DataFrame, *, n_boot: int, reference: bool = True) -> str:
    """Caption, table, sources (and, with `reference`, a line when no published number fits)."""
    if not len(compact):
        return "(no complete runs)"
    header, rows = display(compact)
    align = ["left" if h in ("Experiment", "Dataset", "Class/fold", "Method", "Backbone", "Selection", "Note")
             else "right" for h in header]
    md = pd.DataFrame(rows, columns=header).to_markdown(index=False, disable_numparse=True, colalign=align)
    extra = source_lines(compact) + [x for x in (no_published_line(compact),) if x and reference]
    return "\n\n".join([caption(compact, n_boot=n_boot), md] + (["\n".join(extra)] if extra else []))


def long_markdown(df: pd.DataFrame) -> str:
    """The long table (every protocol a row, L2, n_test, every note): `evaluate table --long`."""
    if not len(df):
        return "(no complete runs)"
    out = pd.DataFrame({
        "experiment": df["experiment"], "dataset": df["dataset"], "class/fold": df["class/fold"],
        "head": df["head"], "protocol": df["protocol"],
        "rho": [fmt_rho(x) for x in df["rho"]],
        "rho std": [NONE if math.isnan(x) else fmt_rho(x) for x in df["rho_std"]],
        "rho 95% CI": [fmt_ci(a, b) for a, b in zip(df["rho_ci_lo"], df["rho_ci_hi"])],
        "L2": [fmt_rl2(x) for x in df["L2"]], "RL2x100": [fmt_rl2(x) for x in df["RL2x100"]],
        "n_runs": df["n_runs"], "n_test": df["n_test"], "note": df["note"]})
    for col in ("experiment", "note"):
        if not (out[col] != "").any():
            out = out.drop(columns=col)
    return out.to_markdown(index=False, disable_numparse=True)


def reference_frame(df: pd.DataFrame | None) -> pd.DataFrame:
    """The published rows of the table's datasets (results_published.csv)."""
    return published_table(set(df["dataset"]) if df is not None and len(df) else None)


def skipped_text(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    return "Not in the table (incomplete or unreadable):\n" + "\n".join(f"- {p}: {why}" for p, why in skipped)
