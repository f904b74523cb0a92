"""Writing the HDF5 feature store: crash-safe part files, their merge, the final flat file.

The cache knows nothing of I3D: it stores per-video arrays ``features [V, C, D]`` plus labels and a
dict of file attributes. Layout of the final file (docs/ARCHITECTURE.md, "cache/"):

    /features float16 [N, V, C, D]   /video_id /split /cls /folds /extra  utf-8 str [N]
    /score /difficulty float64 [N] (NaN = none)   /failed_id /failed_error utf-8 str [F]
    attrs: schema_version, dataset, backbone, weights_source, weights_sha256, normalization,
           clip_rule, frame_config, views (JSON), code_version, created, + bookkeeping below

Crash safety. While a run goes, finished videos are buffered and written in small *part files*
``<out>.parts/part-<rank>-<seq>.h5``: each is written as ``...h5.tmp``, fsync'ed and renamed with
``os.replace`` so a part is either complete or a ``.tmp`` leftover. Parts carry the same datasets as
the final file plus ``/index`` and ``/failed_index`` (the position of each video in the run's video
list), so merging needs no dataset object: it sorts by index, checks that every index is either
finished or failed, writes ``<out>.tmp-<pid>`` and renames it onto ``<out>``. The final file therefore
either does not exist or is complete; the parts folder is removed after the rename.

Full disks and unwritable folders. HDF5 never writes to the disk itself: every file is built in memory
(an HDF5 image in a ``BytesIO``) and then written with plain ``os.write`` (`write_file_atomic`). A full
disk or a read-only folder is then one ``CacheWriteError`` naming the file, never a half-written file or
the HDF5 library failing inside its own close (which printed a stream of tracebacks and crashed).

Labels. Features do not depend on the labels (score, difficulty, split, class, folds, extra), so the
final file stores a fingerprint of them (attribute ``labels_sha256``, `labels_sha256`). `sync_labels`
compares a complete cache with the dataset's current labels and rewrites only the label datasets when
they changed (edited scores must not leave the old ones in the cache); `merge_parts(labels=...)` takes
the labels of the run that merges, not those an interrupted run stored in its parts.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno as _errno
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from data.fileio import code_version  # noqa: F401  (provenance of the file; re-exported by cache)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Attributes stored as JSON text; readers return them decoded.
JSON_ATTRS = ("clip_rule", "frame_config", "views", "dataset_options")
# Attributes that decide whether two runs produce the same file (resume / "already done" / refuse).
# weights_source is left out on purpose: the same weights reached through another path are the same
# weights; weights_sha256 is what identifies them. code_version/created are provenance only.
IDENTITY_ATTRS = ("schema_version", "dataset", "dataset_options", "backbone", "weights_sha256",
                  "normalization", "clip_rule", "frame_config", "views", "n_videos", "video_list_sha256")
_STR = h5py.string_dtype("utf-8")
_PART_RE = re.compile(r"^part-(\d+)-(\d+)\.h5$")


class CacheError(ValueError):
    """A feature cache that cannot be used (missing, corrupt, incomplete); the message says what to do."""


class CacheMissing(CacheError, FileNotFoundError):
    """The feature cache file does not exist."""


class CacheWriteError(CacheError):
    """A file of the cache could not be written (full disk, read-only or missing folder, ...)."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class CacheMismatch(CacheError):
    """A cache (or part files) whose attributes differ from what the caller expects."""

    def __init__(self, message: str, attribute: str | None = None):
        super().__init__(message)
        self.attribute = attribute


@dataclass(frozen=True)
class VideoRecord:
    """One finished video. ``index``: position in the run's video list (defines the final order)."""
    index: int
    video_id: str
    features: np.ndarray            # (V, C, D), stored as float16
    score: float
    difficulty: float | None
    split: str
    cls: str
    folds: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FailureRecord:
    index: int
    video_id: str
    error: str


# ---------------------------------------------------------------------------------------------- labels
# Per-video label datasets. Anything with these attributes is a label row: VideoRecord, data.Sample.
LABEL_FIELDS = ("score", "difficulty", "split", "cls", "folds", "extra")
_LABEL_WORDS = {"score": ("score", "scores"), "difficulty": ("difficulty", "difficulties"),
                "split": ("split", "splits"), "cls": ("class", "classes"), "folds": ("folds entry", "folds entries"),
                "extra": ("extra entry", "extra entries")}


def _label_texts(r: Any) -> tuple[str, ...]:
    """The label fields of one video as the exact text the cache compares (floats by repr, None/NaN
    difficulty as "none", folds/extra as the sorted JSON the file stores)."""
    d = r.difficulty
    diff = "none" if d is None or (isinstance(d, float) and math.isnan(d)) else repr(float(d))
    return (repr(float(r.score)), diff, str(r.split), str(r.cls),
            json.dumps(dict(r.folds), sort_keys=True), json.dumps(dict(r.extra), sort_keys=True))


def labels_sha256(rows: Iterable[Any]) -> str:
    """Fingerprint of the labels of ``rows`` (video_id + `LABEL_FIELDS`, in order): the attribute
    ``labels_sha256`` of a final cache."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([str(r.video_id), *_label_texts(r)]).encode("utf-8") + b"\n")
    return h.hexdigest()


def describe_label_changes(counts: Mapping[str, int]) -> str:
    """``{"score": 3, "split": 1}`` -> ``"3 scores, 1 split changed"``."""
    parts = [f"{n} {_LABEL_WORDS[k][0 if n == 1 else 1]}" for k, n in counts.items() if n]
    return (", ".join(parts) + " changed") if parts else "no label changed"


def _count_label_changes(old_rows: Sequence[tuple[str, ...]], new_rows: Sequence[tuple[str, ...]]) -> dict[str, int]:
    counts = {k: 0 for k in LABEL_FIELDS}
    for a, b in zip(old_rows, new_rows):
        for k, x, y in zip(LABEL_FIELDS, a, b):
            counts[k] += x != y
    return {k: n for k, n in counts.items() if n}


def _relabel(rec: "VideoRecord", lab: Any) -> "VideoRecord":
    d = lab.difficulty
    return VideoRecord(rec.index, rec.video_id, rec.features, float(lab.score),
                       None if d is None or (isinstance(d, float) and math.isnan(d)) else float(d),
                       str(lab.split), str(lab.cls), dict(lab.folds), dict(lab.extra))


# ----------------------------------------------------------------------------------------------- attrs
def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def decode_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """HDF5 attrs -> plain Python values, JSON attributes decoded."""
    out = {}
    for k, v in raw.items():
        v = _plain(v)
        if k in JSON_ATTRS and isinstance(v, str):
            with contextlib.suppress(ValueError):
                v = json.loads(v)
        out[k] = v
    return out


def _norm_expected(key: str, v: Any) -> Any:
    v = _plain(v)
    if key in JSON_ATTRS:
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                return json.loads(v)
            return v
        return json.loads(json.dumps(v))      # tuples -> lists, as stored
    return v


def attr_differences(actual: Mapping[str, Any], expect: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``[(name, actual, expected), ...]`` for each expected attribute that differs or is absent."""
    diffs = []
    for k, want in expect.items():
        want = _norm_expected(k, want)
        have = actual.get(k, "<absent>")
        if k in JSON_ATTRS and isinstance(have, str) and have != "<absent>":
            with contextlib.suppress(ValueError):
                have = json.loads(have)
        if isinstance(have, float) and isinstance(want, float) and math.isnan(have) and math.isnan(want):
            continue
        if have != want:
            diffs.append((k, have, want))
    return diffs


def _short(v: Any, n: int = 160) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= n else s[: n - 3] + "..."


def mismatch_message(what: str, diffs: list[tuple[str, Any, Any]], todo: str) -> str:
    lines = [f"{what} differs from what was asked in attribute '{diffs[0][0]}'"
             + (f" (and {', '.join(d[0] for d in diffs[1:])})" if len(diffs) > 1 else "") + ":"]
    for k, have, want in diffs:
        lines.append(f"  {k}: file has {_short(have)!s}, expected {_short(want)!s}")
    lines.append(todo)
    return "\n".join(lines)


def _encode_attrs(h5: h5py.File, attrs: Mapping[str, Any]) -> None:
    for k, v in attrs.items():
        if k in JSON_ATTRS and not isinstance(v, str):
            v = json.dumps(v, sort_keys=True)
        elif v is None:
            v = ""
        h5.attrs[k] = v


# ------------------------------------------------------------------------------------- low-level files
def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def os_error_text(exc: OSError) -> str:
    """``"No space left on device (ENOSPC)"`` for an OSError."""
    name = _errno.errorcode.get(exc.errno or -1)
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def write_error(path: Path, exc: OSError, todo: str = "") -> CacheWriteError:
    """The one-line CacheWriteError for an OSError while writing ``path``; ``todo`` says what to do."""
    if exc.errno == _errno.ENOSPC or exc.errno == getattr(_errno, "EDQUOT", -1):
        hint = f"free space on the disk of {path.parent}"
    elif exc.errno in (_errno.EROFS, _errno.EACCES, _errno.EPERM):
        hint = f"{path.parent} is not writable: choose another output path"
    else:
        hint = "check the output path"
    return CacheWriteError(f"cannot write {path}: {os_error_text(exc)}; {hint}" + (f"; {todo}" if todo else ""),
                           errno=exc.errno)


def write_file_atomic(path: Path, tmp: Path, data) -> None:
    """Write the bytes-like ``data`` to ``tmp``, fsync it and rename it onto ``path``; the temp file is
    removed on any error. OSErrors become CacheWriteError naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            view = memoryview(data).cast("B")
            while len(view):
                view = view[os.write(fd, view[: 1 << 24]):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(path, e) from e
    _fsync_path(path.parent, directory=True)


@contextlib.contextmanager
def atomic_h5(path: Path, tmp: Path) -> Iterator[h5py.File]:
    """Build an HDF5 file in memory; on success write it to ``tmp``, fsync it and rename it onto ``path``.

    The HDF5 library only ever writes to memory, so a full disk surfaces as one CacheWriteError from
    `write_file_atomic` (nothing half-written, no HDF5 error stack). On an error in the body nothing is
    written at all."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        yield h5
    view = buf.getbuffer()
    try:
        write_file_atomic(path, tmp, view)
    finally:
        view.release()


def _strs(values: Iterable[str]) -> np.ndarray:
    return np.array(list(values), dtype=object)


def _write_table(h5: h5py.File, recs: Sequence[VideoRecord], fails: Sequence[FailureRecord],
                 feature_shape: Sequence[int], with_index: bool) -> None:
    n = len(recs)
    for r in recs:
        if tuple(r.features.shape) != tuple(feature_shape):
            raise ValueError(f"video {r.video_id}: features shape {r.features.shape}, "
                             f"expected {tuple(feature_shape)}")
    ds = h5.create_dataset("features", shape=(n, *feature_shape), dtype=np.float16)
    step = 64                    # filled in blocks: no second copy of all features in memory
    for a in range(0, n, step):
        ds[a:a + step] = np.stack([np.asarray(r.features, dtype=np.float16) for r in recs[a:a + step]])
    h5.create_dataset("video_id", data=_strs(r.video_id for r in recs), dtype=_STR)
    h5.create_dataset("score", data=np.array([r.score for r in recs], dtype=np.float64))
    h5.create_dataset("difficulty", data=np.array(
        [np.nan if r.difficulty is None else r.difficulty for r in recs], dtype=np.float64))
    h5.create_dataset("split", data=_strs(r.split for r in recs), dtype=_STR)
    h5.create_dataset("cls", data=_strs(r.cls for r in recs), dtype=_STR)
    h5.create_dataset("folds", data=_strs(json.dumps(dict(r.folds), sort_keys=True) for r in recs),
                      dtype=_STR)
    h5.create_dataset("extra", data=_strs(json.dumps(dict(r.extra), sort_keys=True) for r in recs),
                      dtype=_STR)
    h5.create_dataset("failed_id", data=_strs(f.video_id for f in fails), dtype=_STR)
    h5.create_dataset("failed_error", data=_strs(f.error for f in fails), dtype=_STR)
    if with_index:
        h5.create_dataset("index", data=np.array([r.index for r in recs], dtype=np.int64))
        h5.create_dataset("failed_index", data=np.array([f.index for f in fails], dtype=np.int64))


def _read_strs(h5: h5py.File, name: str) -> list[str]:
    ds = h5[name]
    return list(ds.asstr()[()]) if ds.shape[0] else []


def _read_table(h5: h5py.File, with_index: bool) -> tuple[list[VideoRecord], list[FailureRecord]]:
    feats = h5["features"][()]
    ids = _read_strs(h5, "video_id")
    n = len(ids)
    idx = h5["index"][()] if with_index else np.arange(n)
    score, diff = h5["score"][()], h5["difficulty"][()]
    split, cls = _read_strs(h5, "split"), _read_strs(h5, "cls")
    folds, extra = _read_strs(h5, "folds"), _read_strs(h5, "extra")
    if not (feats.shape[0] == len(idx) == len(score) == len(diff) == len(split) == len(cls)
            == len(folds) == len(extra) == n):
        raise ValueError("datasets have different lengths")
    recs = [VideoRecord(int(idx[i]), ids[i], feats[i], float(score[i]),
                        None if np.isnan(diff[i]) else float(diff[i]), split[i], cls[i],
                        json.loads(folds[i]), json.loads(extra[i])) for i in range(n)]
    fids, ferr = _read_strs(h5, "failed_id"), _read_strs(h5, "failed_error")
    fidx = h5["failed_index"][()] if with_index else np.full(len(fids), -1)
    if not len(fids) == len(ferr) == len(fidx):
        raise ValueError("failure datasets have different lengths")
    fails = [FailureRecord(int(fidx[i]), fids[i], ferr[i]) for i in range(len(fids))]
    return recs, fails


# ------------------------------------------------------------------------------------------ the parts
def parts_dir(out_path: str | os.PathLike) -> Path:
    out = Path(out_path)
    return out.with_name(out.name + ".parts")


class PartWriter:
    """Buffers finished videos/failures of one rank; writes them as an atomic part file.

    ``every``: videos (finished or failed) per part; ``every_s``: also write when the oldest buffered
    video waited this long (so a slow run loses little on a kill). Call ``close()`` at the end.
    """

    def __init__(self, out_path: str | os.PathLike, attrs: Mapping[str, Any], feature_shape: Sequence[int],
                 *, rank: int = 0, every: int = 8, every_s: float = 120.0):
        self.dir = parts_dir(out_path)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(self.dir, e) from e
        self.attrs = dict(attrs)
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.rank, self.every, self.every_s = rank, max(1, every), every_s
        seqs = [int(m.group(2)) for p in self.dir.iterdir()
                if (m := _PART_RE.match(p.name.removesuffix(".tmp"))) and int(m.group(1)) == rank]
        self.seq = max(seqs, default=-1) + 1
        self._recs: list[VideoRecord] = []
        self._fails: list[FailureRecord] = []
        self._since: float | None = None
        self.n_parts = 0
        self.n_written = 0          # videos in the parts this writer wrote

    def add(self, rec: VideoRecord) -> None:
        self._recs.append(rec)
        self._tick()

    def add_failure(self, fail: FailureRecord) -> None:
        self._fails.append(fail)
        self._tick()

    def _tick(self) -> None:
        if self._since is None:
            self._since = time.monotonic()
        if (len(self._recs) + len(self._fails) >= self.every
                or time.monotonic() - self._since >= self.every_s):
            self.flush()

    def flush(self) -> Path | None:
        if not self._recs and not self._fails:
            return None
        path = self.dir / f"part-{self.rank:03d}-{self.seq:06d}.h5"
        try:
            with atomic_h5(path, path.with_name(path.name + ".tmp")) as h5:
                _write_table(h5, self._recs, self._fails, self.feature_shape, with_index=True)
                _encode_attrs(h5, {**self.attrs, "part_rank": self.rank, "part_seq": self.seq,
                                   "code_version": self.attrs.get("code_version", "")})
        except CacheWriteError as e:
            kept = f"the {self.n_written} videos finished before are kept in {self.dir}" if self.n_written \
                else f"earlier parts in {self.dir} are kept"
            raise CacheWriteError(f"{e}; {kept}: re-run the same command to resume", errno=e.errno) from e
        log.debug("wrote %s (%d videos, %d failed)", path, len(self._recs), len(self._fails))
        self.seq += 1
        self.n_parts += 1
        self.n_written += len(self._recs)
        self._recs, self._fails, self._since = [], [], None
        return path

    def close(self) -> None:
        self.flush()


@dataclass
class PartsState:
    """What earlier (interrupted) runs left: finished indices and failures, from readable parts."""
    done: set[int] = field(default_factory=set)
    failed: dict[int, FailureRecord] = field(default_factory=dict)
    n_parts: int = 0
    removed: list[str] = field(default_factory=list)     # leftovers/unreadable parts deleted


def _part_files(d: Path) -> list[Path]:
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _PART_RE.match(p.name))


def scan_parts(out_path: str | os.PathLike, identity: Mapping[str, Any] | None = None, *,
               cleanup: bool = True) -> PartsState:
    """List the part files of ``out_path``; check their identity attributes against ``identity``.

    ``cleanup``: delete ``.tmp`` leftovers and unreadable parts (their videos are redone). Only one
    process may clean up (rank 0, before the others start writing). Raises CacheMismatch when a part
    was written with different settings (e.g. other weights).
    """
    d = parts_dir(out_path)
    st = PartsState()
    if not d.is_dir():
        return st
    if cleanup:
        for p in d.iterdir():
            if p.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()
                st.removed.append(p.name)
    for p in _part_files(d):
        try:
            with h5py.File(p, "r") as h5:
                attrs = decode_attrs(h5.attrs)
                idx = h5["index"][()]
                fidx = h5["failed_index"][()]
                fids, ferr = _read_strs(h5, "failed_id"), _read_strs(h5, "failed_error")
                n_ids = h5["video_id"].shape[0]
                if h5["features"].shape[0] != len(idx) or n_ids != len(idx) or len(fids) != len(fidx):
                    raise ValueError("inconsistent lengths")
        except (OSError, ValueError, KeyError) as e:
            log.warning("unreadable part file %s (%s): %s", p, e, "deleted, its videos are redone"
                        if cleanup else "ignored")
            if cleanup:
                with contextlib.suppress(OSError):
                    p.unlink()
                st.removed.append(p.name)
            continue
        if identity is not None:
            diffs = attr_differences(attrs, {k: v for k, v in identity.items() if k in IDENTITY_ATTRS})
            if diffs:
                raise CacheMismatch(mismatch_message(
                    f"Part file {p} (from an earlier, interrupted run)", diffs,
                    f"Re-run with the earlier settings to resume it, or pass --force to discard "
                    f"{d} and start again."), attribute=diffs[0][0])
        st.n_parts += 1
        st.done.update(int(i) for i in idx)
        for i, vid, err in zip(fidx, fids, ferr):
            st.failed[int(i)] = FailureRecord(int(i), vid, err)
    for i in st.done:
        st.failed.pop(i, None)
    return st


def merge_parts(out_path: str | os.PathLike, *, extra_attrs: Mapping[str, Any] | None = None,
                remove_parts: bool = True, labels: Mapping[int, Any] | None = None) -> Path:
    """Merge ``<out>.parts/part-*.h5`` into the final file ``out_path`` (temp name, then ``os.replace``).

    Every index ``0..n_videos-1`` must be finished or failed in some part (else CacheError: resume the
    extraction first). A video finished in one part and failed in another counts as finished; a video
    in two parts keeps the later part's copy. The merged file gets the parts' attributes plus
    ``extra_attrs`` (e.g. ``created``), ``n_failed`` and ``complete=1``.

    ``labels``: index -> the current labels of that video (anything with `LABEL_FIELDS` attributes, e.g. a
    data.Sample): they replace the labels stored in the parts, which an interrupted run may have written
    from an older annotation file (a warning says how many changed). A failure to write the merged file
    is a CacheWriteError; the parts are kept.
    """
    out = Path(out_path)
    d = parts_dir(out)
    files = _part_files(d)
    if not files:
        raise CacheError(f"No part files in {d}: nothing to merge. Run the extraction "
                         f"(python -m extract features ... --out {out}) first.")
    recs: dict[int, VideoRecord] = {}
    fails: dict[int, FailureRecord] = {}
    attrs0: dict[str, Any] | None = None
    versions: list[str] = []
    shape = None
    for p in files:       # sorted by (rank, seq): a later part wins
        try:
            with h5py.File(p, "r") as h5:
                attrs = decode_attrs(h5.attrs)
                r, f = _read_table(h5, with_index=True)
                pshape = h5["features"].shape[1:]
        except (OSError, ValueError, KeyError) as e:
            raise CacheError(f"Part file {p} cannot be read ({e}). Re-run the extraction, which "
                             f"deletes unreadable parts and redoes their videos.") from e
        if attrs0 is None:
            attrs0, shape = attrs, tuple(pshape)
        else:
            diffs = attr_differences(attrs, {k: attrs0.get(k, "<absent>") for k in IDENTITY_ATTRS})
            if diffs:
                raise CacheMismatch(mismatch_message(f"Part file {p}", diffs,
                                                     f"The parts in {d} come from different runs; "
                                                     f"remove {d} and re-run the extraction."),
                                    attribute=diffs[0][0])
            if tuple(pshape) != shape:
                raise CacheError(f"Part file {p}: feature shape {pshape} differs from {shape}; "
                                 f"remove {d} and re-run the extraction.")
        if (cv := attrs.get("code_version")) and cv not in versions:
            versions.append(cv)
        for x in r:
            recs[x.index] = x
        for x in f:
            fails[x.index] = x
    assert attrs0 is not None and shape is not None
    for i in recs:
        fails.pop(i, None)
    n_total = int(attrs0.get("n_videos", len(recs) + len(fails)))
    missing = sorted(set(range(n_total)) - recs.keys() - fails.keys())
    if missing:
        raise CacheError(f"{d} is incomplete: {len(missing)} of {n_total} videos are neither finished "
                         f"nor failed (first missing positions: {missing[:5]}). Re-run the same "
                         f"extraction command to finish them; it resumes from these parts.")
    order = sorted(recs)
    forder = sorted(fails)
    if labels is not None:
        missing_labels = [i for i in order if i not in labels]
        if missing_labels:
            raise CacheError(f"no labels given for {len(missing_labels)} merged videos (first position "
                             f"{missing_labels[0]}); remove {d} and re-run the extraction.")
        stale = _count_label_changes([_label_texts(recs[i]) for i in order],
                                     [_label_texts(labels[i]) for i in order])
        if stale:
            log.warning("%s: %s since the interrupted run wrote its parts; the merged cache has the current "
                        "labels", out, describe_label_changes(stale))
        recs = {i: _relabel(recs[i], labels[i]) for i in order}
    attrs = {k: v for k, v in attrs0.items() if k not in ("part_rank", "part_seq")}
    attrs["code_version"] = ",".join(versions) if versions else attrs.get("code_version", "unknown")
    attrs.update(extra_attrs or {})
    attrs.setdefault("created", now_iso())
    attrs["n_failed"] = len(forder)
    attrs["complete"] = 1
    try:
        write_cache(out, [recs[i] for i in order], [fails[i] for i in forder], attrs, feature_shape=shape)
    except CacheWriteError as e:
        raise CacheWriteError(f"{e}; the finished videos are kept in {d}: re-run the same command to merge "
                              f"them", errno=e.errno) from e
    if remove_parts:
        shutil.rmtree(d, ignore_errors=True)
    log.info("merged %d part files into %s (%d videos, %d failed)", len(files), out, len(order), len(forder))
    return out


def write_cache(out_path: str | os.PathLike, records: Sequence[VideoRecord], failures: Sequence[FailureRecord],
                attrs: Mapping[str, Any], *, feature_shape: Sequence[int] | None = None) -> Path:
    """Write a final cache file atomically (``<out>.tmp-<pid>`` then ``os.replace``). Records in order.
    The attribute ``labels_sha256`` is (re)computed from the records."""
    out = Path(out_path)
    if feature_shape is None:
        if not records:
            raise ValueError("feature_shape is needed when there are no records")
        feature_shape = records[0].features.shape
    attrs = dict(attrs)
    attrs.setdefault("schema_version", SCHEMA_VERSION)
    attrs.setdefault("created", now_iso())
    attrs.setdefault("n_failed", len(failures))
    attrs.setdefault("complete", 1)
    attrs["labels_sha256"] = labels_sha256(records)
    with atomic_h5(out, out.with_name(f"{out.name}.tmp-{os.getpid()}")) as h5:
        _write_table(h5, records, failures, feature_shape, with_index=False)
        _encode_attrs(h5, attrs)
    return out


def remove_stale_tmp(out_path: str | os.PathLike) -> list[str]:
    """Delete ``<out>.tmp-*`` left by a merge that was killed (never a complete file)."""
    out = Path(out_path)
    removed = []
    if out.parent.is_dir():
        for p in out.parent.glob(out.name + ".tmp-*"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p.name)
    return removed


def check_not_folder(out_path: str | os.PathLike) -> None:
    """CacheError when ``out_path`` names an existing folder (a cache is one file)."""
    out = Path(out_path)
    if out.is_dir():
        raise CacheError(f"{out} is a folder, not a cache file: give the path of a .h5 file "
                         f"(e.g. {out / 'features.h5'})")


def check_free_space(out_path: str | os.PathLike, need_bytes: int, what: str = "the feature cache") -> None:
    """CacheWriteError (ENOSPC) when the disk of ``out_path`` has less than ``need_bytes`` free."""
    out = Path(out_path)
    folder = next((p for p in [out.parent, *out.parent.parents] if p.is_dir()), None)
    if folder is None:
        return
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return
    free = st.f_bavail * st.f_frsize
    if free < need_bytes:
        raise CacheWriteError(f"not enough disk space for {what} {out}: about {_mib(need_bytes)} needed, "
                              f"{_mib(free)} free on {folder}; free space or choose another output path",
                              errno=_errno.ENOSPC)


def _mib(n: float) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


def clear_outputs(out_path: str | os.PathLike) -> None:
    """--force: remove the final file, its parts and temp leftovers (never a folder named as ``out``)."""
    out = Path(out_path)
    check_not_folder(out)
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    shutil.rmtree(parts_dir(out), ignore_errors=True)
    remove_stale_tmp(out)


def final_status(out_path: str | os.PathLike, identity: Mapping[str, Any]) -> str:
    """``"absent"`` | ``"complete"`` (a complete final file with matching identity attributes).

    Raises CacheMismatch when the final file exists with other settings, CacheError when it cannot be
    read; both messages say to pass --force.
    """
    out = Path(out_path)
    check_not_folder(out)
    if not out.exists():
        return "absent"
    try:
        with h5py.File(out, "r") as h5:
            attrs = decode_attrs(h5.attrs)
    except OSError as e:
        raise CacheError(f"{out} exists but cannot be read as HDF5 ({e}). Delete it or pass --force.") from e
    diffs = attr_differences(attrs, {k: v for k, v in identity.items() if k in IDENTITY_ATTRS})
    if diffs:
        raise CacheMismatch(mismatch_message(
            f"The existing cache {out}", diffs,
            "Choose another --out, or pass --force to replace it."), attribute=diffs[0][0])
    return "complete"


def sync_labels(out_path: str | os.PathLike, labels: Mapping[str, Any], *,
                frame_keys: Sequence[str] = ()) -> dict[str, int]:
    """Bring the labels of the complete cache ``out_path`` up to date with ``labels`` (video_id -> anything
    with `LABEL_FIELDS` attributes, e.g. data.Sample). Returns the number of changed values per field
    (empty when nothing changed; `describe_label_changes` words it).

    Fast path: the file's ``labels_sha256`` equals the fingerprint of ``labels``. Otherwise the stored
    labels are compared one by one and, when some differ, the file is rewritten atomically with the same
    features and failures and the new labels (attribute ``labels_updated`` records when). Refused
    (CacheMismatch) when a stored video has no labels, or when an ``extra`` key in ``frame_keys`` (one that
    decides which frames are read, e.g. MTL-AQA's end_frame) changed: those features are stale.
    A file that cannot be rewritten raises CacheWriteError naming it.
    """
    out = Path(out_path)
    try:
        with h5py.File(out, "r") as h5:
            attrs = decode_attrs(h5.attrs)
            ids = _read_strs(h5, "video_id")
            score, diff = h5["score"][()], h5["difficulty"][()]
            split, cls = _read_strs(h5, "split"), _read_strs(h5, "cls")
            folds, extra = _read_strs(h5, "folds"), _read_strs(h5, "extra")
    except (OSError, KeyError, ValueError) as e:
        raise CacheError(f"{out} cannot be read ({e}). Delete it or pass --force.") from e
    missing = [v for v in ids if v not in labels]
    if missing:
        raise CacheMismatch(f"{out} holds {len(missing)} videos the dataset no longer lists (e.g. {missing[0]!r}); "
                            f"re-extract with --force or choose another output path", attribute="video_id")
    new_rows = [labels[v] for v in ids]
    if attrs.get("labels_sha256") == labels_sha256(new_rows):
        return {}
    old_rows = []
    for i in range(len(ids)):
        d = float(diff[i])
        old_rows.append((repr(float(score[i])), "none" if math.isnan(d) else repr(d), split[i], cls[i],
                         json.dumps(json.loads(folds[i]), sort_keys=True),
                         json.dumps(json.loads(extra[i]), sort_keys=True)))
    stale = []
    for k in frame_keys:
        for v, old_extra, lab in zip(ids, extra, new_rows):
            was, now = json.loads(old_extra).get(k), dict(lab.extra).get(k)
            if was != now:
                stale.append((v, k, was, now))
    if stale:
        v, k, was, now = stale[0]
        raise CacheMismatch(f"{out}: {k} changed for {len(stale)} videos (e.g. {v}: {was} -> {now}), so their "
                            f"features were read from other frames; re-extract with --force", attribute=k)
    counts = _count_label_changes(old_rows, [_label_texts(r) for r in new_rows])
    if not counts:
        return {}           # an older file without the fingerprint, same labels: nothing to rewrite
    try:
        with h5py.File(out, "r") as h5:
            recs, fails = _read_table(h5, with_index=False)
            shape = tuple(h5["features"].shape[1:])
    except (OSError, KeyError, ValueError) as e:
        raise CacheError(f"{out} cannot be read ({e}). Delete it or pass --force.") from e
    recs = [_relabel(r, lab) for r, lab in zip(recs, new_rows)]
    attrs = {k: v for k, v in attrs.items() if k != "labels_sha256"}
    attrs["labels_updated"] = now_iso()
    try:
        write_cache(out, recs, fails, attrs, feature_shape=shape)
    except CacheWriteError as e:
        raise CacheWriteError(f"{describe_label_changes(counts)} in the dataset but {e}; the cache keeps "
                              f"the old labels until then", errno=e.errno) from e
    log.info("%s: %s; labels refreshed (features kept)", out, describe_label_changes(counts))
    return counts
