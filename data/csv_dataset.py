"""Your own data: `get_dataset("csv", root="my/scores.csv")`.

The CSV has a header with `video` and `score` and optionally `difficulty`, `split` (train/test) and
`class`. Column names and split values are matched without regard to case (`Split`, `TEST`); a column
whose name is close to one of these but not equal (`splits`, `dificulty`) is a DataError naming it, so that
a misspelt split column never silently becomes a random split; other columns are ignored. `video` is a path relative to the CSV's folder (absolute paths also work) to a video file or a
folder of frames. `root` is the CSV file, or a folder holding exactly one `*.csv` (other than split files).

Without a `split` column, a seeded, score-stratified split is made once and SAVED beside the CSV as
`<csv>.split.csv` (columns video,split), then reused on later runs, so every run and every engineer sees
the same split. Stratification: scores are cut into `n_bins` quantile bins (at most len/4 bins), and in
each bin round(test_fraction * n) randomly chosen videos go to test (numpy Generator seeded by `seed`).
A split file that does not list exactly the CSV's videos, or has a split other than train/test, is a
DataError naming the file and line (delete it to make a new one).

Frames (docs/CSV_DATASET.md): a video (PyAV) or frame folder of ANY length n >= 1 becomes the window of
T = `n_frames` (default 103) frames by one rule, uniform index sampling: frame i of the window is source
frame floor((i + 0.5) * n / T) (`base.even_indices`). A longer video is sampled evenly over its whole
length; a shorter one repeats each frame about T/n times, in order (played slower), instead of being
refused. Notices, once per video (`_notice`): a video longer or shorter than T says how it was sampled;
a portrait frame, or a landscape one whose width/height is outside `USUAL_ASPECT` (4:3 .. 16:9 with a
margin), says how it is resized (exactly, `transforms.describe_resize`, when `frame_cfg` is set, as the
extraction may do; else the rule of both resize modes in words). The first video of each kind in a process is noted at WARNING with a
hint that the others follow at INFO (-v), so a folder of long videos gives one warning, not one per
video. A video that cannot be used (missing, unreadable, no frames) is a DataError saying what to do.
video_id = the `video` entry as written; cls = the `class` entry or "csv"; no shift protocol.
"""
from __future__ import annotations

import csv as _csv
import difflib
import logging
import os
from pathlib import Path

import numpy as np

from .base import (DataError, Dataset, Sample, check_score, even_indices, list_frames, read_images,
                   sample_video)

log = logging.getLogger(__name__)

SPLIT_SUFFIX = ".split.csv"
COLUMNS = ("video", "score", "difficulty", "split", "class")
SPLIT_VALUES = ("train", "test")
_EXPECTED = "video,score[,difficulty][,split][,class] (any case)"
# width / height of the usual landscape frame (4:3 = 1.33 .. 16:9 = 1.78, with a margin): outside it, or a
# portrait frame, the notice says how the frame is resized
USUAL_ASPECT = (1.25, 1.85)
# how frames are resized when the frame settings are not known here (frame_cfg None)
_RESIZE_RULE = ("resized by the extraction's frame settings: with --resize-mode nearest (the default) stretched "
                "to --frame-size (default 455x256, height x width) whatever their aspect ratio; with "
                "bilinear_short_side scaled keeping it, the centre crop then cutting the long side")
_FIX = ("re-encode it (e.g. ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4) or give a folder of its frames, "
        "or remove its row")


def read_table(path: Path, columns: tuple[str, ...], required: tuple[str, ...]) -> list[dict]:
    """Rows of a CSV file as dicts keyed by the names in `columns` (header names matched without regard to
    case and surrounding spaces), plus "_line" (the line number an editor shows). Blank lines are skipped.

    DataError naming the file (and line or column) for: an unreadable file, a missing required column, a
    column given twice, a column whose name is a near miss of one in `columns` (e.g. "splits"), a row with
    more fields than the header. Columns far from every expected name are ignored (logged)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = _csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file; expected a header {','.join(columns)}")
            index: dict[str, int] = {}
            for i, name in enumerate(header):
                key = name.strip().lower()
                if not key:
                    continue
                if key in columns:
                    if key in index:
                        raise DataError(f"{path}: column {key!r} appears twice in the header "
                                        f"({header[index[key]].strip()!r} and {name.strip()!r})")
                    index[key] = i
                    continue
                near = difflib.get_close_matches(key, columns, n=1, cutoff=0.75)
                if near:
                    raise DataError(f"{path}: unknown column {name.strip()!r}; did you mean {near[0]!r}? "
                                    f"Expected columns: {', '.join(columns)} (any case)")
                log.info("%s: ignoring column %r", path, name.strip())
            missing = [c for c in required if c not in index]
            if missing:
                raise DataError(f"{path}: missing column {missing[0]!r} (columns: {[h.strip() for h in header]}); "
                                f"expected {', '.join(columns)} (any case)")
            rows = []
            for fields in reader:
                if not any(f.strip() for f in fields):
                    continue
                line = reader.line_num
                if len(fields) > len(header) and any(f.strip() for f in fields[len(header):]):
                    raise DataError(f"{path} line {line}: {len(fields)} fields but the header has {len(header)}; "
                                    "quote values that contain commas")
                row = {c: (fields[i].strip() if i < len(fields) else "") for c, i in index.items()}
                row["_line"] = line
                rows.append(row)
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, _csv.Error) as exc:
        raise DataError(f"{path}: cannot read the CSV ({exc})") from None
    return rows


def parse_split(value: str, where: str) -> str:
    """Exactly "train" or "test" (surrounding spaces ignored); anything else, "Test" included, is a DataError
    naming `where`: a split value is not guessed, since a wrong guess trains on the user's test videos."""
    v = value.strip()
    if v not in SPLIT_VALUES:
        hint = f" (write {v.lower()!r})" if v.lower() in SPLIT_VALUES else ""
        raise DataError(f"{where}: split {value!r} must be 'train' or 'test'{hint}")
    return v


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
    # the extraction's frame settings, when it sets them: the aspect-ratio notice then says exactly how
    # frames are resized (FrameConfig; None: described with the default settings)
    frame_cfg = None

    def __init__(self, root, n_frames: int = 103, test_fraction: float = 0.25, seed: int = 0):
        root = Path(root)
        if root.is_dir():
            found = sorted(p for p in root.glob("*.csv")
                           if not p.name.endswith(SPLIT_SUFFIX) and not p.name.startswith("."))
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
        self._noticed: set[str] = set()          # videos already noted (_notice)
        self._warned_kinds: set[str] = set()     # kinds of notice already given at WARNING

    def _read_rows(self) -> list[dict]:
        p = self.csv_path
        if not p.is_file():
            raise DataError(f"{p}: CSV file not found")
        rows = read_table(p, COLUMNS, ("video", "score"))
        if not rows:
            raise DataError(f"{p}: no rows")
        self._has_split = "split" in rows[0]
        return rows

    def _saved_split(self, videos: list[str], scores: np.ndarray) -> list[str]:
        if self.split_path.is_file():
            rows = read_table(self.split_path, ("video", "split"), ("video", "split"))
            saved: dict[str, str] = {}
            for r in rows:
                where = f"{self.split_path} line {r['_line']}"
                if r["video"] in saved:
                    raise DataError(f"{where}: video {r['video']!r} listed twice; delete the file to make a new split")
                saved[r["video"]] = parse_split(r["split"], where)
            if set(saved) != set(videos):
                raise DataError(f"{self.split_path}: the saved split does not list exactly the videos of "
                                f"{self.csv_path}; delete it to make a new split")
            log.info("csv: reusing the split saved in %s", self.split_path)
            return [saved[v] for v in videos]
        split = list(stratified_split(scores, self.test_fraction, self.seed))
        tmp = self.split_path.with_name(self.split_path.name + ".tmp")
        try:
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                w = _csv.writer(fh)
                w.writerow(["video", "split"])
                w.writerows(zip(videos, split))
            os.replace(tmp, self.split_path)     # never a half-written split file
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{self.split_path}: cannot save the new split ({exc.strerror or exc}); make the "
                            f"folder writable or add a split column to {self.csv_path.name}") from None
        log.info("csv: no split column; wrote a seeded stratified split (seed %d) to %s", self.seed, self.split_path)
        return split

    def _load_samples(self):
        rows = self._read_rows()
        base = self.csv_path.parent
        videos, scores, diffs = [], [], []
        for r in rows:
            where = f"{self.csv_path} line {r['_line']}"
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
        if self._has_split:
            splits = [parse_split(r["split"], f"{self.csv_path} line {r['_line']}") for r in rows]
        else:
            splits = self._saved_split(videos, scores_arr)
        out = []
        for r, v, s, d, sp in zip(rows, videos, scores, diffs, splits):
            src = Path(v) if Path(v).is_absolute() else base / v
            out.append(Sample(video_id=v, source=str(src), score=s, difficulty=d, split=sp,
                              cls=r.get("class") or self.name, folds={}, extra={}))
        return out

    def label_source(self, sample: Sample, field: str = "score") -> str:
        if field == "split" and not getattr(self, "_has_split", True):
            return str(self.split_path)
        return str(self.csv_path)

    def _read_window(self, sample: Sample, max_shift: int) -> np.ndarray:
        try:
            frames, n = read_resampled(sample.source, self.n_frames)
        except DataError as exc:
            fix = (f"check the path in the video column of {self.csv_path} (relative to its folder)"
                   if not Path(sample.source).exists() else f"{_FIX} from {self.csv_path}")
            raise DataError(f"{exc}; {fix} (video {sample.video_id!r})") from None
        self._notice(sample, n, frames.shape[1], frames.shape[2])
        return frames

    def _notice(self, sample: Sample, n: int, h: int, w: int) -> None:
        """Once per video: how it was sampled (n != T) and resized (portrait or unusual aspect ratio)."""
        noticed, warned = self._noticed, self._warned_kinds
        if sample.video_id in noticed:
            return
        noticed.add(sample.video_id)
        t, parts, kinds = self.n_frames, [], []
        if n > t:
            kinds.append("long")
            parts.append(f"{n} frames, longer than the window of {t}: {t} frames taken evenly over the whole "
                         f"video (about every {n / t:.1f}th frame)")
        elif n < t:
            kinds.append("short")
            parts.append(f"{n} frames, shorter than the window of {t}: each frame repeated about {t / n:.1f} "
                         f"times in order (played {t / n:.1f}x slower)")
        if h > w or not USUAL_ASPECT[0] <= w / h <= USUAL_ASPECT[1]:
            from .transforms import describe_resize
            kinds.append("aspect")
            how = describe_resize(h, w, self.frame_cfg) if self.frame_cfg is not None else _RESIZE_RULE
            parts.append(f"{'portrait ' if h > w else ''}frames of {w}x{h} (width x height, aspect {w / h:.2f}, "
                         f"outside the usual landscape 4:3..16:9) are {how}")
        if not parts:
            return
        first = [k for k in kinds if k not in warned]
        warned.update(kinds)
        msg = f"{sample.source}: " + "; ".join(parts)
        if first:
            log.warning("%s (further videos like this are noted at INFO: -v shows them)", msg)
        else:
            log.info("%s", msg)


def read_resampled(source: str | Path, n_frames: int) -> tuple[np.ndarray, int]:
    """(uint8 [n_frames, H, W, 3], n = frames the video or frame folder has) by the CSV rule: source frame
    floor((i + 0.5) * n / n_frames) for i < n_frames, any n >= 1 (module docstring)."""
    source = Path(source)
    if source.is_dir():
        files = list_frames(source)
        return read_images([files[i] for i in even_indices(len(files), n_frames)]), len(files)
    if not source.exists():
        raise DataError(f"{source}: video file or frame folder not found")
    return sample_video(source, n_frames, min_frames=1)
