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
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

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


# ----------------------------------------------------------------------------------------------- attrs
def code_version() -> str:
    """The git commit of this checkout (``+dirty`` when tracked files differ), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        def git(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["git", "--no-optional-locks", *args], cwd=here, capture_output=True,
                                  text=True, timeout=20)
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("diff", "--quiet", "HEAD", "--").returncode == 1
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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


@contextlib.contextmanager
def atomic_h5(path: Path, tmp: Path) -> Iterator[h5py.File]:
    """Write an HDF5 file at ``tmp``; on success fsync it and rename it onto ``path``."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(tmp, "w") as h5:
            yield h5
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _strs(values: Iterable[str]) -> np.ndarray:
    return np.array(list(values), dtype=object)


def _write_table(h5: h5py.File, recs: Sequence[VideoRecord], fails: Sequence[FailureRecord],
                 feature_shape: Sequence[int], with_index: bool) -> None:
    n = len(recs)
    feats = np.zeros((n, *feature_shape), dtype=np.float16)
    for i, r in enumerate(recs):
        if tuple(r.features.shape) != tuple(feature_shape):
            raise ValueError(f"video {r.video_id}: features shape {r.features.shape}, "
                             f"expected {tuple(feature_shape)}")
        feats[i] = r.features
    h5.create_dataset("features", data=feats)
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
        self.dir.mkdir(parents=True, exist_ok=True)
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
        with atomic_h5(path, path.with_name(path.name + ".tmp")) as h5:
            _write_table(h5, self._recs, self._fails, self.feature_shape, with_index=True)
            _encode_attrs(h5, {**self.attrs, "part_rank": self.rank, "part_seq": self.seq,
                               "code_version": self.attrs.get("code_version", "")})
        log.debug("wrote %s (%d videos, %d failed)", path, len(self._recs), len(self._fails))
        self.seq += 1
        self.n_parts += 1
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
                    f"Re-run with the earlier settings to resume it, or pass --overwrite to discard "
                    f"{d} and start again."), attribute=diffs[0][0])
        st.n_parts += 1
        st.done.update(int(i) for i in idx)
        for i, vid, err in zip(fidx, fids, ferr):
            st.failed[int(i)] = FailureRecord(int(i), vid, err)
    for i in st.done:
        st.failed.pop(i, None)
    return st


def merge_parts(out_path: str | os.PathLike, *, extra_attrs: Mapping[str, Any] | None = None,
                remove_parts: bool = True) -> Path:
    """Merge ``<out>.parts/part-*.h5`` into the final file ``out_path`` (temp name, then ``os.replace``).

    Every index ``0..n_videos-1`` must be finished or failed in some part (else CacheError: resume the
    extraction first). A video finished in one part and failed in another counts as finished; a video
    in two parts keeps the later part's copy. The merged file gets the parts' attributes plus
    ``extra_attrs`` (e.g. ``created``), ``n_failed`` and ``complete=1``.
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
    attrs = {k: v for k, v in attrs0.items() if k not in ("part_rank", "part_seq")}
    attrs["code_version"] = ",".join(versions) if versions else attrs.get("code_version", "unknown")
    attrs.update(extra_attrs or {})
    attrs.setdefault("created", now_iso())
    attrs["n_failed"] = len(forder)
    attrs["complete"] = 1
    write_cache(out, [recs[i] for i in order], [fails[i] for i in forder], attrs, feature_shape=shape)
    if remove_parts:
        shutil.rmtree(d, ignore_errors=True)
    log.info("merged %d part files into %s (%d videos, %d failed)", len(files), out, len(order), len(forder))
    return out


def write_cache(out_path: str | os.PathLike, records: Sequence[VideoRecord], failures: Sequence[FailureRecord],
                attrs: Mapping[str, Any], *, feature_shape: Sequence[int] | None = None) -> Path:
    """Write a final cache file atomically (``<out>.tmp-<pid>`` then ``os.replace``). Records in order."""
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


def clear_outputs(out_path: str | os.PathLike) -> None:
    """--overwrite: remove the final file, its parts and temp leftovers."""
    out = Path(out_path)
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    shutil.rmtree(parts_dir(out), ignore_errors=True)
    remove_stale_tmp(out)


def final_status(out_path: str | os.PathLike, identity: Mapping[str, Any]) -> str:
    """``"absent"`` | ``"complete"`` (a complete final file with matching identity attributes).

    Raises CacheMismatch when the final file exists with other settings, CacheError when it cannot be
    read; both messages say to pass --overwrite.
    """
    out = Path(out_path)
    if not out.exists():
        return "absent"
    try:
        with h5py.File(out, "r") as h5:
            attrs = decode_attrs(h5.attrs)
    except OSError as e:
        raise CacheError(f"{out} exists but cannot be read as HDF5 ({e}). Delete it or pass --overwrite.") from e
    diffs = attr_differences(attrs, {k: v for k, v in identity.items() if k in IDENTITY_ATTRS})
    if diffs:
        raise CacheMismatch(mismatch_message(
            f"The existing cache {out}", diffs,
            "Choose another --out, or pass --overwrite to replace it."), attribute=diffs[0][0])
    return "complete"
