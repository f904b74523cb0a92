"""Score a new clip with a trained run: the "coach with a new video" use.

    python -m evaluate score my_dive.mp4 --run artifacts/runs/mtl_aqa/all/core_dd/seed0 --difficulty 3.2
    python -m evaluate score frames_folder/ --run artifacts/runs/aqa7/diving/core/seed0 --voters 10 --json

What happens, and why each step is tied to the run:
1. The run's ``config.json`` names its feature cache and holds the cache attributes it was trained on.
   The cache file is opened with those attributes as expectations (``cache.load_cache(expect=...)``),
   so a cache re-extracted with other settings since training is refused, naming the attribute.
2. The backbone is loaded with ``extract.weights.load_i3d`` from the cache's ``weights_source`` (or
   ``--weights``), and the sha256 of those weights must equal the cache's ``weights_sha256``: features
   of other weights would be compared with exemplars they were never comparable to, so a mismatch is
   refused (ScoreError), never warned about.
3. Frames: the cache's clip rule gives T (103 for AQA-7/MTL-AQA, 160 for JIGSAWS). ``sampling="even"``
   (default) takes T frames spread evenly over the whole clip (``data.base.read_even``: the centres of T
   equal segments), so the whole attempt is seen whatever its length; ``"first"`` takes the first T
   frames. Both equal the training window when the clip is cut like the dataset's samples (T frames at
   the native rate: an AQA-7/MTL-AQA clip trimmed to the dive); a clip with fewer than T frames is
   refused with the number it needs, except for a run on a CSV dataset, whose clips follow that dataset's
   rule (any length, frames repeated when short: ``data.csv_dataset.read_resampled``; the notes say how
   the clip was sampled). A video file is read with PyAV, a frame folder in natural name order. A portrait
   or unusual aspect ratio gets a note of how it is resized (``data.transforms.describe_resize``).
4. Features: ``extract.pipeline.featurize_frames`` with the cache's *test* view and frame config
   (resize, crop, normalisation), its ``n_clips`` and, on CUDA, its extraction precision; the per-clip features are rounded to float16 as the
   cache stores them, then averaged over clips (as the trainer does).
5. Head: ``train_head.loop.build_run_head`` from the run's typed config (as training built it) and groups.json, then
   ``model_selected.pt`` (``model="selected"``, default: the validation-selected epoch) or ``model_final.pt``
   (``model="final"``: the last epoch), weights_only=True. The selected model comes with a note when the
   run's validation split (summary.json ``n_val``) is too small to trust: fewer than
   ``train_head.protocol.MIN_VAL_VIDEOS`` (10) videos, where the selected epoch is close to a guess; the
   note gives both models' test rho. With no validation split the selected model is the final one.
6. Exemplars: M voters drawn (seeded) from the run's *training pool* (``split.json["train"]``: the
   training videos minus the validation split, exactly the trainer's exemplar pool) with
   ``train_head.pairs.draw_voters``, same difficulty for DD heads (then ``difficulty`` is required).
   If the pool has no video of that difficulty the nearest difficulty is used and the result says so.
Scores are on the run's evaluation scale (AQA-7: normalised to [0, 100] per class; MTL-AQA: final score;
JIGSAWS: GRS). Per exemplar: its id and score, ``predicted_difference`` = predicted relative score
(query minus exemplar) in the head's target units (completeness for DD heads), and ``prediction`` = the
score that voter predicts. ``spread`` is the std (population), min and max of those predictions.
"""
from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import numpy as np

from evaluate.score_inputs import (ScoreError, _as_obj, _clip_notes, _model_notes, load_run,  # noqa: F401
                                   read_frames)

log = logging.getLogger(__name__)

# cache attributes that decide what a feature means; all must match between the run and the cache file
_IDENTITY_ATTRS = ("dataset", "backbone", "weights_sha256", "normalization", "clip_rule", "frame_config",
                   "views")


@functools.lru_cache(maxsize=1)
def _backbone(source: str, device: str):
    """The I3D of `source` on `device`, kept for the next call: scoring several clips in one process
    (a notebook, a batch script, the tests) pays the load once. Eval mode, only used under inference_mode."""
    import torch

    from extract.weights import load_i3d
    dev = torch.device(device)
    return load_i3d(source, device=dev, fuse_bn=dev.type == "cpu")


def _device(name: str):
    from extract.devices import resolve_device
    try:
        return resolve_device(name)
    except ValueError as e:
        raise ScoreError(str(e)) from None


def score_video(video: str | Path, run_dir: str | Path, *, difficulty: float | None = None, voters: int = 10,
                device: str = "auto", sampling: str = "even", seed: int = 0,
                weights: str | None = None, model: str = "selected") -> dict:
    """Predict the score of one clip with a run; returns a JSON-serialisable dict (module docstring).
    `model`: "selected" (the validation-selected epoch, model_selected.pt) or "final" (model_final.pt)."""
    if model not in ("selected", "final"):
        raise ScoreError(f"model must be 'selected' or 'final', got {model!r}")
    which = model                      # `model` names the backbone below
    import torch

    from cache import CacheMismatch, load_cache
    from cache.store import CacheError
    from data.transforms import FrameConfig, View
    from extract.pipeline import featurize_frames
    from extract.weights import weights_sha256
    from train_head.heads import HEADS
    from train_head.loop import build_run_head
    from train_head.pairs import draw_voters

    run = load_run(run_dir)
    cfg, rc = run["config"], run["run_config"]          # config.json as written; the typed config
    head_name = rc.head
    head_cls = HEADS[head_name]                          # the typed config refuses unknown heads
    if voters < 1:
        raise ScoreError(f"--voters must be >= 1, got {voters}")
    if head_cls.dd:
        if difficulty is None:
            raise ScoreError(f"head {head_name!r} scores completeness x difficulty: pass --difficulty D "
                             "(the dive's degree of difficulty)")
        if not (math.isfinite(difficulty) and difficulty > 0):
            raise ScoreError(f"--difficulty must be a positive number, got {difficulty}")
    elif difficulty is not None:
        log.info("head %s does not use difficulty; --difficulty %s ignored", head_name, difficulty)

    # ---- the cache, checked against what the run was trained on
    cache_path = rc.cache                                # required by RunConfig: load_run checked it
    run_attrs = cfg.get("cache_attrs") or {}
    expect = {k: _as_obj(run_attrs[k]) for k in _IDENTITY_ATTRS if k in run_attrs}
    try:
        cache = load_cache(cache_path, expect=expect)
    except CacheMismatch as e:
        raise ScoreError(f"the run {run['dir']} was trained on a cache that has changed since:\n{e}") from None
    except CacheError as e:
        raise ScoreError(f"the run's feature cache is not usable (the exemplars come from it): {e}") from None
    attrs = cache.attrs
    clip_rule = _as_obj(attrs.get("clip_rule")) or {}
    try:
        n_frames, n_clips = int(clip_rule["T"]), int(clip_rule["n_clips"])
        frame_cfg = FrameConfig.from_dict(_as_obj(attrs["frame_config"]))
        test_view = View.from_dict(dict(cache.views[cache.test_view_index]))
    except (KeyError, TypeError, ValueError) as e:
        raise ScoreError(f"{cache_path}: clip_rule/frame_config/views attributes unusable ({e}); "
                         "re-extract the cache") from None
    if attrs.get("backbone", "i3d") != "i3d":
        raise ScoreError(f"{cache_path}: backbone {attrs.get('backbone')!r} is not supported for scoring")

    # ---- the backbone, refused unless its weights are the cache's
    source = weights or str(attrs.get("weights_source", ""))
    want_sha = str(attrs.get("weights_sha256", ""))
    try:
        have_sha = weights_sha256(source)
    except Exception as e:  # WeightsError, download failure, missing file
        raise ScoreError(f"cannot load the backbone weights {source!r} the cache was made with: {e}") from None
    if have_sha != want_sha:
        raise ScoreError(
            f"backbone weights mismatch: the cache {cache_path} (and so the run) was extracted with weights "
            f"sha256 {want_sha} (source {attrs.get('weights_source')!r}), but {source!r} has sha256 {have_sha}. "
            "Features from other weights are not comparable with the exemplars; use the same weights "
            "(--weights PATH) or train a run on a cache extracted with these.")
    dev = _device(device)

    # ---- the clip's feature
    any_length = str(attrs.get("dataset", "")) == "csv"            # the CSV dataset's frame rule
    frames, n_have = read_frames(video, n_frames, sampling, any_length)              # (T, H, W, 3)
    notes = _clip_notes(n_have, n_frames, frames.shape[1], frames.shape[2], frame_cfg)
    model = _backbone(source, str(dev))
    # on CUDA use the precision the cache was extracted with (bf16 autocast by default); CPU is fp32
    precision = str(attrs.get("precision", "auto"))
    precision = precision if precision in ("auto", "bf16", "fp16", "fp32") else "auto"
    clips = featurize_frames(model, frames, [test_view], frame_cfg, n_clips, dev,
                             precision=precision)                                    # (1, C, D)
    f_q = clips[0].astype(np.float16).astype(np.float32).mean(axis=0)               # (D,) as cached

    # ---- the exemplar pool: the run's training pool
    ids = np.asarray(cache.video_ids, dtype=str)
    if run["split"] and run["split"].get("train"):
        want = list(run["split"]["train"])
        pos_of = {v: i for i, v in enumerate(ids)}
        missing = [v for v in want if v not in pos_of]
        if missing:
            raise ScoreError(f"{cache_path} lacks {len(missing)} of the run's training videos "
                             f"(e.g. {missing[0]}); it is not the cache the run was trained on")
        pool = np.array([pos_of[v] for v in want], dtype=np.int64)
    else:
        cls = (run["summary"] or {}).get("cls") or cfg.get("cls")
        keep = np.asarray(cache.split) == "train"
        if cls is not None and cls in set(np.asarray(cache.cls).tolist()):
            keep &= np.asarray(cache.cls) == cls
        pool = np.flatnonzero(keep)
        log.warning("%s has no split.json; exemplars from every training video of class %s", run["dir"], cls)
    if pool.size == 0:
        raise ScoreError(f"no training videos for the run in {cache_path}")
    tv = cache.test_view_index
    pool_f = cache.features[pool, tv].astype(np.float32).mean(axis=1)                # (P, D)
    pool_s = np.asarray(cache.scores, dtype=np.float64)[pool]
    pool_d = np.asarray(cache.difficulty, dtype=np.float64)[pool]
    if head_cls.dd:
        if not np.all(np.isfinite(pool_d) & (pool_d > 0)):
            raise ScoreError(f"{cache_path}: training videos without difficulty, but the head is {head_name!r}")
        pool_t = pool_s / pool_d
    else:
        pool_t = pool_s

    # ---- the head
    groups = None
    if head_cls.tree:
        if not run["groups"] or "groups" not in run["groups"]:
            raise ScoreError(f"{run['dir']}/groups.json missing: a tree head needs its leaf intervals")
        groups = np.asarray(run["groups"]["groups"], dtype=np.float64)
    try:
        state = run["folder"].load(f"model_{which}.pt")
        n_judges = None
        if head_cls.judges:
            from train_head.heads_sdl import n_judges_of
            n_judges = n_judges_of(state, rc.hidden)
        head = build_run_head(rc, pool_f.shape[1], groups, n_judges)        # as training built it
        head.load_state_dict(state)
    except (RuntimeError, ValueError, OSError) as e:
        raise ScoreError(f"{run['dir']}/model_{which}.pt does not fit head {head_name!r} of config.json "
                         f"({e})") from None
    head = head.to(dev).eval()
    summary = run["summary"] or {}
    notes += _model_notes(which, summary)
    with torch.inference_mode():
        fq = torch.from_numpy(f_q[None]).to(dev)                                        # (1, D)
        if head_cls.pairwise:
            rng = np.random.default_rng(seed)
            if head_cls.dd:
                if not np.any(pool_d == difficulty):
                    near = pool_d[np.argmin(np.abs(pool_d - difficulty))]
                    notes.append(f"no training video has difficulty {difficulty:g}; exemplars of the nearest "
                                 f"difficulty {near:g} were used")
                idx, mask = draw_voters(pool_d, np.array([difficulty]), voters, rng)
            else:
                idx, mask = draw_voters(None, None, voters, rng, n_pool=pool.size, n_query=1)
            idx, mask = idx[0][mask[0]], mask[0][mask[0]]                               # valid voters only
            if idx.size < voters:
                notes.append(f"only {idx.size} exemplars available (asked for {voters})")
            fe = torch.from_numpy(pool_f[idx][None]).to(dev)                            # (1, M, D)
            te = torch.from_numpy(pool_t[idx][None]).to(fq)                             # (1, M)
            p = head.predict(fq, fe, te, torch.from_numpy(mask[None]).to(dev))
            per_t = p.per_voter[0].double().cpu().numpy()                               # (M,) target units
            leaf = p.leaf[0].cpu().numpy() if p.leaf is not None else None
        else:
            p = head.predict(fq)
            per_t = p.target.double().cpu().numpy()                                     # (1,)
            idx, leaf = np.empty(0, dtype=np.int64), None
    scale = float(difficulty) if head_cls.dd else 1.0
    per_score = per_t * scale
    exemplars = []
    for j, k in enumerate(idx):
        e = {"video_id": str(ids[pool[k]]), "score": float(pool_s[k]),
             "predicted_difference": float(per_t[j] - pool_t[k]), "prediction": float(per_score[j])}
        if head_cls.dd:
            e["difficulty"] = float(pool_d[k])
        if leaf is not None:
            e["leaf"] = int(leaf[j])
        exemplars.append(e)
    return {
        "score": float(per_score.mean()),
        "video": str(video), "run": str(run["dir"]), "head": head_name, "model": which,
        "epoch": summary.get("selected_epoch" if which == "selected" else "final_epoch"),
        "n_val": summary.get("n_val"),
        "dataset": summary.get("dataset") or cfg.get("dataset"), "cls": summary.get("cls"),
        "difficulty": difficulty if head_cls.dd else None,
        "voters": len(exemplars),
        "exemplars": exemplars,
        "spread": {"std": float(per_score.std()), "min": float(per_score.min()), "max": float(per_score.max())},
        "frames": {"T": n_frames, "n_clips": n_clips, "sampling": sampling, "n_source": n_have},
        "weights_sha256": have_sha, "device": str(dev),
        "scale": "evaluation scale of the run's dataset (AQA-7: normalised to [0, 100] per class)",
        "notes": notes,
    }
