"""Per-dataset presets: the middle layer of `resolve_config` (defaults <- preset <- CLI).

Names (`python -m train_head presets` lists them all):

    aqa7, aqa7/<class>                 theta 100 (scores normalised to [0, 100] per class), head core
    mtl_aqa                            theta 100, head core (no difficulty)
    mtl_aqa_dd                         theta 30, head core_dd (exemplars of the same difficulty,
                                       completeness targets)
    jigsaws, jigsaws/<task>,           theta 30 (GRS 6..30), protocol 4fold; fold ids 4fold 0-3,
    jigsaws/<task>/<protocol>/<fold>   loso 1-5, louo B-I
    synthetic                          the demo dataset (AQA-7 layout, class `diving`), theta 100
    csv                                your own data; theta 100 - set theta to your score range
    mtl_aqa/usdl                       head usdl, theta 104.5: its bins span [0, theta] and MTL-AQA's
                                       final scores reach 104.5 (the highest in its annotations)

Reference schedules (`<preset>/reference`): the official CoRe code's batching per dataset, for
comparisons with it. MTL-AQA (`mtl_aqa/reference`, `mtl_aqa_dd/reference`): 1 pair per step,
gradients accumulated over 2 steps (`batch_size=1, grad_accum=2`); AQA-7 (`aqa7/reference`,
`aqa7/<class>/reference`): 2 pairs per step over 2 steps (`batch_size=2, grad_accum=2`). Everything
else (Adam, lr 1e-3, 200 epochs, theta, depth) is as in the plain preset. Our default on cached
features is 32 pairs per step without accumulation: 16x (MTL-AQA) or 8x (AQA-7) fewer, larger
optimiser steps per epoch, each averaging the gradient of more pairs; an epoch still sees every
training video once as a query. On cached features a reference-schedule epoch takes far longer
(one optimiser update per 2 pairs).

`default_preset` picks `mtl_aqa_dd` for every dd head on MTL-AQA (core_dd, mlp_dd, musdl) and
`mtl_aqa/usdl` for usdl.

A preset only holds the values that differ from the RunConfig defaults (see config.py); every value
can still be overridden on the command line (`--set key=value`).
"""
from __future__ import annotations

from typing import Any

from train_head.config import ConfigError

AQA7_CLASSES = ("diving", "gym_vault", "ski_big_air", "snowboard_big_air", "sync_diving_3m",
                "sync_diving_10m")
JIGSAWS_TASKS = ("Suturing", "Needle_Passing", "Knot_Tying")
# the official CoRe code's batching: pairs per step and steps per optimiser update
REFERENCE_SCHEDULE = {"mtl_aqa": {"batch_size": 1, "grad_accum": 2}, "aqa7": {"batch_size": 2, "grad_accum": 2}}
MTL_AQA_MAX_SCORE = 104.5     # the highest final score in MTL-AQA's annotations (data/meta)
JIGSAWS_FOLDS = {
    "4fold": ("0", "1", "2", "3"),
    "loso": ("1", "2", "3", "4", "5"),
    "louo": ("B", "C", "D", "E", "F", "G", "H", "I"),
}


def _build_presets() -> dict[str, dict[str, Any]]:
    p: dict[str, dict[str, Any]] = {}
    p["aqa7"] = {"dataset": "aqa7", "theta": 100.0, "head": "core"}
    for c in AQA7_CLASSES:
        p[f"aqa7/{c}"] = {**p["aqa7"], "cls": c}
    p["mtl_aqa"] = {"dataset": "mtl_aqa", "theta": 100.0, "head": "core"}
    p["mtl_aqa_dd"] = {"dataset": "mtl_aqa", "theta": 30.0, "head": "core_dd"}
    p["jigsaws"] = {"dataset": "jigsaws", "theta": 30.0, "head": "core", "protocol": "4fold"}
    for t in JIGSAWS_TASKS:
        p[f"jigsaws/{t}"] = {**p["jigsaws"], "cls": t}
        for proto, folds in JIGSAWS_FOLDS.items():
            for f in folds:
                p[f"jigsaws/{t}/{proto}/{f}"] = {**p["jigsaws"], "cls": t, "protocol": proto, "fold": f}
    p["synthetic"] = {"dataset": "synthetic", "theta": 100.0, "head": "core"}
    p["csv"] = {"dataset": "csv", "theta": 100.0, "head": "core"}
    # FineDiving (docs/FINEDIVING.md): training dive scores lie in 0..114.8; completeness <= 30 by the rules
    p["finediving"] = {"dataset": "finediving", "theta": 115.0, "head": "core"}
    p["finediving_dd"] = {"dataset": "finediving", "theta": 30.0, "head": "core_dd"}
    p["mtl_aqa/usdl"] = {**p["mtl_aqa"], "theta": MTL_AQA_MAX_SCORE, "head": "usdl"}
    for base, sched in ([("mtl_aqa", REFERENCE_SCHEDULE["mtl_aqa"]), ("mtl_aqa_dd", REFERENCE_SCHEDULE["mtl_aqa"]),
                         ("aqa7", REFERENCE_SCHEDULE["aqa7"])]
                        + [(f"aqa7/{c}", REFERENCE_SCHEDULE["aqa7"]) for c in AQA7_CLASSES]):
        p[f"{base}/reference"] = {**p[base], **sched}
    return p


PRESETS: dict[str, dict[str, Any]] = _build_presets()


def get_preset(name: str) -> dict[str, Any]:
    try:
        return dict(PRESETS[name])
    except KeyError:
        tops = sorted(k for k in PRESETS if k.count("/") == 0)
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(tops)} "
                          "(plus aqa7/<class>, jigsaws/<task>[/<protocol>/<fold>], mtl_aqa/usdl and the "
                          "reference schedules mtl_aqa/reference, mtl_aqa_dd/reference, "
                          "aqa7[/<class>]/reference)") from None


def default_preset(dataset: str | None, head: str | None = None) -> str | None:
    """The preset to use when the user names only a dataset (and maybe a head): MTL-AQA with a dd
    head (core_dd, mlp_dd, musdl) -> mtl_aqa_dd (FineDiving: finediving_dd), with usdl -> mtl_aqa/usdl;
    unknown datasets -> no preset
    (RunConfig defaults)."""
    from train_head.heads import HEADS

    if dataset is None:
        return None
    if head is not None:
        if dataset == "mtl_aqa" and head == "usdl":
            return "mtl_aqa/usdl"
        if f"{dataset}_dd" in PRESETS and (HEADS[head].dd if head in HEADS else head.endswith("_dd")):
            return f"{dataset}_dd"          # mtl_aqa_dd, finediving_dd
    return dataset if dataset in PRESETS else None
