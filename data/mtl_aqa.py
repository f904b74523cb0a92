"""MTL-AQA reader (`get_dataset("mtl_aqa", root)`).

Metadata: the annotation dict pickle keyed by (video_no, clip_no) and the split pickles (lists of keys,
1059 train / 353 test), read with the restricted unpickler. Each file is looked up in `<root>/`,
`<root>/info/` and `<root>/annotations/`, then falls back to the copies shipped in `data/meta/` (logged).
Options `anno_file=`, `train_split_file=`, `test_split_file=` name files explicitly.

Frames, two layouts (checked per sample, first match wins):
1. one folder per source video, `<root>/<video_no:02d>/`: frames sorted by name (natural order, equal to
   plain order for zero-padded names); the frame at sorted position p (0-based) is frame number p.
2. one folder per sample, `<root>/<video_no:02d>_<clip_no:02d>/`: if the file names carry numbers and one
   of them equals `end_frame`, names are frame numbers; otherwise the folder's last frame is `end_frame`.

Window: the 103 frames ending at `end_frame`, `end_frame` excluded in 0-based position terms: positions
`[end_frame - 103, end_frame)` of layout 1, i.e. frame numbers `end_frame - 102 .. end_frame` when frames
are numbered from 1 (the usual extraction `img_00001.jpg`...). For end-frame shift s the window ends at
`end_frame + s`. `read_frames(sample, max_shift)` returns positions `[end - 103 - max_shift, end + max_shift)`.
The unshifted window must exist (else DataError: "shorter than its window"); frames a shift needs beyond the
first/last frame of the folder are the edge frame repeated (logged at debug level).

Sample: video_id "01_23", score = final_score, difficulty, split, cls "mtl_aqa"; extra holds
`judge_scores` (7), `dive_number`, `start_frame`, `end_frame`, `video_no`, `clip_no` and the dive attributes.
"""
from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import numpy as np

from .base import (DataError, Dataset, META_DIR, ShippedMetadata, load_metadata, Sample, check_score, list_frames, read_images,
                   to_jsonable)

log = logging.getLogger(__name__)

ANNO_FILE = "final_annotations_dict_with_dive_number.pkl"
SPLIT_FILE = {"train": "train_split_0.pkl", "test": "test_split_0.pkl"}
DIFFICULTY_RANGE = (1.0, 5.0)
# final score = sum of the 3 middle judge scores (0-10 each) x difficulty, so it lies in [0, 30 * difficulty]
N_JUDGES = 7


def _as_key(k, where: str) -> tuple[int, int]:
    try:
        a, b = k
        return int(a), int(b)
    except Exception:
        raise DataError(f"{where}: entry {k!r} is not a (video_no, clip_no) key") from None


@functools.lru_cache(maxsize=64)
def _frame_list(folder: str) -> tuple[Path, ...]:
    return tuple(list_frames(Path(folder)))


_TRAILING_INT = re.compile(r"(\d+)(?!.*\d)")


class MTLAQA(ShippedMetadata, Dataset):
    name = "mtl_aqa"
    n_frames = 103
    supports_shift = True
    frame_keys = ("end_frame",)

    meta_subdirs = ("", "info", "annotations")
    shipped_dir = META_DIR
    meta_names = {"anno": ANNO_FILE, **SPLIT_FILE}

    def _load_samples(self):
        if not self.root.is_dir():
            raise DataError(f"{self.root}: MTL-AQA root folder not found")
        anno_path = self._meta_path("anno")
        self.meta_files["anno"] = anno_path
        anno = load_metadata(anno_path, "MTL-AQA annotation dict")
        if not isinstance(anno, dict):
            raise DataError(f"{anno_path}: expected a dict keyed by (video_no, clip_no), got {type(anno).__name__}")
        anno = {_as_key(k, str(anno_path)): v for k, v in anno.items()}
        return [self._sample(key, anno[key], split, anno_path)
                for key, split in self._split_keys(anno, anno_path, _as_key, "(video_no, clip_no)")]

    def _sample(self, key, a, split, anno_path) -> Sample:
        where = f"{anno_path} key {key}"
        if not isinstance(a, dict):
            raise DataError(f"{where}: annotation is not a dict")
        for field in ("final_score", "difficulty", "end_frame"):
            if field not in a:
                raise DataError(f"{where}: annotation lacks {field!r}")
        difficulty = check_score(a["difficulty"], f"{where} (difficulty)", *DIFFICULTY_RANGE)
        score = check_score(a["final_score"], where, 0.0, 30.0 * difficulty)
        try:
            end = int(a["end_frame"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: end_frame {a['end_frame']!r} is not an integer") from None
        judges = a.get("judge_scores")
        if judges is not None:
            judges = [float(j) for j in np.asarray(judges).ravel()]
            if len(judges) != N_JUDGES or not all(np.isfinite(judges)):
                raise DataError(f"{where}: expected {N_JUDGES} finite judge scores, got {judges}")
        extra = {k: to_jsonable(v) for k, v in a.items() if k not in ("final_score", "difficulty")}
        extra.update(judge_scores=judges, video_no=key[0], clip_no=key[1], end_frame=end)
        vid = f"{key[0]:02d}_{key[1]:02d}"
        per_video = self.root / f"{key[0]:02d}"
        source = per_video if per_video.is_dir() else self.root / vid
        return Sample(video_id=vid, source=str(source), score=score, difficulty=difficulty, split=split,
                      cls=self.name, folds={}, extra=extra)

    def label_source(self, sample: Sample, field: str = "score") -> str:
        which = sample.split if field == "split" else "anno"
        return str(self.meta_files.get(which, self.root))

    def _read_window(self, sample: Sample, max_shift: int) -> np.ndarray:
        end = int(sample.extra["end_frame"])
        video_no, clip_no = int(sample.extra["video_no"]), int(sample.extra["clip_no"])
        per_video = self.root / f"{video_no:02d}"
        per_sample = self.root / f"{video_no:02d}_{clip_no:02d}"
        if per_video.is_dir():
            folder, files = per_video, _frame_list(str(per_video))
            end_pos = end  # exclusive position of the window end
        elif per_sample.is_dir():
            folder, files = per_sample, _frame_list(str(per_sample))
            end_pos = len(files)
            nums = [_TRAILING_INT.search(p.stem) for p in files]
            if all(nums):
                nums = [int(m.group(1)) for m in nums]
                if end in nums:
                    end_pos = nums.index(end) + 1
        else:
            raise DataError(f"{sample.video_id}: no frame folder {per_video} (one per source video) or "
                            f"{per_sample} (one per sample)")
        start_pos = end_pos - self.n_frames
        if start_pos < 0 or end_pos > len(files):
            raise DataError(f"{folder}: {sample.video_id} needs frames at positions [{start_pos}, {end_pos}) "
                            f"(end_frame {end}) but the folder has {len(files)} frames: shorter than its window")
        pos = np.arange(start_pos - max_shift, end_pos + max_shift)
        clamped = np.clip(pos, 0, len(files) - 1)
        if (clamped != pos).any():
            log.debug("%s: %d edge frames repeated for shifts up to %d", sample.video_id,
                      int((clamped != pos).sum()), max_shift)
        return read_images([files[i] for i in clamped])
