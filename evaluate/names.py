"""Proper names for tables and figures: datasets, classes/tasks and methods as the papers write them.

    from evaluate.names import dataset_name, class_name, method_name
    method_name("core_dd")           # "CoRe w/ DD"
    method_name("core+finetune")     # "CoRe [finetune]"  (a sweep or finetune tag stays visible)
    dataset_name("aqa7")             # "AQA-7"
    class_name("aqa7", "gym_vault")  # "Gym vault"

Unknown names are returned unchanged (a new head or dataset still shows, under its own id).

Numbers have one format in every table (markdown, LaTeX, figure labels): rho-type values (rho, its std,
its interval, published rho) with 4 decimals, RL2x100 and L2 with 3 decimals; an undefined value (NaN
from the run) is "n/a", a value that does not exist (no published number, one seed: no std) is "–".
"""
from __future__ import annotations

import math

# our head id -> the method's name in the papers (Yu et al., ICCV 2021, Tables 1-2; Tang et al., CVPR 2020)
METHODS = {
    "mlp": "I3D+MLP",
    "mlp_dd": "I3D+MLP w/ DD",
    "core": "CoRe",
    "core_dd": "CoRe w/ DD",
    "contrastive_mlp": "contrastive MLP",
    "usdl": "USDL",
    "musdl": "MUSDL",
}

DATASETS = {
    "aqa7": "AQA-7",
    "mtl_aqa": "MTL-AQA",
    "jigsaws": "JIGSAWS",
    "finediving": "FineDiving",
    "synthetic": "synthetic demo",
}

CLASSES = {
    # AQA-7 (the class folder names of the dataset)
    "diving": "Diving",
    "gym_vault": "Gym vault",
    "ski_big_air": "Ski big air",
    "snowboard_big_air": "Snowboard big air",
    "sync_diving_3m": "Sync. diving 3m",
    "sync_diving_10m": "Sync. diving 10m",
    # JIGSAWS tasks
    "Suturing": "Suturing",
    "Needle_Passing": "Needle passing",
    "Knot_Tying": "Knot tying",
}


RHO_DECIMALS = 4
RL2_DECIMALS = 3
NA, NONE = "n/a", "–"


def _isnan(x) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def fmt_rho(x) -> str:
    return NA if _isnan(x) else f"{float(x):.{RHO_DECIMALS}f}"


def fmt_rl2(x) -> str:
    """RL2x100 (and L2): 3 decimals."""
    return NA if _isnan(x) else f"{float(x):.{RL2_DECIMALS}f}"


def fmt_pm(mean, std) -> str:
    """'0.8519 ± 0.0123'; the mean alone when there is no std (one seed)."""
    return fmt_rho(mean) if _isnan(std) else f"{fmt_rho(mean)} ± {fmt_rho(std)}"


def fmt_ci(lo, hi) -> str:
    return NONE if _isnan(lo) or _isnan(hi) else f"[{fmt_rho(lo)}, {fmt_rho(hi)}]"


def split_head(head: str) -> tuple[str, str]:
    """'core+finetune' -> ('core', 'finetune'); 'mlp' -> ('mlp', '')."""
    base, _, tag = str(head).partition("+")
    return base, tag


def method_name(head: str) -> str:
    """The paper name of a head, with its tag (sweep point, finetune) in brackets: 'CoRe w/ DD [lr3]'."""
    base, tag = split_head(head)
    name = METHODS.get(base, base)
    return f"{name} [{tag}]" if tag else name


def dataset_name(dataset: str) -> str:
    """'aqa7' -> 'AQA-7'; a CSV dataset's label 'csv-<stem>-<hash8>' -> 'CSV <stem>'."""
    d = str(dataset)
    if d in DATASETS:
        return DATASETS[d]
    if d.startswith("csv-"):
        stem = d[4:].rsplit("-", 1)[0] if d.count("-") >= 2 else d[4:]
        return f"CSV {stem}"
    return "CSV" if d == "csv" else d


def class_name(dataset: str, label: str) -> str:
    """A class/fold label of the tables in words: 'gym_vault' -> 'Gym vault', 'Knot_Tying 4fold fold 1' ->
    'Knot tying, 4fold fold 1'; the dataset's own name (one-class datasets) -> 'all'."""
    label = str(label)
    if label in (dataset, "", "all"):
        return "all"
    if label.startswith("avg"):
        return "Avg. " + label[3:].strip()
    first, _, rest = label.partition(" ")
    name = CLASSES.get(first, first)
    if not rest:
        return name
    if rest.startswith("avg"):
        return f"{name}, avg. {rest[3:].strip()}"
    return f"{name}, {rest}"


def run_title(dataset: str, cls: str | None, head: str, *, fold=None, seed=None) -> str:
    """The title of a run's figure: 'AQA-7 · Diving · CoRe · seed 0'."""
    parts = [dataset_name(dataset)]
    c = class_name(dataset, cls or dataset)
    if c != "all":
        parts.append(c)
    if fold not in (None, ""):
        parts.append(f"fold {fold}")
    parts.append(method_name(head))
    if seed is not None:
        parts.append(f"seed {seed}")
    return " · ".join(parts)
