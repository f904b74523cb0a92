"""JIGSAWS reader (`get_dataset("jigsaws", root, task="all")`).

Layout (docs/METHOD.md §8): `<root>/<Task>/video/<Task>_<trial>_capture1.avi` (left camera) and
`<root>/<Task>/meta_file_<Task>.txt`, one line per trial. The meta file is split on whitespace (tabs, with
empty columns between some fields, collapse), giving 9 fields: trial name, skill level (N/I/E), GRS (6-30),
then the six GRS parts (1-5 each). Blank lines are skipped; any other line that does not parse is a
DataError naming the file and line number. A GRS that differs from the sum of its parts is logged (kept).

Samples: video_id = trial name (e.g. "Suturing_B001"), score = GRS, split "train" for all (the folds
decide), cls = task, folds:
- "4fold": fold index "0".."3" from `data/meta/four_fold_splits.pkl` (the fixed folds used by USDL, MUSDL
  and CoRe; option `folds_file=` names another pickle with the same structure, dict task -> 4 lists of
  trial names). A trial of the meta file missing from the folds file gets no "4fold" entry (logged); a
  folds-file trial missing from the meta file is a DataError (a split naming a missing sample).
- "loso": supertrial = attempt number, the last 3 digits of the trial name as an integer string ("1".."5");
- "louo": the user letter ("B".."I").
extra: skill, grs_parts (6), trial.

Frames: 160 (option n_frames) sampled evenly over the whole video (`base.even_indices`: centres of 160
equal segments); the video is demuxed once to count frames and decoded once.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from .base import DataError, Dataset, META_DIR, Sample, read_video_even
from .safe_pickle import restricted_load

log = logging.getLogger(__name__)

TASKS = ("Suturing", "Needle_Passing", "Knot_Tying")
FOLDS_FILE = "four_fold_splits.pkl"
_TRIAL = re.compile(r"^(?P<task>[A-Za-z_]+)_(?P<user>[A-Z])(?P<attempt>\d{3})$")


def parse_meta_file(path: Path, task: str) -> list[dict]:
    """Rows of a meta_file_<Task>.txt: dicts with trial, skill, grs, parts."""
    if not path.is_file():
        raise DataError(f"{path}: JIGSAWS meta file not found (expected <root>/{task}/meta_file_{task}.txt)")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the meta file ({exc})") from None
    rows = []
    seen = set()
    for ln, line in enumerate(text.splitlines(), 1):
        tok = line.split()
        if not tok:
            continue
        where = f"{path} line {ln}"
        if len(tok) != 9:
            raise DataError(f"{where}: expected 9 fields (trial, skill, GRS, 6 parts), got {len(tok)}: {line!r}")
        trial, skill = tok[0], tok[1]
        m = _TRIAL.match(trial)
        if not m or m.group("task") != task:
            raise DataError(f"{where}: trial name {trial!r} is not of the form {task}_<user letter><3 digits>")
        if skill not in ("N", "I", "E"):
            raise DataError(f"{where}: skill level {skill!r} is not one of N, I, E")
        try:
            nums = [float(t) for t in tok[2:]]
        except ValueError:
            raise DataError(f"{where}: GRS and its six parts must be numbers: {tok[2:]}") from None
        grs, parts = nums[0], nums[1:]
        if not np.isfinite(nums).all():
            raise DataError(f"{where}: GRS {grs} or a part is NaN/inf")
        if not 6 <= grs <= 30:
            raise DataError(f"{where}: GRS {grs} is outside the range 6-30")
        if any(not 1 <= p <= 5 for p in parts):
            raise DataError(f"{where}: GRS parts {parts} must each be within 1-5")
        if abs(sum(parts) - grs) > 1e-6:
            log.warning("%s: GRS %s differs from the sum of its parts %s", where, grs, sum(parts))
        if trial in seen:
            raise DataError(f"{where}: trial {trial} appears twice")
        seen.add(trial)
        rows.append({"trial": trial, "skill": skill, "grs": grs, "parts": parts,
                     "user": m.group("user"), "attempt": int(m.group("attempt"))})
    if not rows:
        raise DataError(f"{path}: no trials in the meta file")
    return rows


class JIGSAWS(Dataset):
    name = "jigsaws"
    n_frames = 160

    def __init__(self, root, task: str = "all", folds_file=None, n_frames: int = 160):
        super().__init__(root)
        if task != "all" and task not in TASKS:
            raise DataError(f"jigsaws: unknown task {task!r}; choose one of {TASKS} or 'all'")
        self.tasks = TASKS if task == "all" else (task,)
        self.folds_file = Path(folds_file) if folds_file is not None else META_DIR / FOLDS_FILE
        self.n_frames = int(n_frames)
        if self.n_frames < 16:
            raise DataError(f"jigsaws: n_frames must be >= 16, got {n_frames}")

    def _load_folds(self) -> dict:
        try:
            folds = restricted_load(self.folds_file)
        except FileNotFoundError:
            raise DataError(f"{self.folds_file}: JIGSAWS folds file not found") from None
        except Exception as exc:
            raise DataError(f"{self.folds_file}: cannot read the folds file ({exc})") from None
        if not isinstance(folds, dict):
            raise DataError(f"{self.folds_file}: expected a dict task -> list of folds")
        return folds

    def _load_samples(self):
        if not self.root.is_dir():
            raise DataError(f"{self.root}: JIGSAWS root folder not found")
        folds = self._load_folds()
        out = []
        for task in self.tasks:
            rows = parse_meta_file(self.root / task / f"meta_file_{task}.txt", task)
            fold_of: dict[str, str] = {}
            task_folds = folds.get(task)
            if task_folds is None:
                log.warning("jigsaws: %s has no folds for %s; no '4fold' protocol", self.folds_file, task)
            else:
                names = {r["trial"] for r in rows}
                for f, trials in enumerate(task_folds):
                    for t in trials:
                        t = str(t)
                        if t not in names:
                            raise DataError(f"{self.folds_file}: fold {f} of {task} names trial {t}, which is not "
                                            f"in {self.root / task / f'meta_file_{task}.txt'}")
                        fold_of[t] = str(f)
            for r in sorted(rows, key=lambda r: r["trial"]):
                trial = r["trial"]
                f = {"loso": str(r["attempt"]), "louo": r["user"]}
                if trial in fold_of:
                    f = {"4fold": fold_of[trial], **f}
                elif task_folds is not None:
                    log.warning("jigsaws: %s is in no fold of %s", trial, self.folds_file)
                out.append(Sample(
                    video_id=trial, source=str(self.root / task / "video" / f"{trial}_capture1.avi"),
                    score=float(r["grs"]), difficulty=None, split="train", cls=task, folds=f,
                    extra={"skill": r["skill"], "grs_parts": r["parts"], "trial": trial}))
        return out

    def label_source(self, sample: Sample, field: str = "score") -> str:
        if field == "folds":
            return str(self.folds_file)
        return str(self.root / sample.cls / f"meta_file_{sample.cls}.txt")

    def _read_window(self, sample: Sample, max_shift: int) -> np.ndarray:
        return read_video_even(Path(sample.source), self.n_frames)
