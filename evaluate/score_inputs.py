"""What `evaluate score` reads besides features: the run folder, the clip's frames, and the notes on both
(how the clip was sampled and resized; a selected model chosen on a validation split too small to trust).
`evaluate.score` (its module docstring describes the rules) re-exports these names."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


class ScoreError(ValueError):
    """A problem the user can fix (wrong run folder, missing difficulty, weights mismatch, ...)."""


def _as_obj(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def read_frames(source: str | Path, n_frames: int, sampling: str = "even",
                any_length: bool = False) -> tuple[np.ndarray, int | None]:
    """(uint8 (n_frames, H, W, 3), frames the clip has or None) from a video file or a frame folder
    (module docstring); `any_length`: the CSV dataset's rule for "even" sampling."""
    from data.base import DataError, read_even, read_first
    from data.csv_dataset import read_resampled

    if sampling not in ("even", "first"):
        raise ScoreError(f"sampling must be 'even' or 'first', got {sampling!r}")
    try:
        if sampling == "even" and any_length:
            return read_resampled(source, n_frames)
        return (read_even if sampling == "even" else read_first)(Path(source), n_frames), None
    except DataError as e:
        raise ScoreError(f"cannot read the clip: {e}") from None


def _clip_notes(n: int | None, t: int, h: int, w: int, frame_cfg) -> list[str]:
    """How the clip was sampled (CSV rule, n != T) and resized (portrait or unusual aspect ratio)."""
    from data.csv_dataset import USUAL_ASPECT
    from data.transforms import describe_resize

    notes = []
    if n is not None and n > t:
        notes.append(f"the clip has {n} frames: {t} were taken evenly over it (about every {n / t:.1f}th)")
    elif n is not None and n < t:
        notes.append(f"the clip has {n} frames, fewer than the window of {t}: each was repeated about "
                     f"{t / n:.1f} times (the CSV dataset's rule)")
    if h > w or not USUAL_ASPECT[0] <= w / h <= USUAL_ASPECT[1]:
        notes.append(f"{'portrait ' if h > w else ''}frames of {w}x{h} (width x height) are "
                     f"{describe_resize(h, w, frame_cfg)}")
    return notes


def _model_notes(model: str, summary: dict) -> list[str]:
    """The note on a selected model chosen on a validation split too small to trust (module docstring)."""
    from train_head.protocol import MIN_VAL_VIDEOS

    n_val = summary.get("n_val")
    if model != "selected" or not isinstance(n_val, int):
        return []
    if n_val == 0:
        return ["the run has no validation split: the selected model is the final epoch's"]
    if n_val >= MIN_VAL_VIDEOS:
        return []
    sel, fin = summary.get("selected") or {}, summary.get("final") or {}

    def rho(d):
        r = d.get("rho")
        return f"{r:.3f}" if isinstance(r, (int, float)) and math.isfinite(r) else "n/a"
    return [f"the selected model (epoch {summary.get('selected_epoch')}) was chosen on a validation split of "
            f"only {n_val} videos (< {MIN_VAL_VIDEOS}), too small to trust; compare --model final (epoch "
            f"{summary.get('final_epoch')}): test rho {rho(sel)} selected vs {rho(fin)} final"]


def load_run(run_dir: str | Path) -> dict:
    """config (config.json as written: provenance, cache_attrs), run_config (the typed config,
    `RunFolder.load_config`: its cache path resolves from the current folder), summary, groups (None for
    non-tree heads), split (may be None) of a complete run."""
    from train_head.runfolder import RunFolder, RunFolderError

    folder = RunFolder(run_dir)
    run = folder.path
    if not run.is_dir():
        raise ScoreError(f"{run} is not a folder; --run takes a run folder (with config.json)")
    try:
        cfg = folder.read_config()
        run_config = folder.load_config()          # typed; its cache path resolves from here
        if run_config.mode == "finetune":
            raise ScoreError(f"{run} is a fine-tuning run (backbone and head trained from frames): `evaluate "
                             "score` scores runs trained on cached features (`train_head train`), whose "
                             "exemplars come from their feature cache; this run has none")
        if folder.summary() is None:
            raise ScoreError(f"{run}: no summary.json, the run has not finished; finish or rerun training first")
        if not folder.complete:
            raise ScoreError(f"{run}: the run is not complete (summary.json); finish or rerun training first")
        for name in ("model_selected.pt", "model_final.pt"):
            if not folder.file(name).is_file():
                raise ScoreError(f"{folder.file(name)} not found; the run folder is incomplete, retrain it")
        return {"dir": run, "folder": folder, "config": cfg, "run_config": run_config, "summary": folder.summary(),
                "groups": folder.read_json("groups.json", required=False),
                "split": folder.read_json("split.json", required=False)}
    except RunFolderError as e:
        raise ScoreError(str(e)) from None
