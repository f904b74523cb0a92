"""The run configuration of stage two: one typed, frozen record per training run.

A config is resolved in three layers, later ones winning:

    RunConfig defaults  <-  a preset (train_head/presets.py)  <-  command-line overrides

    >>> from train_head.config import resolve_config
    >>> cfg = resolve_config("mtl_aqa_dd", cache="artifacts/features/mtl_aqa.h5", seed=1)

An unknown key at any layer raises `ConfigError` naming the key and listing the valid ones. The
resolved record is saved beside the results as `config.json` (see `config_record`) together with
the git commit of the code, a dirty flag and the cache file's attributes.

Batch size: the paper trained on 1-2 pairs per step with gradient accumulation over 2 steps, because
its backbone was fine-tuned end to end. On cached features one step is cheap, so the default here is
32 pairs per step and no accumulation (`batch_size=32, grad_accum=1`); set `batch_size=2,
grad_accum=2` to follow the paper's schedule exactly.

theta (the score range that scales the exemplar score in the pair input and caps the last leaf):
100 for AQA-7 (scores normalised to [0, 100]) and MTL-AQA without DD, 30 for MTL-AQA with DD
(completeness = score / difficulty stays below 30), 30 for JIGSAWS (GRS lies in 6..30).
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """A config key or value a user gave is not valid."""


PROTOCOLS = ("4fold", "loso", "louo")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides the numbers of one run (plus where it is written).

    Fields
    ------
    cache         HDF5 feature cache (cache/ layout); required.
    dataset       dataset name the cache must hold ("aqa7", "mtl_aqa", "jigsaws", "csv", "synthetic");
                  None = take it from the cache's attributes.
    cls           class (AQA-7) or task (JIGSAWS) to train on; None = every video (only allowed when
                  the cache holds one class).
    protocol      JIGSAWS cross-validation protocol ("4fold", "loso", "louo"); None = use the
                  cache's train/test split.
    fold          held-out fold id of `protocol` (test set); required when protocol is set.
    head          head name from train_head.heads.HEADS ("core", "core_dd", "mlp", "mlp_dd",
                  "contrastive_mlp").
    depth, hidden tree depth (2**(depth-1) leaves) and hidden width.
    theta         score range, see module docstring.
    voters        M exemplars per query at validation/test time (pairwise heads).
    epochs, lr, weight_decay, optimizer ("adam" only)
    batch_size    training pairs (or videos for non-pairwise heads) per step.
    grad_accum    steps whose gradients add up before one optimiser update.
    val_fraction  share of the training videos held out for model selection, stratified over
                  `val_bins` score-quantile bins, drawn from `seed`. 0 = no validation (then the
                  final epoch is also the selected one).
    val_every     validate (and test) every k epochs; the last epoch always is.
    checkpoint_every  write checkpoint.pt every k epochs (and at the last one); default 10: a checkpoint
                  of a 2049-input tree is ~40 MB, and writing it every epoch dominated small runs.
    seed          the single source of randomness of the run.
    views         training views drawn from: "all" (every train-role view of the cache), a count
                  "k" (the first k train views) or comma-separated view names.
    device        "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    threads       torch CPU threads for this run (0 = leave torch's setting). Small heads on a busy
                  machine run several times faster with 1; the thread count can change the last bits
                  of float sums, so it is part of the config.
    out           root of the results tree.
    tag           extra level label for sweeps: the run folder's head level becomes `<head>+<tag>`.
    """

    cache: str
    dataset: str | None = None
    cls: str | None = None
    protocol: str | None = None
    fold: str | None = None
    head: str = "core"
    depth: int = 5
    hidden: int = 256
    theta: float = 100.0
    voters: int = 10
    epochs: int = 200
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    batch_size: int = 32
    grad_accum: int = 1
    val_fraction: float = 0.2
    val_bins: int = 5
    val_every: int = 1
    checkpoint_every: int = 10
    seed: int = 0
    views: str = "all"
    device: str = "auto"
    threads: int = 0
    out: str = "artifacts/runs"
    tag: str = ""

    def __post_init__(self) -> None:
        _validate(self)

    # ---- where the run lives -------------------------------------------------------------
    @property
    def unit(self) -> str:
        """The `<cls-or-fold>` level of the run folder: the class, `all` when none, and for a
        cross-validation protocol `<cls>-<protocol>-<fold>` (e.g. `Suturing-4fold-0`)."""
        base = self.cls if self.cls else "all"
        if self.protocol:
            return f"{base}-{self.protocol}-{self.fold}"
        return base

    def run_dir(self, dataset: str | None = None) -> Path:
        """`<out>/<dataset>/<cls-or-fold>/<head>[+<tag>]/seed<k>/`."""
        ds = dataset or self.dataset
        if not ds:
            raise ConfigError("run_dir needs the dataset name (set `dataset` or read it from the cache)")
        head = self.head + (f"+{self.tag}" if self.tag else "")
        return Path(self.out) / ds / self.unit / head / f"seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "RunConfig":
        return _build(self.to_dict(), changes, layer="replace")


FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
_HINTS = typing.get_type_hints(RunConfig)


def _validate(cfg: RunConfig) -> None:
    if not cfg.cache:
        raise ConfigError("`cache` is required: the HDF5 feature file written by `python -m extract features`")
    if cfg.threads < 0:
        raise ConfigError(f"`threads` must be >= 0 (0 = torch default), got {cfg.threads}")
    for name in ("depth", "hidden", "voters", "epochs", "batch_size", "grad_accum", "val_every",
                 "checkpoint_every", "val_bins"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"`{name}` must be >= 1, got {getattr(cfg, name)}")
    if cfg.depth < 2:
        raise ConfigError(f"`depth` must be >= 2 (2**(depth-1) leaves), got {cfg.depth}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ConfigError(f"`val_fraction` must be in [0, 1), got {cfg.val_fraction}")
    if cfg.theta <= 0:
        raise ConfigError(f"`theta` must be > 0, got {cfg.theta}")
    if cfg.lr <= 0 or cfg.weight_decay < 0:
        raise ConfigError(f"`lr` must be > 0 and `weight_decay` >= 0, got {cfg.lr}, {cfg.weight_decay}")
    if cfg.optimizer.lower() != "adam":
        raise ConfigError(f"`optimizer` {cfg.optimizer!r} is not supported; use 'adam'")
    if cfg.protocol is not None and cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"`protocol` must be one of {PROTOCOLS} or None, got {cfg.protocol!r}")
    if cfg.fold is not None and cfg.protocol is None:
        raise ConfigError("`fold` is set but `protocol` is not; set protocol=4fold|loso|louo")
    if "/" in (cfg.cls or "") or "/" in cfg.tag or "/" in cfg.head:
        raise ConfigError("`cls`, `head` and `tag` become folder names and must not contain '/'")
    if cfg.views != "all" and not cfg.views.strip():
        raise ConfigError("`views` must be 'all', a count or comma-separated view names")


def _coerce(name: str, value: Any) -> Any:
    """Turn a value (possibly a CLI string) into the declared type of field `name`."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"`{name}` may not be None")
    if isinstance(value, str) and optional and value.strip().lower() in ("none", "null", ""):
        return None
    try:
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (list, tuple)):
                return ",".join(str(v) for v in value)
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"`{name}` expects {base.__name__}, got {value!r}") from None
    return value


def _build(base: Mapping[str, Any], changes: Mapping[str, Any], layer: str) -> RunConfig:
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} in {layer}; valid keys: {', '.join(FIELDS)}")
    merged = dict(base)
    merged.update({k: _coerce(k, v) for k, v in changes.items()})
    if "cache" not in merged or merged["cache"] in (None, ""):
        raise ConfigError("`cache` is required: pass --cache FILE (an HDF5 file from `python -m extract features`)")
    return RunConfig(**merged)


def resolve_config(preset_name: str | None = None, /, **overrides: Any) -> RunConfig:
    """defaults <- preset `preset_name` (None = no preset) <- `overrides` (CLI values, strings ok).

    Overrides whose value is None are ignored (click passes None for options not given); to clear an
    optional field pass the string "none".
    """
    from train_head.presets import get_preset

    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)
                if f.default is not dataclasses.MISSING}
    preset = get_preset(preset_name) if preset_name else {}
    unknown = sorted(set(preset) - set(FIELDS))
    if unknown:  # a broken preset is a bug, but say which key
        raise ConfigError(f"preset {preset_name!r} has unknown key(s) {unknown}")
    merged = dict(defaults)
    merged.update({k: _coerce(k, v) for k, v in preset.items()})
    return _build(merged, {k: v for k, v in overrides.items() if v is not None}, layer="overrides")


def parse_set_options(items: typing.Iterable[str]) -> dict[str, str]:
    """`["depth=3", "lr=1e-4"]` -> {"depth": "3", "lr": "1e-4"} (values coerced later)."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in FIELDS:
            raise ConfigError(f"--set: unknown config key {key!r}; valid keys: {', '.join(FIELDS)}")
        out[key] = value.strip()
    return out


def config_from_dict(d: Mapping[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from a saved config.json (extra provenance keys are ignored)."""
    return RunConfig(**{k: _coerce(k, d[k]) for k in FIELDS if k in d})


# ---- provenance --------------------------------------------------------------------------------
_REPO = Path(__file__).resolve().parents[1]


def git_state(repo: Path = _REPO) -> tuple[str, bool | None]:
    """(commit, dirty) of the code; ("unknown", None) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                text=True, timeout=20, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=20, check=True).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def jsonable(value: Any) -> Any:
    """h5py/numpy attribute values -> plain JSON types (JSON strings stay strings)."""
    import numpy as np

    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def config_record(cfg: RunConfig, cache_attrs: Mapping[str, Any], dataset: str) -> dict[str, Any]:
    """What config.json holds: the RunConfig fields (flat, `dataset` filled in from the cache when it
    was None) + git_commit, git_dirty, cache_attrs, torch_version."""
    import torch

    commit, dirty = git_state()
    rec = cfg.to_dict()
    rec["dataset"] = dataset
    rec.update({"git_commit": commit, "git_dirty": dirty, "torch_version": torch.__version__,
                "cache_attrs": jsonable(dict(cache_attrs))})
    return rec


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n"
