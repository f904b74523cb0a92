"""Tiny feature caches for tests, written by the cache's own writer (`cache.store.write_cache`), so tests
of stage two do not need stage one and a change of the cache's schema reaches them.

    from tests._cachefixture import write_fake_cache, learnable_cache
    write_fake_cache(path, features, scores, difficulty, split, cls, folds, views, attrs)
    path = learnable_cache(tmp_path / "c.h5", n=60, dim=32, seed=0)   # features carry the score

Read them back with `cache.load_cache`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cache.store import VideoRecord, write_cache

DEFAULT_VIEWS = [
    {"name": "test", "shift": 0, "flip": False, "crop": "center", "role": "test"},
    {"name": "train_s0", "shift": 0, "flip": False, "crop": "center", "role": "train"},
    {"name": "train_s0_flip", "shift": 0, "flip": True, "crop": "center", "role": "train"},
    {"name": "train_s1", "shift": 1, "flip": False, "crop": "center", "role": "train"},
]


def write_fake_cache(path, features, scores, difficulty=None, split=None, cls=None, folds=None,
                     views=None, attrs: Mapping[str, Any] | None = None, video_ids=None) -> Path:
    """Write a feature cache file.

    features (N, V, C, D) array (stored float16); scores (N,); difficulty (N,) or None (stored NaN);
    split (N,) "train"/"test" (default: all "train"); cls (N,) (default: the dataset attr);
    folds: list of N dicts or None ({}); views: V view dicts (default: DEFAULT_VIEWS[:V] shape-matched);
    attrs: overrides of the default file attributes. Returns the path.
    """
    path = Path(path)
    feats = np.asarray(features)
    if feats.ndim != 4:
        raise ValueError(f"features must be (N, V, C, D), got {feats.shape}")
    n, v, c, _ = feats.shape
    scores = np.asarray(scores, dtype=np.float64)
    diff = (np.full(n, np.nan) if difficulty is None else np.asarray(difficulty, dtype=np.float64))
    if views is None:
        if v > len(DEFAULT_VIEWS):
            views = DEFAULT_VIEWS[:1] + [{"name": f"train_{i}", "shift": 0, "flip": bool(i % 2),
                                          "crop": "center", "role": "train"} for i in range(v - 1)]
        else:
            views = DEFAULT_VIEWS[:v]
    base_attrs = {
        "schema_version": 1, "dataset": "synthetic", "backbone": "i3d", "weights_source": "random",
        "weights_sha256": "random", "normalization": "imagenet",
        "clip_rule": json.dumps({"T": 103, "n_clips": c, "clip_len": 16}),
        "frame_config": json.dumps({"resize_hw": [455, 256], "crop": 224}),
        "code_version": "test", "created": "1970-01-01T00:00:00+00:00",
    }
    base_attrs.update(attrs or {})
    base_attrs["views"] = list(views)
    dataset = str(base_attrs["dataset"])
    split = ["train"] * n if split is None else list(split)
    cls = [dataset] * n if cls is None else list(cls)
    folds = [{} for _ in range(n)] if folds is None else list(folds)
    ids = [f"v{i:05d}" for i in range(n)] if video_ids is None else list(video_ids)
    if not (len(scores) == len(diff) == len(split) == len(cls) == len(folds) == len(ids) == n):
        raise ValueError("write_fake_cache: per-video arrays must all have N entries")
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [VideoRecord(index=i, video_id=ids[i], features=feats[i], score=float(scores[i]),
                           difficulty=None if np.isnan(diff[i]) else float(diff[i]), split=str(split[i]),
                           cls=str(cls[i]), folds=dict(folds[i]))
               for i in range(n)]
    return write_cache(path, records, [], base_attrs, feature_shape=feats.shape[1:])


def learnable_features(scores, n_views: int = 4, n_clips: int = 2, dim: int = 32, noise: float = 0.3,
                       seed: int = 0, scale: float = 100.0) -> np.ndarray:
    """(N, V, C, D) features that carry the score: a fixed random direction times the centred score
    (plus a weaker squared term), per-view offsets and per-clip Gaussian noise."""
    rng = np.random.default_rng(seed)
    s = (np.asarray(scores, dtype=np.float64) / scale - 0.5) * 2.0          # about [-1, 1]
    u, w = rng.standard_normal(dim), rng.standard_normal(dim)
    base = s[:, None] * u + 0.3 * (s[:, None] ** 2) * w                      # (N, D)
    view_off = 0.2 * rng.standard_normal((n_views, dim))
    feats = (base[:, None, None, :] + view_off[None, :, None, :]
             + noise * rng.standard_normal((s.size, n_views, n_clips, dim)))
    return feats.astype(np.float32)


def learnable_cache(path, n: int = 60, dim: int = 32, n_views: int = 4, n_clips: int = 2, seed: int = 0,
                    test_fraction: float = 0.3, dd: bool = False, classes: Sequence[str] | None = None,
                    folds: Sequence[Mapping[str, str]] | None = None, dataset: str = "synthetic",
                    noise: float = 0.3) -> Path:
    """A cache of `n` videos whose features carry the score (see learnable_features).

    Scores are uniform in [0, 100]. With `dd`, difficulties come from {2.0, 2.5, 3.0, 3.5} and
    score = completeness * difficulty with completeness in [0, 28] (so theta 30 covers it). With
    `classes`, videos are dealt round-robin to them.
    """
    rng = np.random.default_rng(seed + 1000)
    if dd:
        difficulty = rng.choice([2.0, 2.5, 3.0, 3.5], size=n)
        comp = rng.uniform(0, 28, size=n)
        scores = comp * difficulty
        feat_src = comp / 28.0 * 100.0
    else:
        difficulty = None
        scores = rng.uniform(0, 100, size=n)
        feat_src = scores
    feats = learnable_features(feat_src, n_views=n_views, n_clips=n_clips, dim=dim, seed=seed, noise=noise)
    split = np.where(rng.random(n) < test_fraction, "test", "train")
    cls = None if classes is None else [classes[i % len(classes)] for i in range(n)]
    return write_fake_cache(path, feats, scores, difficulty, split, cls, folds, None, {"dataset": dataset})
