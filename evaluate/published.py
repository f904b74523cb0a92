"""Published numbers (docs/METHOD.md §5), shown beside ours in their own labelled columns, never mixed in.

All of them come from end-to-end fine-tuned backbones (the papers' setting), not from this project's
cached-feature runs, which freeze I3D and should be expected to score lower; every row says so
(``setting``). RL2 is given x100 as published; NaN where a paper does not report it. Each row names
its source (``source``).

    from evaluate.published import published_table, published_for
    published_table(datasets={"aqa7"})          # pandas DataFrame of the rows
    published_for("mtl_aqa", "mtl_aqa", "core_dd")   # (0.9512, 0.26, "Yu et al., ICCV 2021 (CoRe), Tables 1-2")
"""
from __future__ import annotations

import math

import pandas as pd

from evaluate.names import method_name, split_head

LABEL = "published, end-to-end fine-tuned; not ours"
SETTING = "end-to-end fine-tuned"

AQA7_CLASSES = ("diving", "gym_vault", "ski_big_air", "snowboard_big_air", "sync_diving_3m",
                "sync_diving_10m")
JIGSAWS_TASKS = ("Suturing", "Needle_Passing", "Knot_Tying")

CORE = "Yu et al., ICCV 2021 (CoRe), Tables 1-2"
CORE_PAPER = "Yu et al., ICCV 2021 (CoRe)"
TANG = "Tang et al., CVPR 2020 (USDL/MUSDL)"
BAI = "Bai et al., ECCV 2022 (TPT)"
# The FineDiving paper's results table, transcribed from the Awesome-AQA list (Lyman-Smoker/Awesome-AQA,
# Benchmarks.md, section "FineDiving"); the paper itself could not be opened here to check them.
XU = "Xu et al., CVPR 2022 (FineDiving), via the Awesome-AQA list; not checked against the paper here"
FINEDIVING = "finediving"
AQA7_AVG = "avg (Fisher z, 6 classes)"
JIGSAWS_AVG = "avg (Fisher z, 3 tasks, 4-fold)"

_NAN = math.nan

# (dataset, class-or-average, method, rho, RL2 x100, source, note)
_ROWS: list[tuple[str, str, str, float, float, str, str]] = [
    ("aqa7", AQA7_AVG, "I3D+MLP", 0.7601, 3.20, CORE, ""),
    ("aqa7", AQA7_AVG, "CoRe", 0.8401, 2.12, CORE, "its six per-class values give 0.8433"),
    ("mtl_aqa", "mtl_aqa", "I3D+MLP", 0.9196, 0.465, CORE, ""),
    ("mtl_aqa", "mtl_aqa", "I3D+MLP w/ DD", 0.9381, 0.394, CORE, ""),
    ("mtl_aqa", "mtl_aqa", "CoRe", 0.9341, 0.365, CORE, ""),
    ("mtl_aqa", "mtl_aqa", "CoRe w/ DD", 0.9512, 0.260, CORE, ""),
    ("mtl_aqa", "mtl_aqa", "MUSDL", 0.9273, 0.451, TANG, ""),
    ("mtl_aqa", "mtl_aqa", "TPT", 0.9607, 0.238, BAI, "context"),
    ("mtl_aqa", "mtl_aqa", "HGCN", 0.9463, 0.311, "source not recorded", "context"),
    # FineDiving: "w/o DN" / "w/ DN" as the paper labels its two settings (DN: the dive number). Our heads
    # pair with the w/o DN rows only: our core_dd picks exemplars by difficulty, not by dive number, so
    # nothing published is its counterpart (docs/FINEDIVING.md, "Published numbers").
    ("finediving", FINEDIVING, "USDL", 0.8302, 0.5927, XU, "w/o DN"),
    ("finediving", FINEDIVING, "MUSDL", 0.8427, 0.5733, XU, "w/o DN"),
    ("finediving", FINEDIVING, "CoRe", 0.8631, 0.5565, XU, "w/o DN"),
    ("finediving", FINEDIVING, "TSA", 0.8925, 0.4782, XU, "w/o DN; context"),
    ("finediving", FINEDIVING, "USDL (w/ DN)", 0.8913, 0.3822, XU, "w/ DN"),
    ("finediving", FINEDIVING, "MUSDL (w/ DN)", 0.8978, 0.3704, XU, "w/ DN"),
    ("finediving", FINEDIVING, "CoRe (w/ DN)", 0.9061, 0.3615, XU, "w/ DN"),
    ("finediving", FINEDIVING, "TSA (w/ DN)", 0.9203, 0.3420, XU, "w/ DN; context"),
    ("jigsaws", JIGSAWS_AVG, "MUSDL", 0.70, _NAN, TANG, ""),
    ("jigsaws", JIGSAWS_AVG, "CoRe", 0.85, _NAN, CORE_PAPER, ""),
]

# per-class AQA-7 rho (classes in AQA7_CLASSES order) and the paper's average
_PER_CLASS = {
    "USDL": ((0.8099, 0.7570, 0.6538, 0.7109, 0.9166, 0.8878), 0.8102, TANG),
    "CoRe": ((0.8824, 0.7746, 0.7115, 0.6624, 0.9442, 0.9078), 0.8401, CORE),
    "TPT": ((0.8969, 0.8043, 0.7336, 0.6965, 0.9456, 0.9545), 0.8715, BAI),
}
for _method, (_vals, _avg, _src) in _PER_CLASS.items():
    for _cls, _v in zip(AQA7_CLASSES, _vals):
        _ROWS.append(("aqa7", _cls, _method, _v, _NAN, _src, "per-class rho"))
    if _method != "CoRe":  # CoRe's average is already in the summary rows above
        _ROWS.append(("aqa7", AQA7_AVG, _method, _avg, _NAN, _src, "per-class table"))

COLUMNS = ["dataset", "class/fold", "method", "rho", "RL2x100", "source", "note", "setting"]


def published_table(datasets: set[str] | None = None) -> pd.DataFrame:
    """The reference rows as a DataFrame, restricted to `datasets` when given (and not empty).

    When none of `datasets` has published numbers (e.g. only the synthetic demo), the CoRe paper's own
    rows are returned, so that the file still shows what the paper's setting reaches.
    """
    df = pd.DataFrame([r + (SETTING,) for r in _ROWS], columns=COLUMNS)
    # readable order: dataset, then method (first appearance), then classes in the paper's order, averages last
    methods = {m: i for i, m in enumerate(dict.fromkeys(df["method"]))}
    cls_rank = {c: i for i, c in enumerate(AQA7_CLASSES)}
    key = [(d, methods[m], cls_rank.get(c, len(cls_rank))) for d, m, c in
           zip(df["dataset"], df["method"], df["class/fold"])]
    df = df.iloc[sorted(range(len(df)), key=key.__getitem__)]
    if datasets:
        sub = df[df["dataset"].isin(datasets)]
        df = sub if len(sub) else df[df["source"].str.startswith(CORE_PAPER)]
    return df.reset_index(drop=True)


def _published_label(dataset: str, label: str) -> str | None:
    """Our table's class/fold label -> the published rows' label, or None when nothing published is
    comparable (an AQA-7 average over fewer than 6 classes, a JIGSAWS average other than 3 tasks x 4-fold)."""
    label = str(label)
    if dataset == "aqa7":
        if label.startswith("avg"):
            return AQA7_AVG if "6/6 classes" in label else None
        return label if label in AQA7_CLASSES else None
    if dataset in ("mtl_aqa", FINEDIVING):
        return dataset if label in (dataset, "all", "") else None
    if dataset == "jigsaws":
        ok = label.startswith("avg") and "3 tasks x 4 4fold folds" in label
        return JIGSAWS_AVG if ok else None
    return None


def published_for(dataset: str, label: str, head: str) -> tuple[float, float, str] | None:
    """(rho, RL2x100, source) published for our head's method on this dataset and class/fold, or None.
    A tag (sweep point, finetune) does not change the method: 'core+lr3' compares with CoRe."""
    key = _published_label(dataset, label)
    if key is None:
        return None
    method = method_name(split_head(head)[0])
    for d, c, m, rho, rl2, src, _ in _ROWS:
        if d == dataset and c == key and m == method:
            return rho, rl2, src
    return None
