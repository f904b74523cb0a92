"""The one owner of a run folder: where it is, which files it holds, its state, and every read and write.

    <out>/<dataset>/<cls-or-fold>/<head>[+<tag>]/seed<k>/      (`RunFolder.for_config(cfg, dataset)`)

    config.json       the resolved config + provenance (git commit, torch version, cache path, cache attrs)
    split.json        {"train": [video ids of the training pool], "val": [...], "test": [...]}
    metrics.csv       epoch,train_loss,val_rho,val_l2,val_rl2,test_rho,test_l2,test_rl2 (a row per epoch)
    predictions.csv   video_id,true,pred,pred_final,difficulty,n_voters,exemplars,exemplar_preds,
                      exemplar_preds_final
    groups.json       leaf intervals (tree heads)        leaf_counts.json   leaf use at test (tree heads)
    summary.json      written last; "complete": true marks a finished run
    timing.json       wall seconds                       checkpoint.pt      resume state
    model_selected.pt, model_final.pt                     head state dicts
    backbone_selected.pt, backbone_final.pt               fine-tuning only: I3D state dicts
    scatter, curves, leaves (.png + .pdf)                 written by `python -m evaluate plots`

State: "fresh" (nothing of a run), "resumable" (a checkpoint, no complete summary), "complete".
Everything is written atomically (data.fileio), so a killed process leaves the previous version.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from data.fileio import atomic_path, atomic_torch_save, atomic_write_text, dump_json, git_state, jsonable

METRIC_COLUMNS = ("epoch", "train_loss", "val_rho", "val_l2", "val_rl2", "test_rho", "test_l2", "test_rl2")
PLOTS = ("scatter.png", "curves.png", "leaves.png", "scatter.pdf", "curves.pdf", "leaves.pdf")
FILES = ("config.json", "split.json", "metrics.csv", "predictions.csv", "groups.json", "leaf_counts.json",
         "summary.json", "timing.json", "checkpoint.pt", "model_selected.pt", "model_final.pt",
         "backbone_selected.pt", "backbone_final.pt") + PLOTS
# files that show a run has started (a folder with one of them but no summary is an unfinished run)
STARTED_MARKERS = ("config.json", "metrics.csv", "checkpoint.pt")


class RunFolderError(ValueError):
    """A run folder is missing, unreadable or not what the caller expected; the message says what to do."""


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))


class RunFolder:
    """One run's folder. Paths are attributes; reads and writes are methods."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ---- layout ------------------------------------------------------------------------------
    @staticmethod
    def layout(out: str | os.PathLike, dataset: str, unit: str, head: str, tag: str, seed: int) -> Path:
        """`<out>/<dataset>/<unit>/<head>[+<tag>]/seed<k>`: the only place this layout is spelled out."""
        return Path(out) / dataset / unit / (head + (f"+{tag}" if tag else "")) / f"seed{seed}"

    @classmethod
    def for_config(cls, cfg, dataset: str | None = None) -> "RunFolder":
        return cls(cfg.run_dir(dataset))

    def file(self, name: str) -> Path:
        if name not in FILES:
            raise KeyError(f"{name!r} is not a run-folder file; files: {FILES}")
        return self.path / name

    # ---- state -------------------------------------------------------------------------------
    def summary(self) -> dict | None:
        """summary.json as a dict, or None when it is missing or unreadable."""
        try:
            obj = json.loads(self.file("summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return obj if isinstance(obj, dict) else None

    @property
    def complete(self) -> bool:
        s = self.summary()
        return bool(s and s.get("complete") is True)

    @property
    def state(self) -> str:
        if self.complete:
            return "complete"
        if self.file("checkpoint.pt").is_file():
            return "resumable"
        return "fresh"

    @property
    def started(self) -> bool:
        return any((self.path / m).is_file() for m in STARTED_MARKERS)

    def clear(self) -> None:
        """Remove every file of a run (and leftover temporary files); other files are left alone."""
        if not self.path.is_dir():
            return
        for name in FILES:
            (self.path / name).unlink(missing_ok=True)
        for p in self.path.glob("*.tmp-*"):
            if p.name.split(".tmp-")[0] in FILES:
                p.unlink(missing_ok=True)

    def create(self) -> None:
        make_folder(self.path)

    def lock(self):
        """One training process per run folder: an advisory lock on `<folder>.lock` beside it (released
        when the process ends, even when killed); a second trainer fails at once naming the holder's pid."""
        from data.locks import exclusive_lock

        make_folder(self.path.parent)
        try:
            return exclusive_lock(self.path, "training")
        except OSError as exc:
            raise RunFolderError(f"cannot create the lock file beside {self.path} ({exc.strerror or exc}); "
                                 "choose a writable --out") from None

    # ---- JSON files --------------------------------------------------------------------------
    def read_json(self, name: str, *, required: bool = True) -> dict | None:
        p = self.file(name)
        if not p.is_file():
            if required:
                raise RunFolderError(f"{p} not found; is {self.path} a run folder written by "
                                     "`python -m train_head`? (rerun training to complete it)")
            return None
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"{p} cannot be read ({exc}); retrain the run (--force)") from None
        if not isinstance(obj, dict):
            raise RunFolderError(f"{p} is not a JSON object; retrain the run (--force)")
        return obj

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.file(name), dump_json(obj))

    # ---- config ------------------------------------------------------------------------------
    @staticmethod
    def config_record(cfg, dataset: str, cache_attrs: Mapping[str, Any] | None = None,
                      extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What config.json holds: the config's fields (dataset filled in) + git_commit, git_dirty,
        torch_version, `cache_path` (absolute: resolves from any working directory) and cache_attrs."""
        import torch

        commit, dirty = git_state()
        rec = cfg.to_dict()
        rec["dataset"] = dataset
        rec["mode"] = cfg.mode
        rec.update({"git_commit": commit, "git_dirty": dirty, "torch_version": torch.__version__})
        if rec.get("cache"):
            rec["cache_path"] = str(Path(rec["cache"]).resolve())
        if cache_attrs is not None:
            rec["cache_attrs"] = jsonable(dict(cache_attrs))
        rec.update(extra or {})
        return rec

    def read_config(self) -> dict:
        return self.read_json("config.json")

    def load_config(self):
        """The run's typed config (RunConfig, or FinetuneConfig for a fine-tuning run); the cache path is
        the absolute one recorded at training time when the relative one does not resolve from here."""
        from train_head.config import ConfigError, config_from_dict

        rec = dict(self.read_config())
        if rec.get("cache") and not Path(rec["cache"]).is_file() and rec.get("cache_path"):
            rec["cache"] = rec["cache_path"]
        try:
            return config_from_dict(rec)
        except (ConfigError, TypeError) as exc:
            raise RunFolderError(f"{self.file('config.json')} does not hold a valid config ({exc})") from None

    # ---- tables ------------------------------------------------------------------------------
    def write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        lines = [",".join(METRIC_COLUMNS)]
        for r in rows:
            lines.append(",".join(str(r["epoch"]) if c == "epoch" else _fmt(r[c]) for c in METRIC_COLUMNS))
        atomic_write_text(self.file("metrics.csv"), "\n".join(lines) + "\n")

    def read_metrics(self):
        import pandas as pd

        return pd.read_csv(self.file("metrics.csv"))

    def write_predictions(self, df) -> None:
        with atomic_path(self.file("predictions.csv")) as tmp:
            df.to_csv(tmp, index=False, float_format="%.17g")

    def read_predictions(self):
        import pandas as pd

        return pd.read_csv(self.file("predictions.csv"), dtype={"video_id": str})

    def write_split(self, split: Mapping[str, Iterable[str]]) -> None:
        self.write_json("split.json", {k: list(split[k]) for k in ("train", "val", "test")})

    def write_leaf_counts(self, n_leaves: int, selected, final) -> None:
        """leaf_counts.json: how often each leaf was the most probable one over the test voters."""
        import numpy as np

        def counts(leaf):
            return [0] * n_leaves if leaf is None else np.bincount(leaf[leaf >= 0].ravel(),
                                                                    minlength=n_leaves).tolist()
        self.write_json("leaf_counts.json", {"selected": counts(selected), "final": counts(final),
                                             "n_leaves": n_leaves})

    # ---- tensors -----------------------------------------------------------------------------
    def save(self, name: str, obj: Any) -> None:
        atomic_torch_save(obj, self.file(name))

    def load(self, name: str, map_location="cpu") -> Any:
        """A .pt file of this run, read with torch's restricted loader (tensors and plain containers
        only); a truncated or foreign file is one clear RunFolderError."""
        import pickle
        import zipfile

        import torch

        p = self.file(name)
        if not p.is_file():
            raise RunFolderError(f"{p} not found; the run is incomplete: rerun training (or --force)")
        try:
            return torch.load(p, map_location=map_location, weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunFolderError(f"{p} is truncated or not a file this project wrote ({first[:160]}); "
                                 "delete it or retrain the run with --force") from None

    # ---- checkpoint -------------------------------------------------------------------------
    def save_checkpoint(self, model_state: dict, optim, epoch: int, rng, rows, best, best_state, cfg) -> None:
        """checkpoint.pt: model and optimiser state, epoch, the train stream's and torch's RNG states, the
        metric rows, the best-so-far model and the config the run is trained with."""
        import torch

        self.save("checkpoint.pt", {
            "model": model_state, "optim": optim.state_dict(), "epoch": epoch,
            "numpy_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
            "rows": json.dumps(rows), "best": json.dumps(best), "best_model": best_state,
            "config": json.dumps(cfg.to_dict())})

    def load_checkpoint(self, model, optim, rng, cfg) -> tuple[list, dict, Any, int]:
        """Restore `save_checkpoint`'s state into model, optim and rng; (rows, best, best_state, next
        epoch). A checkpoint of another config (speed-only fields aside) is refused, listing the differences."""
        import torch

        from train_head.protocol import TrainError

        p = self.file("checkpoint.pt")
        ck = self.load("checkpoint.pt")
        try:
            if "config" in ck:
                keys = [k for k in type(cfg).fields() if k not in cfg.speed_only]
                diffs = config_diff(json.loads(ck["config"]), cfg.to_dict(), keys)
                if diffs:
                    raise TrainError(f"{p} was trained with another config ({'; '.join(diffs)}); "
                                     "rerun with --force to start over")
            model.load_state_dict(ck["model"])
            optim.load_state_dict(ck["optim"])
            rng.bit_generator.state = json.loads(ck["numpy_rng"])
            torch.set_rng_state(ck["torch_rng"])
            rows, best = json.loads(ck["rows"]), json.loads(ck["best"])
        except TrainError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise TrainError(f"{p} does not fit this run ({str(exc)[:160]}); rerun with --force to start over"
                             ) from None
        return rows, best, ck["best_model"], int(ck["epoch"]) + 1

    # ---- discovery ---------------------------------------------------------------------------
    @classmethod
    def find(cls, root: str | os.PathLike) -> Iterable["RunFolder"]:
        """Every folder under `root` (itself included) that holds summary.json or a started marker."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if "summary.json" in filenames or any(m in filenames for m in STARTED_MARKERS):
                yield cls(dirpath)


def make_folder(path: Path) -> None:
    """mkdir -p with one clear message when a file is in the way or the place is not writable."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunFolderError(f"cannot create the run folder {path}: a file of that name (or above it) is in "
                             "the way; choose another --out") from None
    except OSError as exc:
        raise RunFolderError(f"cannot create the run folder {path} ({exc.strerror or exc}); choose a "
                             "writable --out") from None


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
    """Human-readable differences `key: old -> new` over `keys`."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
