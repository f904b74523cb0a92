"""Your own data: `get_dataset("csv", root="my/scores.csv")`.

The CSV has a header with `video` and `score` and optionally `difficulty`, `split` (train/test) and
`class`. `video` is a path relative to the CSV's folder (absolute paths also work) to a video file or a
folder of frames. `root` is the CSV file, or a folder holding exactly one `*.csv` (other than split files).

Without a `split` column, a seeded, score-stratified split is made once and SAVED beside the CSV as
`<csv>.split.csv` (columns video,split), then reused on later runs, so every run and every engineer sees
the same split. Stratification: scores are cut into `n_bins` quantile bins (at most len/4 bins), and in
each bin round(test_fraction * n) randomly chosen videos go to test (numpy Generator seeded by `seed`).
A split file that does not list exactly the CSV's videos is a DataError (delete it to make a new one).

Frames: `n_frames` (default 103) sampled evenly from the video or frame folder (`base.even_indices`).
video_id = the `video` entry as written; cls = the `class` entry or "csv"; no shift protocol.
"""
from __future__ import annotations

import csv as _csv
import logging
from pathlib import Path

import numpy as np

from .base import DataError, Dataset, Sample, check_score, read_even

log = logging.getLogger(__name__)

SPLIT_SUFFIX = ".split.csv"


def stratified_split(scores: np.ndarray, test_fraction: float, seed: int, n_bins: int = 5) -> np.ndarray:
    """Array of "train"/"test" per score: random within quantile bins of the score, seeded."""
    n = len(scores)
    rng = np.random.default_rng(seed)
    n_bins = max(1, min(n_bins, n // 4))
    order = np.argsort(scores, kind="stable")
    split = np.array(["train"] * n, dtype=object)
    for b in np.array_split(order, n_bins):
        k = int(round(test_fraction * len(b)))
        if k:
            split[rng.choice(b, size=k, replace=False)] = "test"
    return split


class CSVDataset(Dataset):
    name = "csv"

    def __init__(self, root, n_frames: int = 103, test_fraction: float = 0.25, seed: int = 0):
        root = Path(root)
        if root.is_dir():
            found = sorted(p for p in root.glob("*.csv") if not p.name.endswith(SPLIT_SUFFIX))
            if len(found) != 1:
                raise DataError(f"{root}: expected exactly one .csv file, found {[p.name for p in found]}; "
                                "pass the CSV file itself as root")
            root = found[0]
        super().__init__(root)
        self.csv_path = root
        self.n_frames = int(n_frames)
        if self.n_frames < 16:
            raise DataError(f"csv: n_frames must be >= 16, got {n_frames}")
        if not 0 < test_fraction < 1:
            raise DataError(f"csv: test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction = float(test_fraction)
        self.seed = int(seed)
        self.split_path = root.with_name(root.name + SPLIT_SUFFIX)

    def _read_rows(self) -> list[dict]:
        p = self.csv_path
        if not p.is_file():
            raise DataError(f"{p}: CSV file not found")
        try:
            with p.open(newline="", encoding="utf-8-sig") as fh:
                reader = _csv.DictReader(fh)
                fields = [f.strip() for f in (reader.fieldnames or [])]
                rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
        except (OSError, UnicodeDecodeError, _csv.Error) as exc:
            raise DataError(f"{p}: cannot read the CSV ({exc})") from None
        for col in ("video", "score"):
            if col not in fields:
                raise DataError(f"{p}: missing column {col!r} (columns: {fields}); "
                                "expected video,score[,difficulty][,split][,class]")
        if not rows:
            raise DataError(f"{p}: no rows")
        self._fields = fields
        return rows

    def _saved_split(self, videos: list[str], scores: np.ndarray) -> list[str]:
        if self.split_path.is_file():
            with self.split_path.open(newline="", encoding="utf-8") as fh:
                saved = {r["video"]: r["split"] for r in _csv.DictReader(fh)}
            if set(saved) != set(videos):
                raise DataError(f"{self.split_path}: the saved split does not list exactly the videos of "
                                f"{self.csv_path}; delete it to make a new split")
            log.info("csv: reusing the split saved in %s", self.split_path)
            return [saved[v] for v in videos]
        split = list(stratified_split(scores, self.test_fraction, self.seed))
        with self.split_path.open("w", newline="", encoding="utf-8") as fh:
            w = _csv.writer(fh)
            w.writerow(["video", "split"])
            w.writerows(zip(videos, split))
        log.info("csv: no split column; wrote a seeded stratified split (seed %d) to %s", self.seed, self.split_path)
        return split

    def _load_samples(self):
        rows = self._read_rows()
        base = self.csv_path.parent
        videos, scores, diffs = [], [], []
        for i, r in enumerate(rows, 2):  # line numbers as an editor shows them (header = 1)
            where = f"{self.csv_path} line {i}"
            v = r.get("video", "")
            if not v:
                raise DataError(f"{where}: empty video entry")
            if v in videos:
                raise DataError(f"{where}: video {v!r} listed twice")
            videos.append(v)
            scores.append(check_score(r.get("score", ""), f"{where} ({v})"))
            d = r.get("difficulty", "")
            diffs.append(check_score(d, f"{where} ({v}) difficulty", 0.0) if d else None)
        scores_arr = np.asarray(scores)
        if "split" in self._fields:
            splits = [r["split"].lower() for r in rows]
            for i, s in enumerate(splits):
                if s not in ("train", "test"):
                    raise DataError(f"{self.csv_path} line {i + 2}: split {rows[i]['split']!r} must be train or test")
        else:
            splits = self._saved_split(videos, scores_arr)
        out = []
        for r, v, s, d, sp in zip(rows, videos, scores, diffs, splits):
            src = Path(v) if Path(v).is_absolute() else base / v
            out.append(Sample(video_id=v, source=str(src), score=s, difficulty=d, split=sp,
                              cls=r.get("class") or self.name, folds={}, extra={}))
        return out

    def _read_window(self, sample: Sample, max_shift: int) -> np.ndarray:
        return read_even(Path(sample.source), self.n_frames)
