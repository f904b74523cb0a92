"""The configuration of a stage-two run: one typed, frozen record per run, for both modes.

    BaseConfig      what every run has: unit (cls, protocol, fold), head and tree, protocol, schedule,
                    seed, device, where it is written; shared validation and type coercion
    RunConfig       + the cached mode's fields (cache, lr, views, threads)
    FinetuneConfig  + end-to-end fine-tuning's fields (dataset root, backbone, frames, precision)

A config is resolved in three layers, later ones winning:

    the class's defaults  <-  a preset (train_head/presets.py)  <-  command-line overrides (--set KEY=VALUE)

    >>> cfg = resolve_config("mtl_aqa_dd", cache="artifacts/features/mtl_aqa.h5", seed=1)
    >>> ft = resolve_config("mtl_aqa_dd", kind=FinetuneConfig, dataset="mtl_aqa", root="/data/MTL-AQA")

An unknown key, an unknown head, a value of the wrong type or a non-finite number at any layer raises
`ConfigError` naming the key. The record is saved beside the results as `config.json`
(`RunFolder.config_record`) with the git commit, the torch version and the cache's attributes.

Batch size: the paper trained on 1-2 pairs per step with gradient accumulation over 2 steps, because
its backbone was fine-tuned end to end. On cached features one step is cheap, so the cached default is
32 pairs per step and no accumulation (`batch_size=32, grad_accum=1`); fine-tuning keeps the paper's
2 x 2. theta (the score range that scales the exemplar score in the pair input and caps the last
leaf): 100 for AQA-7 (scores normalised to [0, 100]) and MTL-AQA without DD, 30 for MTL-AQA with DD
(completeness = score / difficulty stays below 30), 30 for JIGSAWS (GRS lies in 6..30).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

from train_head.runfolder import RunFolder


class ConfigError(ValueError):
    """A config key or value a user gave is not valid."""


PROTOCOLS = ("4fold", "loso", "louo")
# memory a tree may need for its weights, gradients and Adam's two moments (4 float32 copies)
MAX_TREE_BYTES = 16 * 1024 ** 3


@dataclass(frozen=True, kw_only=True)
class BaseConfig:
    """Fields every run has (see the subclasses for the mode's own).

    cls           class (AQA-7) or task (JIGSAWS); None = every video (one-class datasets only).
    protocol      JIGSAWS cross-validation protocol ("4fold", "loso", "louo"); None = the split column.
    fold          held-out fold of `protocol` (the test set).
    head          a name of train_head.heads.HEADS; depth (2**(depth-1) leaves), hidden, theta as above.
    voters        M exemplars per query at validation/test time (pairwise heads).
    epochs, batch_size, grad_accum, weight_decay   the schedule (pairs per step, steps per update).
    val_fraction  share of the training videos held out for selection (stratified over `val_bins`
                  score bins); 0 = no validation, the final epoch is then the selected one.
    val_every     validate (and test) every k epochs; the last epoch always is.
    checkpoint_every  write checkpoint.pt every k epochs and at the last one.
    seed          the single source of randomness of the run (train_head.protocol.Streams).
    device        "auto" (CUDA when present), "cpu", "cuda", "cuda:1".
    out, tag      results root; the head level of the run folder is `<head>+<tag>` when tag is set.
    leaf_activation  the tree's leaf regressors: "identity" (linear, as the reference CoRe code) or
                  "sigmoid" (squashed to [0, 1] before scaling).
    deterministic CUDA: deterministic kernels (slower); the CPU always runs them (same seed, same numbers).
    tensorboard   also log the per-epoch metrics for TensorBoard into <run>/tensorboard/ (needs
                  requirements-tensorboard.txt); off by default.
    """
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
    batch_size: int = 32
    grad_accum: int = 1
    weight_decay: float = 0.0
    val_fraction: float = 0.2
    val_bins: int = 5
    val_every: int = 1
    checkpoint_every: int = 10
    seed: int = 0
    device: str = "auto"
    out: str = "artifacts/runs"
    tag: str = ""
    leaf_activation: str = "identity"
    tensorboard: bool = False
    deterministic: bool = False

    mode: ClassVar[str] = "cached"
    # fields that change speed or logging, not numbers: a resume may differ in them
    speed_only: ClassVar[tuple[str, ...]] = ("tensorboard",)
    _positive: ClassVar[tuple[str, ...]] = ("depth", "hidden", "voters", "epochs", "batch_size", "grad_accum",
                                            "val_every", "checkpoint_every", "val_bins")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):          # coercion once, for every constructor path
            object.__setattr__(self, f.name, _coerce(type(self), f.name, getattr(self, f.name)))
        self.validate()

    def validate(self) -> None:
        from train_head.heads import HEADS

        for name in self._positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError(f"`seed` must be >= 0, got {self.seed}")
        if self.depth < 2:
            raise ConfigError(f"`depth` must be >= 2 (2**(depth-1) leaves), got {self.depth}")
        H, inner = self.hidden, 2 ** (self.depth - 1) - 1      # inner nodes split H -> 2H
        need = 16 * (inner * (2 * H * H + 4 * H) + (inner + 1) * (H + 1))
        if need > MAX_TREE_BYTES:
            raise ConfigError(f"`depth`={self.depth} with hidden={H}: the tree's weights, gradients and Adam "
                              f"state would need about {need / 1024 ** 3:,.0f} GiB; lower depth or hidden")
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r}; heads: {', '.join(sorted(HEADS))}")
        from train_head.tree import LEAF_ACTIVATIONS
        if self.leaf_activation not in LEAF_ACTIVATIONS:
            raise ConfigError(f"`leaf_activation` must be identity or sigmoid, got {self.leaf_activation!r}")
        if self.tensorboard:
            from train_head.tracking import TrackingError, require_tensorboard
            try:
                require_tensorboard()
            except TrackingError as exc:
                raise ConfigError(str(exc)) from None
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"`val_fraction` must be in [0, 1), got {self.val_fraction}")
        if self.theta <= 0 or self.weight_decay < 0:
            raise ConfigError(f"`theta` must be > 0 and `weight_decay` >= 0, got {self.theta}, {self.weight_decay}")
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ConfigError(f"`protocol` must be one of {PROTOCOLS} or None, got {self.protocol!r}")
        if self.fold is not None and self.protocol is None:
            raise ConfigError("`fold` is set but `protocol` is not; set protocol=4fold|loso|louo")
        if any("/" in v or v in (".", "..") for v in (self.cls or "", self.tag, self.head, self.dataset or "")):
            raise ConfigError("`dataset`, `cls`, `head` and `tag` become folder names and must not contain '/'")

    # ---- where the run lives -------------------------------------------------------------
    @property
    def unit(self) -> str:
        """The `<cls-or-fold>` level of the run folder: the class, `all` when none, and for a
        cross-validation protocol `<cls>-<protocol>-<fold>` (e.g. `Suturing-4fold-0`)."""
        base = self.cls if self.cls else "all"
        return f"{base}-{self.protocol}-{self.fold}" if self.protocol else base

    def run_dir(self, dataset: str | None = None):
        ds = dataset or self.dataset
        if not ds:
            raise ConfigError("run_dir needs the dataset name (set `dataset` or read it from the cache)")
        return RunFolder.layout(self.out, ds, self.unit, self.head, self.tag, self.seed)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def replace(self, **changes: Any):
        return _build(type(self), self.to_dict(), changes, layer="replace")

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True, kw_only=True)
class RunConfig(BaseConfig):
    """A run on cached features. cache: the HDF5 feature file (required). lr, optimizer ("adam" only).
    views: training views drawn from: "all" (every train-role view), a count "k" or comma-separated
    names. threads: torch CPU threads for the run (0 = leave torch's); the thread count can change the
    last bits of float sums, so it is part of the config."""
    cache: str = ""
    lr: float = 1e-3
    optimizer: str = "adam"
    views: str = "all"
    threads: int = 0

    def validate(self) -> None:
        super().validate()
        if not self.cache:
            raise ConfigError("`cache` is required: pass --cache FILE (an HDF5 file from `python -m extract features`)")
        if self.threads < 0:
            raise ConfigError(f"`threads` must be >= 0 (0 = torch default), got {self.threads}")
        if self.lr <= 0:
            raise ConfigError(f"`lr` must be > 0, got {self.lr}")
        if self.optimizer.lower() != "adam":
            raise ConfigError(f"`optimizer` {self.optimizer!r} is not supported; use 'adam'")
        if self.views != "all" and not self.views.strip():
            raise ConfigError("`views` must be 'all', a count or comma-separated view names")


# ------------------------------------------------------------------------------ coercion, layers
_ALIASES = {"amp": "precision", "interp": "resize_mode", "frame_size": "resize_hw"}


@functools.lru_cache(maxsize=None)
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def _coerce(kind: type, name: str, value: Any) -> Any:
    """Turn a value (possibly a CLI string) into the declared type of field `name` of `kind`."""
    hint = _hints(kind)[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None or (isinstance(value, str) and optional and value.strip().lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"`{name}` may not be None")
    try:
        if base is bool:
            if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.strip().lower() in ("1", "true", "yes", "on")
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            x = float(value)
            if not math.isfinite(x):
                raise ConfigError(f"`{name}` must be a finite number, got {value!r}")
            return x
        if base is str:
            return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        if typing.get_origin(base) is tuple:
            parts = value.lower().replace("x", ",").split(",") if isinstance(value, str) else list(value)
            out = tuple(int(p) for p in parts)
            if len(out) != 2 or min(out) < 1:
                raise ValueError
            return out
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"`{name}` expects {getattr(base, '__name__', base)}, got {value!r}") from None
    return value


def _build(kind: type, base: Mapping[str, Any], changes: Mapping[str, Any], layer: str):
    fields = kind.fields()
    changes = {_ALIASES.get(k, k): v for k, v in changes.items()}
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown} in {layer}; valid keys: {', '.join(fields)}")
    return kind(**{**{k: v for k, v in base.items() if k in fields}, **changes})


def resolve_config(preset_name: str | None = None, /, *, kind: type = None, **overrides: Any):
    """defaults of `kind` (RunConfig) <- preset `preset_name` (None = no preset) <- `overrides`.

    Overrides whose value is None are ignored (click passes None for options not given); to clear an
    optional field pass the string "none". A preset key that `kind` does not have is left out for
    FinetuneConfig (presets are written for the cached mode) and is an error for RunConfig."""
    from train_head.presets import get_preset

    kind = kind or RunConfig
    preset = get_preset(preset_name) if preset_name else {}
    unknown = sorted(set(preset) - set(kind.fields()))
    if unknown and kind is RunConfig:       # a broken preset is a bug, but say which key
        raise ConfigError(f"preset {preset_name!r} has unknown key(s) {unknown}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return _build(kind, {k: v for k, v in preset.items() if k not in unknown}, given, layer="overrides")


def parse_set_options(items: Iterable[str], kind: type = None) -> dict[str, str]:
    """`["depth=3", "lr=1e-4"]` -> {"depth": "3", "lr": "1e-4"} (values coerced when the config is built)."""
    fields = (kind or RunConfig).fields()
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in fields:
            raise ConfigError(f"--set: unknown config key {key!r}; valid keys: {', '.join(fields)}")
        out[key] = value.strip()
    return out


def config_from_dict(d: Mapping[str, Any]):
    """Rebuild a config from a saved config.json (provenance keys are ignored; `mode` picks the class)."""
    from train_head.finetune_config import FinetuneConfig

    kind = FinetuneConfig if d.get("mode") == "finetune" else RunConfig
    d = {"leaf_activation": "sigmoid", **d}     # saved before the field existed: trees then had sigmoid leaves
    return kind(**{k: d[k] for k in kind.fields() if k in d})


FIELDS = RunConfig.fields()


def __getattr__(name: str):
    """`FinetuneConfig` lives in train_head/finetune_config.py (on the base above); importable from here."""
    if name == "FinetuneConfig":
        from train_head.finetune_config import FinetuneConfig
        return FinetuneConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
