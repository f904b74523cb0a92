"""FineDiving reader (`get_dataset("finediving", root)`): Xu et al., CVPR 2022; 3000 dives, 52 dive types.

Metadata (read with the restricted unpickler), each looked up in `<root>/`, then `<root>/Annotations/`, then
the copies shipped in `data/meta/finediving/` (logged); options `anno_file=`, `train_split_file=`,
`test_split_file=` name files explicitly:
- `FineDiving_coarse_annotation.pkl`: dict `(competition, index) -> {action_type, start_frame, end_frame,
  dive_score, difficulty, judge_scores}`;
- `train_split.pkl` / `test_split.pkl`: lists of those keys (2251 / 749 in the standard split);
- `FineDiving_fine-grained_annotation.pkl` (optional): the step annotation of the same keys. It is read
  only from the folder the coarse annotation came from, so a user's own annotation is never paired with
  the shipped steps of other dives.

Frames: `<root>/<competition>/<index>/<frame>.jpg` (any image suffix), the file name being the frame number
in the source video (`00489.jpg`; the number is the last digit run of the name). The coarse annotation's
`start_frame` and `end_frame` are both included (the published trimmed folders hold exactly
start..end, e.g. 00489..00592 for `FINADivingWorldCup2021_Men3m_final_r1/0`).

Frame-sampling rule (`sample_frame_numbers`): 96 frame numbers `floor(linspace(start_frame, end_frame, 96))`,
both ends included. This is what the published TSA code does (96 = its `frame_length`, with the first and last
frame numbers of the folder and numpy's float-to-int truncation), so features from our cache see the same
frames as the published method. The dives last 63 to 273 frames (median 101), so most dives are
subsampled slightly and the shortest ones repeat frames (the published code does the same); every dive is
seen whole, from take-off to entry, at its own pace. We take start/end from the annotation rather than
from the folder, and look frames up by number rather than by position: identical on the published
folders, and an extra or renamed file cannot shift the window. A frame number that is missing raises
DataError naming the file.

Clip rule: I3D clips of 16 frames, starts `clip_starts(96, n_clips)`; with `--n-clips 9` that is
0, 10, ..., 80, exactly the published TSA clips (the last ends at frame 95, so the clips tile the whole
dive); the extract default of 10 clips gives 0, 9, 18, 27, 36, 44, 53, 62, 71, 80. No end-frame shift
protocol (`supports_shift` False). Details and reasons: docs/FINEDIVING.md.

Sample: video_id `"<competition>/<index>"`, score = `dive_score`, difficulty = `difficulty`, cls
"finediving" (the dive type is `extra["action_type"]`). `extra` also holds `competition`, `index`,
`start_frame`, `end_frame`, `judge_scores` (the judges' awards as given: 7 for a full panel, 3 where only
the three counted awards were kept, 5 for synchronised events), `n_judges`, `judge_rule` (how the awards
make the dive score, `JUDGE_RULES`), `judges_match_score` (that rule gives `dive_score` to 0.015) and,
with the step annotation, `steps_transit_frames` (offsets from `start_frame`) and `sub_actions` (step
names in order). Awards outside 0..10 or a panel of another size
give `judge_scores` None (logged with the key): two entries of the real annotation hold 55.5 and 45.0.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from .base import (DataError, Dataset, IMAGE_EXTS, META_DIR, Sample, ShippedMetadata, check_score, is_hidden,
                   load_metadata, read_images)

log = logging.getLogger(__name__)

FD_META_DIR = META_DIR / "finediving"
ANNO_FILE = "FineDiving_coarse_annotation.pkl"
FINE_FILE = "FineDiving_fine-grained_annotation.pkl"
SPLIT_FILE = {"train": "train_split.pkl", "test": "test_split.pkl"}
N_FRAMES = 96
DIFFICULTY_RANGE = (1.0, 5.0)
# how the awards make the dive score, by panel size (docs/FINEDIVING.md: how often each reproduces the
# annotated dive_score; `extra["judges_match_score"]` says so per dive)
JUDGE_RULES = {
    7: "drop the 2 highest and 2 lowest awards, sum the middle 3, times difficulty",
    3: "the 3 counted awards (the others were not annotated), summed, times difficulty",
    5: "synchronised: the 5 counted awards summed, times difficulty, times 0.6",
}
MATCH_TOL = 0.015  # dive scores are given to 2 decimals
_TRAILING_INT = re.compile(r"(\d+)(?!.*\d)")


def sample_frame_numbers(start_frame: int, end_frame: int, n: int = N_FRAMES) -> np.ndarray:
    """The frame numbers a dive is read at: floor(linspace(start, end, n)), both ends included (module
    docstring). int64 [n], non-decreasing; repeats frames when the dive is shorter than n."""
    if end_frame < start_frame:
        raise ValueError(f"end_frame {end_frame} is before start_frame {start_frame}")
    return np.floor(np.linspace(start_frame, end_frame, n)).astype(np.int64)


def frame_files(folder: Path) -> dict[int, Path]:
    """Frame number -> image file of a FineDiving frame folder (number = the last digit run of the name)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: frame folder not found")
    out: dict[int, Path] = {}
    for p in folder.iterdir():
        if p.suffix.lower() not in IMAGE_EXTS or is_hidden(p) or not p.is_file():
            continue
        m = _TRAILING_INT.search(p.stem)
        if m is None:
            raise DataError(f"{p}: FineDiving frame files are named by their frame number (e.g. 00489.jpg); "
                            "rename or remove this file")
        k = int(m.group(1))
        if k in out:
            raise DataError(f"{folder}: frame {k} is there twice ({out[k].name}, {p.name}); keep one")
        out[k] = p
    if not out:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_EXTS)}) in the frame folder")
    return out


def _as_key(k, where: str) -> tuple[str, int]:
    try:
        comp, idx = k
        if not isinstance(comp, str) or not comp or "/" in comp or int(idx) != idx or int(idx) < 0:
            raise ValueError
        return comp, int(idx)
    except Exception:
        raise DataError(f"{where}: entry {k!r} is not a (competition, index) key") from None


def _int(value, where: str, field: str) -> int:
    try:
        x = int(value)
        if x != value:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: {field} {value!r} is not an integer frame number") from None
    return x


def judge_awards(raw, where: str) -> list[float] | None:
    """The awards as floats when they form a known panel (`JUDGE_RULES`) of values in 0..10, else None
    (logged: the dive keeps its score, only the awards are dropped)."""
    try:
        awards = [float(v) for v in np.asarray(raw, dtype=np.float64).ravel()]
    except (TypeError, ValueError):
        awards = None
    if awards is None or len(awards) not in JUDGE_RULES or not all(0.0 <= a <= 10.0 for a in awards):
        shown = [float(v) if isinstance(v, (int, float, np.number)) else v
                 for v in np.ravel(np.asarray(raw, dtype=object))]
        log.warning("%s: judge_scores %s are not %s awards in 0..10; judge_scores set to None (the dive and "
                    "its score are kept)", where, shown, "/".join(map(str, sorted(JUDGE_RULES))))
        return None
    return awards


def score_from_awards(awards, difficulty: float) -> float:
    """The dive score the sport's rule gives for these awards (`JUDGE_RULES`, by panel size)."""
    a = sorted(float(x) for x in awards)
    if len(a) == 7:
        return sum(a[2:5]) * difficulty
    if len(a) == 3:
        return sum(a) * difficulty
    if len(a) == 5:
        return sum(a) * difficulty * 0.6
    raise ValueError(f"no scoring rule for a panel of {len(a)} awards")


def counted_awards(awards) -> list[float]:
    """Three awards whose sum, times difficulty, is the dive score under the panel's rule: the middle 3 of
    7, the 3 of a 3-award panel, and for a synchronised panel of 5 (sum x 0.6) three times their mean.
    FineDiving's panels differ in size; these give every dive the same 3 "judges" for heads that learn
    one distribution per judge (musdl), whose prediction is then their sum times difficulty."""
    a = sorted(float(x) for x in awards)
    if len(a) == 7:
        return a[2:5]
    if len(a) == 3:
        return a
    if len(a) == 5:
        return [sum(a) / 5.0] * 3
    raise ValueError(f"no scoring rule for a panel of {len(a)} awards")


class FineDiving(ShippedMetadata, Dataset):
    name = "finediving"
    n_frames = N_FRAMES
    frame_keys = ("start_frame", "end_frame")

    meta_subdirs = ("", "Annotations")
    shipped_dir = FD_META_DIR
    meta_names = {"anno": ANNO_FILE, **SPLIT_FILE}

    def _load_samples(self):
        if not self.root.is_dir():
            raise DataError(f"{self.root}: FineDiving root folder not found (it holds <competition>/<index>/ "
                            "frame folders)")
        anno_path = self.meta_files["anno"] = self._meta_path("anno")
        anno = load_metadata(anno_path, "FineDiving coarse annotation")
        if not isinstance(anno, dict):
            raise DataError(f"{anno_path}: expected a dict keyed by (competition, index), got "
                            f"{type(anno).__name__}")
        anno = {_as_key(k, str(anno_path)): v for k, v in anno.items()}
        steps = self._steps(anno_path.parent / FINE_FILE)
        return [self._sample(key, anno[key], split, f"{anno_path} key {key}", steps.get(key))
                for key, split in self._split_keys(anno, anno_path, _as_key, "(competition, index)")]

    def _steps(self, path: Path) -> dict:
        if not path.is_file():
            return {}
        self.meta_files["fine"] = path
        fine = load_metadata(path, "FineDiving fine-grained annotation")
        return fine if isinstance(fine, dict) else {}

    def _sample(self, key, a, split, where, fine) -> Sample:
        if not isinstance(a, dict):
            raise DataError(f"{where}: annotation is not a dict")
        for field in ("dive_score", "difficulty", "start_frame", "end_frame"):
            if field not in a:
                raise DataError(f"{where}: annotation lacks {field!r}")
        difficulty = check_score(a["difficulty"], f"{where} (difficulty)", *DIFFICULTY_RANGE)
        score = check_score(a["dive_score"], f"{where} (dive_score)", 0.0, 30.0 * difficulty)
        start, end = _int(a["start_frame"], where, "start_frame"), _int(a["end_frame"], where, "end_frame")
        if start < 0 or end < start:
            raise DataError(f"{where}: frames {start}..{end} are not a window "
                            "(need 0 <= start_frame <= end_frame)")
        awards = judge_awards(a["judge_scores"], where) if "judge_scores" in a else None
        extra = {"competition": key[0], "index": key[1], "action_type": str(a.get("action_type", "")),
                 "start_frame": start, "end_frame": end, "judge_scores": awards,
                 "n_judges": len(awards) if awards else 0,
                 "judge_rule": JUDGE_RULES[len(awards)] if awards else None,
                 "judges_match_score": bool(awards)
                 and abs(score_from_awards(awards, difficulty) - score) <= MATCH_TOL,
                 "counted_awards": counted_awards(awards) if awards else None}
        if isinstance(fine, dict) and "steps_transit_frames" in fine:
            extra["steps_transit_frames"] = [int(v) for v in np.asarray(fine["steps_transit_frames"]).ravel()]
            names = fine.get("sub-action_types") or {}
            labels = [int(v) for v in np.asarray(fine.get("frames_labels", [])).ravel()]
            order = list(dict.fromkeys(labels))
            extra["sub_actions"] = [str(names.get(v, v)) for v in order]
        vid = f"{key[0]}/{key[1]}"
        return Sample(video_id=vid, source=str(self.root / key[0] / str(key[1])), score=score,
                      difficulty=difficulty, split=split, cls=self.name, folds={}, extra=extra)

    def label_source(self, sample: Sample, field: str = "score") -> str:
        which = sample.split if field == "split" else "anno"
        return str(self.meta_files.get(which, self.root))

    def _read_window(self, sample: Sample, max_shift: int) -> np.ndarray:
        folder = Path(sample.source)
        start, end = int(sample.extra["start_frame"]), int(sample.extra["end_frame"])
        files = frame_files(folder)
        wanted = sample_frame_numbers(start, end, self.n_frames)
        missing = sorted(set(int(k) for k in wanted) - set(files))
        if missing:
            have = f"{min(files)}..{max(files)}"
            raise DataError(f"{folder}: {sample.video_id} spans frames {start}..{end} but frame(s) "
                            f"{_short(missing)} are missing (the folder holds {len(files)} frames, numbers "
                            f"{have}); re-extract the frames of this dive")
        return read_images([files[int(k)] for k in wanted])


def _short(nums: list[int], k: int = 5) -> str:
    return ", ".join(map(str, nums[:k])) + (f" and {len(nums) - k} more" if len(nums) > k else "")
