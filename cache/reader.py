"""Reading a feature cache into memory in one call.

    from cache import load_cache
    c = load_cache("artifacts/features/aqa7-i3d-1a2b3c4d-default.h5", expect={"backbone": "i3d"})
    c.features            # (N, V, C, 1024) float16
    c.mean_over_clips()   # (N, V, 1024) float32
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from .store import (CacheError, CacheMismatch, CacheMissing, attr_differences, decode_attrs,
                    mismatch_message, parts_dir)

_REMEDY = "Re-run `make features` (python -m extract features ... --out {path})."


@dataclass
class FeatureCache:
    """A whole feature cache in memory. Arrays are indexed by video position (dataset order)."""
    path: Path
    features: np.ndarray            # (N, V, C, D) float16
    video_ids: np.ndarray           # (N,) str
    scores: np.ndarray              # (N,) float64, evaluation scale
    difficulty: np.ndarray          # (N,) float64, NaN = none
    split: np.ndarray               # (N,) str: "train" | "test"
    cls: np.ndarray                 # (N,) str
    folds: list[dict]               # per video: protocol -> fold id
    extra: list[dict]               # per video: raw annotations (JSON)
    views: list[dict]               # V view descriptions (name, shift, flip, crop, role)
    attrs: dict[str, Any]           # file attributes, JSON ones decoded
    failed: dict[str, str] = field(default_factory=dict)   # video_id -> error

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def mean_over_clips(self) -> np.ndarray:
        """(N, V, D) float32: the video feature of every view (mean over the clips)."""
        return self.features.astype(np.float32).mean(axis=2)

    @property
    def view_names(self) -> list[str]:
        return [v.get("name", str(i)) for i, v in enumerate(self.views)]

    @property
    def test_view_index(self) -> int:
        """Index of the (first) view with role "test"."""
        for i, v in enumerate(self.views):
            if v.get("role") == "test":
                return i
        raise CacheError(f"{self.path} holds no test view (views: {self.view_names}); "
                         f"re-extract with --views default.")

    @property
    def train_view_indices(self) -> list[int]:
        """Indices of the views with role "train" (empty for a test-only cache)."""
        return [i for i, v in enumerate(self.views) if v.get("role") == "train"]

    def index_of(self, video_id: str) -> int:
        hits = np.flatnonzero(self.video_ids == video_id)
        if not len(hits):
            raise KeyError(f"video {video_id!r} is not in {self.path}")
        return int(hits[0])


def _strs(h5: h5py.File, name: str) -> np.ndarray:
    ds = h5[name]
    return np.array(ds.asstr()[()] if ds.shape[0] else [], dtype=str)


def check_attrs(path: str | os.PathLike, attrs: Mapping[str, Any], expect: Mapping[str, Any] | None) -> None:
    """Raise CacheMismatch naming the first attribute of ``expect`` that ``attrs`` does not match."""
    if not expect:
        return
    diffs = attr_differences(attrs, expect)
    if diffs:
        raise CacheMismatch(mismatch_message(
            f"Feature cache {path}", diffs,
            "It was made with other settings: re-extract with the settings you want "
            "(python -m extract features ... --force) or point to the matching cache."),
            attribute=diffs[0][0])


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Only the attributes (cheap); same errors as load_cache."""
    p = Path(path)
    _check_exists(p)
    try:
        with h5py.File(p, "r") as h5:
            return decode_attrs(h5.attrs)
    except OSError as e:
        raise CacheError(_corrupt(p, e)) from e


def _check_exists(p: Path) -> None:
    if p.is_dir():
        raise CacheError(f"{p} is a folder, not a feature cache file: give the path of the .h5 file")
    if p.exists():
        return
    msg = f"Feature cache {p} does not exist. " + _REMEDY.format(path=p)
    if parts_dir(p).is_dir():
        msg = (f"Feature cache {p} does not exist yet, but {parts_dir(p)} holds the parts of an "
               f"interrupted extraction: re-run the same extraction command to finish it.")
    raise CacheMissing(msg)


def _corrupt(p: Path, e: Exception) -> str:
    return (f"Feature cache {p} is corrupt or not a feature cache ({type(e).__name__}: {e}). "
            f"Delete it and " + _REMEDY.format(path=p)[0].lower() + _REMEDY.format(path=p)[1:])


def load_cache(path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> FeatureCache:
    """Load the whole cache at ``path``; refuse it (CacheMismatch) if an attribute differs from ``expect``.

    ``expect`` values may be plain values or, for JSON attributes (views, clip_rule, frame_config),
    Python objects or JSON text. Missing/corrupt files raise CacheError (CacheMissing) naming the file.
    """
    p = Path(path)
    _check_exists(p)
    try:
        with h5py.File(p, "r") as h5:
            attrs = decode_attrs(h5.attrs)
            check_attrs(p, attrs, expect)
            feats = h5["features"][()]
            ids = _strs(h5, "video_id")
            scores = h5["score"][()].astype(np.float64)
            diff = h5["difficulty"][()].astype(np.float64)
            split, cls = _strs(h5, "split"), _strs(h5, "cls")
            folds = [json.loads(s) for s in _strs(h5, "folds")]
            extra = [json.loads(s) for s in _strs(h5, "extra")]
            failed = dict(zip(_strs(h5, "failed_id").tolist(), _strs(h5, "failed_error").tolist()))
    except CacheError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise CacheError(_corrupt(p, e)) from e
    n = feats.shape[0]
    if feats.ndim != 4 or not (len(ids) == len(scores) == len(diff) == len(split) == len(cls)
                               == len(folds) == len(extra) == n):
        raise CacheError(_corrupt(p, ValueError(f"inconsistent dataset lengths (features {feats.shape})")))
    views = attrs.get("views") or []
    if not isinstance(views, list) or len(views) != feats.shape[1]:
        raise CacheError(_corrupt(p, ValueError(f"{len(views)} views in attrs, {feats.shape[1]} in features")))
    return FeatureCache(p, feats, ids, scores, diff, split, cls, folds, extra, views, attrs, failed)
