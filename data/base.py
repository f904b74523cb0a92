"""Shared pieces of the dataset readers: `Sample`, `DataError`, the base class and frame/video IO.

Error policy: readers raise `DataError` (a `ValueError`) for anything a user can cause (a missing folder
or frame, an unreadable JPEG or video, a video shorter than its window, an unknown annotation key, a NaN
or out-of-range score, a split naming a missing sample). There is no `skip_errors` switch here: metadata
problems found by `samples()` stop the dataset (the split would be wrong), while per-video problems are
raised by `read_frames()` so that the extraction loop can catch `DataError` per video and record it.

Heavy or optional modules (PIL, av, scipy.io) are imported inside the functions that need them so that
`import data` stays light.
"""
from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
META_DIR = Path(__file__).resolve().parent / "meta"


class DataError(ValueError):
    """A problem with the user's data: names the file or key and what is wrong."""


class ShippedMetadata:
    """Mixin of readers whose annotation and split files ship with the project (data/meta/) but may also
    be in the dataset's folder: `meta_path(which)` is the explicit file given, else the first of
    `<root>/<sub>/<name>` for `meta_subdirs`, else the shipped copy in `shipped_dir`."""
    meta_subdirs: tuple[str, ...] = ("",)
    shipped_dir: Path

    meta_names: dict[str, str]            # "anno", "train", "test" -> shipped file name

    def __init__(self, root, anno_file=None, train_split_file=None, test_split_file=None):
        super().__init__(root)
        self._files = {"anno": (anno_file, self.meta_names["anno"]),
                       "train": (train_split_file, self.meta_names["train"]),
                       "test": (test_split_file, self.meta_names["test"])}
        self.meta_files: dict[str, Path] = {}

    def _meta_path(self, which: str) -> Path:
        explicit, fname = self._files[which]
        if explicit is not None:
            return Path(explicit)
        for sub in self.meta_subdirs:
            if (self.root / sub / fname).is_file():
                return self.root / sub / fname
        logging.getLogger(type(self).__module__).info(
            "%s: %s not under %s; using the shipped copy in %s", self.name, fname, self.root, self.shipped_dir)
        return self.shipped_dir / fname

    def _split_keys(self, anno, anno_path, as_key, key_desc: str):
        """(key, split) of every entry of the train and test split files, in file order: each key made by
        `as_key(entry, where)`, present in the annotation `anno` (read from `anno_path`) and in one split
        only; the files used are recorded in `meta_files`."""
        seen: dict = {}
        for split in ("train", "test"):
            path = self.meta_files[split] = self._meta_path(split)
            keys = load_metadata(path, f"{self.name} {split} split")
            if not isinstance(keys, (list, tuple)):
                raise DataError(f"{path}: expected a list of {key_desc} keys, got {type(keys).__name__}")
            for k in keys:
                key = as_key(k, str(path))
                if key not in anno:
                    raise DataError(f"{path}: key {key} is not in the annotations {anno_path}; use the split "
                                    "files that came with them")
                if key in seen:
                    raise DataError(f"{path}: key {key} is listed in both {seen[key]} and {split}")
                seen[key] = split
                yield key, split


def load_metadata(path, what: str):
    """A dataset's pickled annotation or split file through the restricted unpickler (plain data only);
    a missing, unreadable or unsafe file is one DataError naming it and `what` it should be."""
    from .safe_pickle import restricted_load

    try:
        return restricted_load(path)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from None


@dataclass(frozen=True)
class Sample:
    """One judged attempt. See docs/ARCHITECTURE.md ("data/")."""

    video_id: str
    source: str
    score: float
    difficulty: float | None = None
    split: str = "train"
    cls: str = ""
    folds: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:  # dict fields are unhashable; video_id is unique
        return hash(self.video_id)


class Dataset:
    """Base class of the readers. Subclasses set `name`, `n_frames` and implement `_load_samples` and
    `_read_window`."""

    name: ClassVar[str] = ""
    supports_shift: ClassVar[bool] = False
    # keys of Sample.extra that decide which frames are read (a change makes stored features stale,
    # while a change of any other label only needs the labels refreshed: cache.sync_labels)
    frame_keys: ClassVar[tuple[str, ...]] = ()
    n_frames: int = 0

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._samples: list[Sample] | None = None

    def samples(self) -> list[Sample]:
        """All samples in a deterministic order (metadata only; frames are read by `read_frames`).

        Every reader's samples pass `check_samples` here (finite scores, positive finite difficulties,
        known splits, unique ids), so no reader can hand a NaN label or an unknown split downstream.
        """
        if self._samples is None:
            samples = list(self._load_samples())
            check_samples(samples, self.label_source)
            self._samples = samples
        return list(self._samples)

    def label_source(self, sample: Sample, field: str = "score") -> str:
        """The file the `field` label of `sample` was read from (named in error messages)."""
        return str(self.root)

    def read_frames(self, sample: Sample, max_shift: int = 0) -> np.ndarray:
        """np.uint8 [T + 2*max_shift, H, W, 3]; raises DataError for a bad video or frame."""
        if max_shift < 0:
            raise DataError(f"max_shift must be >= 0, got {max_shift}")
        if max_shift > 0 and not self.supports_shift:
            raise DataError(f"dataset {self.name!r} has no end-frame shift protocol; use max_shift=0 "
                            f"(got {max_shift}) for {sample.video_id}")
        frames = self._read_window(sample, max_shift)
        expected = self.n_frames + 2 * max_shift
        if frames.shape[0] != expected:  # a reader bug, not user data
            raise AssertionError(f"{sample.video_id}: got {frames.shape[0]} frames, expected {expected}")
        return frames

    def _load_samples(self) -> Sequence[Sample]:
        raise NotImplementedError

    def _read_window(self, sample: Sample, max_shift: int) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.samples())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r})"


# ----------------------------------------------------------------------------------------------- helpers

def check_score(value: Any, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """float(value), raising DataError naming `where` for a non-number, NaN/inf or a value outside [lo, hi]."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: score {value!r} is not a number") from None
    if not math.isfinite(x):
        raise DataError(f"{where}: score is {x}; every sample needs a finite score (fix or drop the row)")
    tol = 1e-6 * max(1.0, abs(hi) if math.isfinite(hi) else 1.0)
    if x < lo - tol or x > hi + tol:
        raise DataError(f"{where}: score {x} is outside the allowed range [{lo}, {hi}]")
    return x


SPLITS = ("train", "test")


def check_samples(samples: Sequence[Sample], source=None) -> None:
    """The invariants every reader's samples share, checked in one place (`Dataset.samples`): a non-empty,
    unique video_id; a finite score; a difficulty that is None or finite and > 0 (score = completeness x
    difficulty); a split in `SPLITS`; a non-empty class; folds as a str -> str mapping. Raises DataError
    naming the file (`source(sample, field)`, e.g. `Dataset.label_source`) and the video."""
    seen: set[str] = set()
    for s in samples:
        def where(field: str) -> str:
            src = source(s, field) if source is not None else ""
            return f"{src}: video {s.video_id!r}" if src else f"video {s.video_id!r}"

        if not isinstance(s.video_id, str) or not s.video_id:
            raise DataError(f"{source(s, 'video_id') if source else 'dataset'}: a sample has an empty video id "
                            f"({s.video_id!r}); every row needs one")
        if s.video_id in seen:
            raise DataError(f"{where('video_id')} is listed twice; video ids must be unique")
        seen.add(s.video_id)
        if not _finite_number(s.score):
            raise DataError(f"{where('score')}: score is {s.score!r}; every sample needs a finite score "
                            "(fix or drop the row)")
        if s.difficulty is not None and not (_finite_number(s.difficulty) and s.difficulty > 0):
            raise DataError(f"{where('difficulty')}: difficulty is {s.difficulty!r}; it must be a finite number "
                            "> 0 (score = completeness x difficulty), or empty for none")
        if s.split not in SPLITS:
            raise DataError(f"{where('split')}: split {s.split!r} is not one of {', '.join(SPLITS)}")
        if not isinstance(s.cls, str) or not s.cls:
            raise DataError(f"{where('cls')}: empty class; every sample needs one")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in dict(s.folds).items()):
            raise DataError(f"{where('folds')}: folds must map protocol names to fold ids (strings), "
                            f"got {dict(s.folds)!r}")


def _finite_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) \
        and math.isfinite(float(x))


_NUM = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    """Sort key comparing digit runs as numbers ('img_2' < 'img_10'); equals name order for padded names."""
    return [int(t) if t.isdigit() else t.lower() for t in _NUM.split(name)]


def is_hidden(path: Path) -> bool:
    """Names starting with '.' (`.DS_Store`, macOS `._img_00001.jpg` resource forks, editor leftovers)."""
    return Path(path).name.startswith(".")


def list_frames(folder: Path) -> list[Path]:
    """Image files of a frame folder in natural name order; DataError if the folder is missing/empty.
    Hidden files (`is_hidden`) are not frames and are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: frame folder not found")
    files = [p for p in folder.iterdir()
             if p.suffix.lower() in IMAGE_EXTS and not is_hidden(p) and p.is_file()]
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_EXTS)}) in the frame folder")
    files.sort(key=lambda p: natural_key(p.name))
    return files


def read_image(path: Path) -> np.ndarray:
    """One RGB frame as uint8 [H, W, 3]; DataError for a missing, truncated or unreadable file."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: frame file not found")
    try:
        with Image.open(path) as im:
            im.load()  # forces the full decode: a truncated JPEG fails here
            arr = _rgb8(im)
    except Exception as exc:  # PIL raises OSError, SyntaxError, UnidentifiedImageError, ...
        raise DataError(f"{path}: unreadable or truncated image ({exc}); re-extract this frame") from None
    return arr


# PIL modes holding 16-bit grey levels (16-bit greyscale PNGs open as "I;16", older Pillow gave "I").
_MODES_16 = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _rgb8(im) -> np.ndarray:
    """uint8 RGB [H, W, 3] of a PIL image. 16-bit grey levels are scaled to 8 bits (value >> 8), not
    clipped (PIL's convert("RGB") would turn everything above 255 white). 16-bit RGB(A) PNGs already open
    as 8-bit modes (PIL keeps the high byte)."""
    if im.mode in _MODES_16:
        grey = np.asarray(im)
        grey = (np.clip(grey.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


def read_images(paths: Sequence[Path]) -> np.ndarray:
    """Stack frames into uint8 [N, H, W, 3]; files repeated in `paths` are decoded once."""
    cache: dict[Path, np.ndarray] = {}
    out = None
    for i, p in enumerate(paths):
        img = cache.get(p)
        if img is None:
            img = cache[p] = read_image(p)
        if out is None:
            out = np.empty((len(paths),) + img.shape, dtype=np.uint8)
        elif img.shape != out.shape[1:]:
            raise DataError(f"{p}: frame size {img.shape[:2]} differs from the first frame's "
                            f"{out.shape[1:3]} ({paths[0]})")
        out[i] = img
    if out is None:
        raise DataError("no frames to read")
    return out


def even_indices(n_available: int, n_wanted: int) -> np.ndarray:
    """`n_wanted` frame indices spread evenly over `n_available` frames: the centre of each of `n_wanted`
    equal segments, floor((i + 0.5) * n_available / n_wanted). Strictly increasing when
    n_available >= n_wanted; with fewer frames than wanted each frame repeats about n_wanted / n_available
    times, in order (the CSV dataset's rule for short videos; the other readers refuse them)."""
    i = np.arange(n_wanted, dtype=np.float64)
    return np.minimum(np.floor((i + 0.5) * n_available / n_wanted).astype(np.int64), n_available - 1)


def _open_video(path: Path):
    import av

    if not path.is_file():
        raise DataError(f"{path}: video file not found")
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise DataError(f"{path}: unreadable video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise DataError(f"{path}: the file has no video stream")
    return container


def count_video_frames(path: Path) -> int:
    """Number of video packets (one per frame for the codecs used here) without decoding.

    A container that announces more frames than it holds (a truncated copy that still demuxes) is reported
    with a warning naming the file and the frames it gave (`_warn_if_short`)."""
    container = _open_video(path)
    try:
        stream = container.streams.video[0]
        announced = _announced_frames(container, stream)
        n = sum(1 for pkt in container.demux(stream) if pkt.size)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable video ({exc})") from None
    finally:
        container.close()
    _warn_if_short(path, n, announced)
    return n


def _announced_frames(container, stream) -> tuple[int, int] | None:
    """(frames the header announces, tolerance): the stream's frame count when the container stores one
    (AVI, MP4: exact), else duration x average frame rate (Matroska, WebM: approximate); None if unknown."""
    with contextlib.suppress(Exception):
        if stream.frames and stream.frames > 0:
            return int(stream.frames), 0
    with contextlib.suppress(Exception):
        if container.duration and stream.average_rate:
            n = int(round(container.duration / 1e6 * float(stream.average_rate)))
            if n > 0:
                return n, max(1, int(0.02 * n))
    return None


def _warn_if_short(path: Path, n_got: int, announced: tuple[int, int] | None) -> None:
    if announced is not None and n_got < announced[0] - announced[1]:
        log.warning("%s: the container announces %d frames but only %d could be read: the file is probably "
                    "truncated (using the %d frames it gave; re-copy the video if that is wrong)",
                    path, announced[0], n_got, n_got)


def _decode_selected(path: Path, wanted: np.ndarray) -> tuple[dict[int, np.ndarray], int]:
    """Decode the whole video once, converting only the frames whose index is in `wanted`."""
    want = set(int(i) for i in wanted)
    got: dict[int, np.ndarray] = {}
    container = _open_video(path)
    n = 0
    try:
        for frame in container.decode(video=0):
            if n in want:
                got[n] = frame.to_ndarray(format="rgb24")
            n += 1
    except Exception as exc:
        raise DataError(f"{path}: video decoding failed after {n} frames ({exc}); the file may be "
                        "truncated, re-copy it") from None
    finally:
        container.close()
    return got, n


def read_video_even(path: str | Path, n_frames: int) -> np.ndarray:
    """`n_frames` frames sampled evenly (see `even_indices`) from a video file: uint8 [n_frames, H, W, 3];
    a video shorter than `n_frames` is a DataError (`sample_video` with min_frames=1 resamples it)."""
    return sample_video(path, n_frames)[0]


def sample_video(path: str | Path, n_frames: int, min_frames: int | None = None) -> tuple[np.ndarray, int]:
    """(frames at `even_indices(n_total, n_frames)`, n_total = the frames the video has). Fewer than
    `min_frames` (default `n_frames`) frames is a DataError; with fewer than `n_frames` the indices repeat
    frames. The file is demuxed once to count frames and decoded once; if the decoder yields a different
    number of frames than packets (rare), the indices are recomputed and the file decoded again."""
    path = Path(path)
    min_frames = n_frames if min_frames is None else max(1, int(min_frames))
    n_total = count_video_frames(path)
    for _ in range(2):
        if n_total == 0:
            raise DataError(f"{path}: the video has no frames")
        if n_total < min_frames:
            raise DataError(f"{path}: video has {n_total} frames, shorter than its window of {n_frames}")
        idx = even_indices(n_total, n_frames)
        got, n_decoded = _decode_selected(path, idx)
        if all(int(i) in got for i in idx):
            return np.stack([got[int(i)] for i in idx]), n_total
        log.warning("%s: %d video packets but only %d frames decoded: the file may be damaged (sampling "
                    "the %d frames it gave)", path, n_total, n_decoded, n_decoded)
        n_total = n_decoded
    raise DataError(f"{path}: could not decode the frames it announces; the file may be damaged")


def read_folder_even(folder: str | Path, n_frames: int) -> np.ndarray:
    """`n_frames` frames sampled evenly from a frame folder (natural name order)."""
    files = list_frames(Path(folder))
    if len(files) < n_frames:
        raise DataError(f"{folder}: {len(files)} frames, shorter than the window of {n_frames}")
    return read_images([files[i] for i in even_indices(len(files), n_frames)])


def read_even(source: str | Path, n_frames: int) -> np.ndarray:
    """Evenly sampled frames from a video file or a frame folder."""
    source = Path(source)
    if source.is_dir():
        return read_folder_even(source, n_frames)
    if not source.exists():
        raise DataError(f"{source}: video file or frame folder not found")
    return read_video_even(source, n_frames)


def read_first(source: str | Path, n_frames: int) -> np.ndarray:
    """The first `n_frames` frames of a video file or a frame folder: uint8 [n_frames, H, W, 3]."""
    source = Path(source)
    if source.is_dir():
        files = list_frames(source)
        if len(files) < n_frames:
            raise DataError(f"{source}: {len(files)} frames, shorter than the window of {n_frames}")
        return read_images(files[:n_frames])
    if not source.exists():
        raise DataError(f"{source}: video file or frame folder not found")
    got, n = _decode_selected(source, np.arange(n_frames))
    if len(got) < n_frames:
        raise DataError(f"{source}: video has {n} frames, shorter than its window of {n_frames}")
    return np.stack([got[i] for i in range(n_frames)])


def find_file(name: str, candidates: Sequence[Path], what: str) -> Path:
    """The first existing `<dir>/<name>` among `candidates`."""
    for d in candidates:
        p = Path(d) / name
        if p.is_file():
            return p
    raise DataError(f"{what}: {name} not found in any of {[str(c) for c in candidates]}")


def to_jsonable(x: Any) -> Any:
    """numpy scalars/arrays and tuples to plain JSON types."""
    if isinstance(x, np.ndarray):
        return [to_jsonable(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    return x
