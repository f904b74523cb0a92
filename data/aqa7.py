"""AQA-7 reader (`get_dataset("aqa7", root, cls="all")`).

Layout (docs/METHOD.md §8): frames `<root>/<class>-out/<idx:03d>/img_<i:05d>.jpg`, i = 1..103; splits
`<root>/Split_4/split_4_train_list.mat` (key `consolidated_train_list`) and `split_4_test_list.mat`
(key `consolidated_test_list`), rows `[class_idx (1-6), sample_idx, score]`.

- If `<root>/Split_4/` lacks the two files, the copies shipped in `data/meta/consolidated_{train,test}_list.mat`
  are used (logged). Those copies hold the same rows with scores x 100.
- Score scale: the dataset's own files hold unscaled scores, the redistributed copies scores x 100. The scale
  is detected per file: unscaled if every score lies within its class range (docs/METHOD.md §3), x 100 if
  every score / 100 does; anything else is a DataError naming the row. The detected scale is kept in
  `self.score_scale` ({"train": 1 or 100, "test": ...}) and logged.
- Sample.score = 100 * (raw - lo) / (hi - lo) with the class range; Sample.extra has `raw_score` (unscaled),
  `class_idx`, `sample_idx`. video_id = "<class>/<idx:03d>", e.g. "diving/001".
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .base import DataError, Dataset, META_DIR, Sample, read_images

log = logging.getLogger(__name__)

CLASSES = ("diving", "gym_vault", "ski_big_air", "snowboard_big_air", "sync_diving_3m", "sync_diving_10m")
SCORE_RANGES = {
    "diving": (21.6, 102.6), "gym_vault": (12.3, 16.87), "ski_big_air": (8.0, 50.0),
    "snowboard_big_air": (8.0, 50.0), "sync_diving_3m": (46.2, 104.88), "sync_diving_10m": (49.8, 99.36),
}
SPLIT_FILES = {"train": ("split_4_train_list.mat", "consolidated_train_list"),
               "test": ("split_4_test_list.mat", "consolidated_test_list")}
META_FILES = {"train": "consolidated_train_list.mat", "test": "consolidated_test_list.mat"}
_TOL = 1e-6


def _in_range(raw: np.ndarray, cls_idx: np.ndarray) -> np.ndarray:
    lo = np.array([SCORE_RANGES[CLASSES[c - 1]][0] for c in cls_idx])
    hi = np.array([SCORE_RANGES[CLASSES[c - 1]][1] for c in cls_idx])
    return (raw >= lo - _TOL * hi) & (raw <= hi + _TOL * hi)


def read_split_mat(path: Path, key: str) -> tuple[np.ndarray, int]:
    """Rows [class_idx, sample_idx, raw unscaled score] and the detected scale (1 or 100)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:
        raise DataError(f"{path}: not a readable .mat file ({exc})") from None
    if key not in mat:
        keys = [k for k in mat if not k.startswith("__")]
        raise DataError(f"{path}: key {key!r} not found (keys: {keys})")
    rows = np.asarray(mat[key], dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] < 3:
        raise DataError(f"{path}: {key} must be rows of [class_idx, sample_idx, score], got shape {rows.shape}")
    rows = rows[:, :3]
    for r, (c, i, s) in enumerate(rows):
        if not np.isfinite([c, i, s]).all():
            raise DataError(f"{path}: row {r} {rows[r].tolist()} has a NaN/inf entry")
        if c != int(c) or int(c) not in range(1, len(CLASSES) + 1):
            raise DataError(f"{path}: row {r}: class index {c} is not one of 1..{len(CLASSES)}")
        if i != int(i) or i < 1:
            raise DataError(f"{path}: row {r}: sample index {i} is not a positive integer")
    cls_idx = rows[:, 0].astype(int)
    if _in_range(rows[:, 2], cls_idx).all():
        scale = 1
    elif _in_range(rows[:, 2] / 100.0, cls_idx).all():
        scale = 100
    else:
        ok1 = _in_range(rows[:, 2], cls_idx)
        ok100 = _in_range(rows[:, 2] / 100.0, cls_idx)
        # name the first row that breaks the scale most rows follow
        bad = np.flatnonzero(~ok100 if ok100.sum() > ok1.sum() else ~ok1)[0]
        c = CLASSES[cls_idx[bad] - 1]
        raise DataError(f"{path}: row {bad} (class {c}, sample {int(rows[bad, 1])}): score {rows[bad, 2]} is "
                        f"outside the class range {SCORE_RANGES[c]} (unscaled) and its x100 form; "
                        "fix the score or drop the row")
    out = rows.copy()
    out[:, 2] /= scale
    return out, scale


class AQA7(Dataset):
    name = "aqa7"
    n_frames = 103

    def __init__(self, root, cls: str = "all"):
        super().__init__(root)
        if cls != "all" and cls not in CLASSES:
            raise DataError(f"aqa7: unknown class {cls!r}; choose one of {CLASSES} or 'all'")
        self.cls = cls
        self.score_scale: dict[str, int] = {}
        self.split_files: dict[str, Path] = {}

    def _split_path(self, split: str) -> tuple[Path, str]:
        fname, key = SPLIT_FILES[split]
        own = self.root / "Split_4" / fname
        if own.is_file():
            return own, key
        shipped = META_DIR / META_FILES[split]
        log.info("aqa7: %s not found; using the shipped copy %s", own, shipped)
        return shipped, key

    def _load_samples(self):
        if not self.root.is_dir():
            raise DataError(f"{self.root}: AQA-7 root folder not found")
        out: list[Sample] = []
        for split in ("train", "test"):
            path, key = self._split_path(split)
            rows, scale = read_split_mat(path, key)
            self.score_scale[split] = scale
            self.split_files[split] = path
            log.info("aqa7: %s scores in %s are %s", split, path, "unscaled" if scale == 1 else "x100")
            seen = set()
            for c, i, raw in rows:
                name = CLASSES[int(c) - 1]
                if self.cls != "all" and name != self.cls:
                    continue
                vid = f"{name}/{int(i):03d}"
                if vid in seen:
                    raise DataError(f"{path}: sample {vid} appears twice in the {split} list")
                seen.add(vid)
                lo, hi = SCORE_RANGES[name]
                out.append(Sample(
                    video_id=vid, source=str(self.root / f"{name}-out" / f"{int(i):03d}"),
                    score=float(100.0 * (raw - lo) / (hi - lo)), difficulty=None, split=split, cls=name,
                    folds={}, extra={"raw_score": float(raw), "class_idx": int(c), "sample_idx": int(i)}))
        return out

    def label_source(self, sample: Sample, field: str = "score") -> str:
        return str(self.split_files.get(sample.split, self.root))

    def _read_window(self, sample: Sample, max_shift: int) -> np.ndarray:
        folder = Path(sample.source)
        if not folder.is_dir():
            raise DataError(f"{folder}: frame folder of {sample.video_id} not found")
        return read_images([folder / f"img_{i:05d}.jpg" for i in range(1, self.n_frames + 1)])
