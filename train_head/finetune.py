"""End-to-end fine-tuning: the I3D backbone and a head trained together from frames (SPEC section 6).

    python -m train_head finetune --dataset mtl_aqa --root /data/MTL-AQA --head core_dd --epochs 200
    torchrun --nproc_per_node 4 -m train_head.finetune --dataset aqa7 --root /data/AQA-7 --class diving

    >>> from train_head.finetune import FinetuneConfig, finetune
    >>> run_dir = finetune(FinetuneConfig(dataset="synthetic", root="artifacts/datasets/synthetic"))

The parts come from the rest of the project; this module only wires them (docs/FINETUNE.md):
  * network and weights: `extract.weights.load_i3d` (unfused). The backbone runs in train mode with
    every batch norm frozen (eval-mode statistics, no running-stat updates, see `FrozenBNI3D`); the
    batch-norm shift (`bn.bias`, the units' only bias) trains with the backbone (`train_bn_bias`);
    the Kinetics `Logits` layer is not used and is frozen.
  * frames: the dataset readers of `data` and `data.transforms` (clip rule, test view, normalisation);
    training augmentation drawn per sample per step: a uniform random crop position and a random
    horizontal flip, plus for MTL-AQA an end-frame shift uniform in [-3, 3]
    (`read_frames(max_shift=3)` + `shift_window`).
  * video feature = mean over the `n_clips` clips of the backbone's per-clip 1024-d feature.
  * pairs (`train_pairs`, same difficulty for DD heads), groups (`build_groups` on the training pool's
    targets), heads (`build_head`, `head.loss`), validation carving (`carve_validation`), selection
    protocol (val-selected / final / best-on-test in its own field), run-folder writing
    (`write_predictions`, metrics.csv) all come from train_head.
  * optimiser: Adam, backbone lr 1e-4, head lr 1e-3, no weight decay; `batch_size` pairs per micro-step
    (global, over all ranks), gradients accumulated over `grad_accum` micro-steps per update.
  * evaluation every `val_every` epochs (and at the last): test-view features of the training pool,
    validation and test videos from the CURRENT backbone, once per evaluation under inference_mode;
    then the head's predict with `voters` exemplars per query from `test_voters` (one fixed draw for
    the whole run, as the cached trainer does).
  * DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA): every rank builds the same
    global plan from the seed and takes its slice of each global micro-batch; the loss of a slice is
    weighted by its share, so the all-reduced gradient equals one process on the same global batch.
  * checkpoint.pt every `checkpoint_every` epochs (atomic); resume continues to the same numbers.

Run folder: the cached trainer's (`docs/ARCHITECTURE.md`), head level `<head>+<tag>` (tag "finetune"
by default, so tables never pool fine-tuned runs with cached ones); model_selected.pt / model_final.pt
are head state dicts as in the cached mode, and backbone_selected.pt / backbone_final.pt are I3D state
dicts in our layout (`load_i3d(path)` loads them).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from data.transforms import FrameConfig, TEST_VIEW, View, apply_view, clip_starts, cut_clips, shift_window
from extract import dist as xdist
from extract.i3d import ENDPOINTS, I3D, BatchNorm3dNoScale
from train_head.config import ConfigError, config_record, dump_json
from train_head.heads import HEADS, build_head
from train_head.pairs import train_pairs
from train_head.trainer import (CacheData, Evaluator, OncePerMessage, TrainError, Unit, atomic_torch_save,
                                atomic_write_text, carve_validation, cpu_state, is_complete, load_checkpoint,
                                metrics_csv, save_checkpoint,
                                run_groups, run_summary, run_targets, select_unit, update_best, write_leaf_counts,
                                write_predictions, write_split)

__all__ = ["FinetuneConfig", "resolve_finetune_config", "finetune", "FrozenBNI3D", "FinetuneModel", "build_optimizer", "Aug",
           "draw_augs", "augment", "crop_flip", "ClipDataset", "finetune_command", "register", "finetune_cli_main"]

log = logging.getLogger(__name__)

RUN_FILES = ("config.json", "metrics.csv", "predictions.csv", "groups.json", "leaf_counts.json", "summary.json",
             "model_selected.pt", "model_final.pt", "backbone_selected.pt", "backbone_final.pt", "checkpoint.pt",
             "split.json", "timing.json")
_SPEED_ONLY = ("workers", "eval_batch", "checkpoint_activations")
INCEPTION_BLOCKS = tuple(n for n in ENDPOINTS if n.startswith("Mixed_"))


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides the numbers of one fine-tuning run.

    dataset, root    dataset registry name (`data.DATASETS`) and its folder.
    cls              class (AQA-7) / task (JIGSAWS); None = every video (one-class datasets).
    protocol, fold   cross-validation protocol and held-out fold (JIGSAWS), as in RunConfig.
    head, depth, hidden, theta, voters   as in RunConfig.
    epochs           passes over the training pool (each query once, one exemplar per query).
    batch_size       pairs (videos for non-pairwise heads) per micro-step, over all ranks together;
                     must be >= the number of ranks.
    grad_accum       micro-steps whose gradients add up before one Adam update (paper: 2 pairs x 2).
    lr_backbone, lr_head, weight_decay   Adam; the paper's 1e-4 / 1e-3 / 0.
    train_bn_bias    the batch-norm shift of the backbone trains (its statistics never do).
    train_from       first backbone endpoint that trains (e.g. "Mixed_4b"); the layers before it are
                     frozen. None = the whole backbone trains (the paper).
    weights          "kinetics400", "random" or a state-dict path (`load_i3d`).
    norm, resize_hw, crop, interp   frame pipeline (`data.transforms.FrameConfig`); SPEC defaults.
    n_clips, clip_len   clips per video (SPEC: 10 of 16 frames) at `clip_starts(T, n_clips, clip_len)`.
    max_shift        MTL-AQA end-frame shift drawn uniformly in [-max_shift, max_shift] (other
                     datasets: ignored, they have no shift protocol).
    val_fraction, val_bins, val_every, checkpoint_every, seed   as in RunConfig.
    device           "auto" | "cpu" | "cuda" | "cuda:k".
    amp              "auto" (bf16 autocast on CUDA, off on CPU) | "bf16" | "off".
    channels_last    "auto" (on CUDA) | "on" | "off": channels_last_3d memory format for the backbone.
    checkpoint_activations   recompute each Inception block in the backward pass (less memory).
    workers          DataLoader decoding workers; None = 4 on CUDA, 0 on CPU.
    eval_batch       videos per backbone call at evaluation.
    out, tag         results root; the head level of the run folder is `<head>+<tag>`.
    """

    dataset: str
    root: str
    cls: str | None = None
    protocol: str | None = None
    fold: str | None = None
    head: str = "core"
    depth: int = 5
    hidden: int = 256
    theta: float = 100.0
    voters: int = 10
    epochs: int = 200
    batch_size: int = 2
    grad_accum: int = 2
    lr_backbone: float = 1e-4
    lr_head: float = 1e-3
    weight_decay: float = 0.0
    train_bn_bias: bool = True
    train_from: str | None = None
    weights: str = "kinetics400"
    norm: str = "imagenet"
    resize_hw: tuple[int, int] = (455, 256)
    crop: int = 224
    interp: str = "nearest"
    n_clips: int = 10
    clip_len: int = 16
    max_shift: int = 3
    val_fraction: float = 0.2
    val_bins: int = 5
    val_every: int = 1
    checkpoint_every: int = 1
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    checkpoint_activations: bool = False
    workers: int | None = None
    eval_batch: int = 4
    out: str = "artifacts/runs"
    tag: str = "finetune"

    def __post_init__(self) -> None:
        object.__setattr__(self, "resize_hw", tuple(int(v) for v in self.resize_hw))
        for name in ("depth", "hidden", "voters", "epochs", "batch_size", "grad_accum", "val_every",
                     "checkpoint_every", "val_bins", "n_clips", "clip_len", "eval_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r}; heads: {sorted(HEADS)}")
        if self.lr_backbone < 0 or self.lr_head <= 0 or self.weight_decay < 0:
            raise ConfigError("`lr_backbone` must be >= 0, `lr_head` > 0 and `weight_decay` >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"`val_fraction` must be in [0, 1), got {self.val_fraction}")
        if self.amp not in ("auto", "bf16", "off") or self.channels_last not in ("auto", "on", "off"):
            raise ConfigError("`amp` must be auto|bf16|off and `channels_last` auto|on|off")
        if self.train_from is not None and self.train_from not in ENDPOINTS:
            raise ConfigError(f"`train_from` {self.train_from!r} is not an I3D endpoint; one of {ENDPOINTS}")
        if self.max_shift < 0 or (self.workers is not None and self.workers < 0):
            raise ConfigError("`max_shift` and `workers` must be >= 0")
        if "/" in (self.cls or "") or "/" in self.tag:
            raise ConfigError("`cls` and `tag` become folder names and must not contain '/'")
        self.frame_config()            # validates resize/crop/norm/interp

    def frame_config(self) -> FrameConfig:
        return FrameConfig(resize_hw=self.resize_hw, crop=self.crop, norm=self.norm, interp=self.interp)

    @property
    def unit(self) -> str:
        """The `<cls-or-fold>` level of the run folder, the same rule as RunConfig.unit."""
        base = self.cls if self.cls else "all"
        return f"{base}-{self.protocol}-{self.fold}" if self.protocol else base

    def run_dir(self) -> Path:
        head = self.head + (f"+{self.tag}" if self.tag else "")
        return Path(self.out) / self.dataset / self.unit / head / f"seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resize_hw"] = list(self.resize_hw)
        return d

    def replace(self, **changes: Any) -> "FinetuneConfig":
        return dataclasses.replace(self, **changes)


FIELDS = tuple(f.name for f in dataclasses.fields(FinetuneConfig))


def resolve_finetune_config(dataset: str, root: str, /, **overrides: Any) -> FinetuneConfig:
    """FinetuneConfig defaults <- the dataset's train_head preset (theta, head, protocol, cls) <- overrides.

    Overrides whose value is None are ignored (click passes None for options not given)."""
    from train_head.presets import default_preset, get_preset

    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown finetune key(s) {unknown}; valid keys: {', '.join(FIELDS)}")
    name = default_preset(dataset, given.get("head"))
    preset = {k: v for k, v in (get_preset(name) if name else {}).items()
              if k in FIELDS and k not in ("dataset",)}
    return FinetuneConfig(dataset=dataset, root=str(root), **{**preset, **given})


# ------------------------------------------------------------------------------------------- model
class FrozenBNI3D(nn.Module):
    """I3D features [N, 3, L, S, S] -> [N, 1024] with every batch norm frozen.

    `train()` keeps each BatchNorm3dNoScale in eval mode, so batch norm always normalises with the
    stored (Kinetics) statistics and never updates them: with 1-2 pairs per step the batch statistics
    of a few clips of one video would be noise. The shift `bn.bias` stays a parameter (it is the only
    bias of a conv unit) and trains unless `train_bn_bias=False`. The Logits layer is frozen (unused).
    `checkpoint_activations` recomputes each Inception block during backward (torch.utils.checkpoint,
    non-reentrant): its activations are not kept, which is what fills the memory at 224 px.
    """

    def __init__(self, i3d: I3D, *, train_bn_bias: bool = True, train_from: str | None = None,
                 checkpoint_activations: bool = False):
        super().__init__()
        if getattr(i3d, "bn_fused", False):
            raise ValueError("FrozenBNI3D needs an unfused I3D (load_i3d(..., fuse_bn=False))")
        self.i3d = i3d
        self.checkpoint_activations = bool(checkpoint_activations)
        frozen_until = ENDPOINTS.index(train_from) if train_from else 0
        for p in i3d.Logits.parameters():
            p.requires_grad_(False)
        for k, name in enumerate(ENDPOINTS):
            for pname, p in getattr(i3d, name).named_parameters():
                trainable = k >= frozen_until and (train_bn_bias or not pname.endswith("bn.bias"))
                p.requires_grad_(trainable)
        self.train()

    def train(self, mode: bool = True) -> "FrozenBNI3D":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, BatchNorm3dNoScale):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        use_ckpt = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        for name in ENDPOINTS:
            layer = getattr(self.i3d, name)
            if use_ckpt and name in INCEPTION_BLOCKS:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x.float().mean(dim=(2, 3, 4))                   # (N, 1024)


class FinetuneModel(nn.Module):
    """Backbone + head. `forward` returns the head's loss so that DistributedDataParallel sees it."""

    def __init__(self, backbone: FrozenBNI3D, head: nn.Module, *, amp: bool = False,
                 channels_last: bool = False):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.amp, self.channels_last = bool(amp), bool(channels_last)

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (V, C, 3, L, S, S) -> video features (V, 1024) float32 = mean over the C clips."""
        V, C = clips.shape[:2]
        x = clips.reshape(V * C, *clips.shape[2:])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        ctx = (torch.autocast(device_type=x.device.type, dtype=torch.bfloat16) if self.amp
               else contextlib.nullcontext())
        with ctx:
            f = self.backbone(x)                               # (V*C, 1024)
        return f.float().reshape(V, C, -1).mean(dim=1)

    def forward(self, clips_q: torch.Tensor, t_q: torch.Tensor, clips_e: torch.Tensor | None = None,
                t_e: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss of the pairs (or videos) given; an empty batch (a rank with no share of a small
        last micro-batch) gives a zero that still touches every parameter, so DDP's all-reduce runs."""
        if clips_q.shape[0] == 0:
            return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad),
                       torch.zeros((), device=clips_q.device))
        n = clips_q.shape[0]
        if clips_e is not None:
            f = self.features(torch.cat([clips_q, clips_e]))   # one backbone call for q and e
            loss, _ = self.head.loss(f[:n], t_q, f[n:], t_e)
        else:
            loss, _ = self.head.loss(self.features(clips_q), t_q)
        return loss


def build_optimizer(model: FinetuneModel, lr_backbone: float = 1e-4, lr_head: float = 1e-3,
                    weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with two parameter groups: the trainable backbone parameters (lr_backbone) and the head."""
    bb = [p for p in model.backbone.parameters() if p.requires_grad]
    return torch.optim.Adam([{"params": bb, "lr": lr_backbone},
                             {"params": list(model.head.parameters()), "lr": lr_head}], weight_decay=weight_decay)


# ----------------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class Aug:
    """One training view drawn for one sample at one step. u_top/u_left in [0, 1) pick the crop
    position uniformly among all positions (turned into pixels once the resized size is known)."""
    shift: int = 0
    u_top: float = 0.5
    u_left: float = 0.5
    flip: bool = False


def draw_augs(rng: np.random.Generator, n: int, max_shift: int) -> list[Aug]:
    """n augmentations from one Generator (a fixed number of draws per call: reproducible)."""
    s = rng.integers(-max_shift, max_shift + 1, size=n) if max_shift else np.zeros(n, np.int64)
    u = rng.random((n, 2))
    flip = rng.random(n) < 0.5
    return [Aug(int(s[i]), float(u[i, 0]), float(u[i, 1]), bool(flip[i])) for i in range(n)]


def crop_flip(frames: np.ndarray, top: int, left: int, flip: bool, cfg: FrameConfig) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [3, T, crop, crop]: resize as `cfg`, crop at (top, left) of the
    resized frame, flip, normalise. With the centre offsets it equals `apply_view` of the centre view.

    The resize, flip and normalisation are `apply_view`'s own: the crop's rows/columns of the source are
    selected first (nearest: the same index rule), then apply_view runs on that crop at identity size."""
    c = cfg.crop
    if cfg.interp == "nearest":
        _, h, w, _ = frames.shape
        oh, ow = cfg.resize_hw
        rows = np.minimum((np.arange(oh) * (h / oh)).astype(np.int64), h - 1)[top: top + c]
        cols = np.minimum((np.arange(ow) * (w / ow)).astype(np.int64), w - 1)[left: left + c]
    else:
        from data.transforms import _resize_bilinear_short_side
        frames = _resize_bilinear_short_side(frames, min(cfg.resize_hw))
        rows, cols = np.arange(top, top + c), np.arange(left, left + c)
    patch = frames[:, rows][:, :, cols]
    ident = FrameConfig(resize_hw=(c, c), crop=c, norm=cfg.norm, interp="nearest")
    return apply_view(patch, View("train", 0, bool(flip), "center", "train"), ident)


def _resized_hw(frames: np.ndarray, cfg: FrameConfig) -> tuple[int, int]:
    if cfg.interp == "nearest":
        return cfg.resize_hw
    _, h, w, _ = frames.shape
    short = min(cfg.resize_hw)
    scale = short / min(h, w)
    return max(short, int(math.floor(h * scale + 0.5))), max(short, int(math.floor(w * scale + 0.5)))


def augment(frames: np.ndarray, aug: Aug, cfg: FrameConfig) -> np.ndarray:
    """A training view of an already shifted window: uniform crop position from aug.u_*, flip."""
    oh, ow = _resized_hw(frames, cfg)
    top = min(int(aug.u_top * (oh - cfg.crop + 1)), oh - cfg.crop)
    left = min(int(aug.u_left * (ow - cfg.crop + 1)), ow - cfg.crop)
    return crop_flip(frames, top, left, aug.flip, cfg)


class ClipDataset(torch.utils.data.Dataset):
    """Decoded, augmented clips of one video per item: key (position, Aug | None) -> float32
    [n_clips, 3, clip_len, crop, crop]. None = the test view (centre crop, no flip, no shift).
    Keys come from the main process (the plan drawn from the seed), so the result does not depend on
    the number of workers."""

    def __init__(self, ds, samples: Sequence, cfg: FrameConfig, n_clips: int, clip_len: int, max_shift: int):
        self.ds, self.samples, self.cfg = ds, list(samples), cfg
        self.max_shift = max_shift if ds.supports_shift else 0
        self.starts = clip_starts(ds.n_frames, n_clips, clip_len)
        self.clip_len = clip_len

    def __getitem__(self, key) -> torch.Tensor:
        pos, aug = key
        s = self.samples[pos]
        if aug is None:
            x = apply_view(self.ds.read_frames(s, 0), TEST_VIEW, self.cfg)
        else:
            ms = self.max_shift
            frames = self.ds.read_frames(s, ms)
            if ms:
                frames = shift_window(frames, aug.shift, ms, self.ds.n_frames)
            x = augment(frames, aug, self.cfg)
        return torch.from_numpy(cut_clips(x, self.starts, self.clip_len))

    def __len__(self) -> int:
        return len(self.samples)


def _collate(items: list) -> torch.Tensor | None:
    return torch.stack(items) if items else None


def _loader(dataset: ClipDataset, plan: list[list], workers: int, pin: bool):
    return torch.utils.data.DataLoader(dataset, batch_sampler=plan, collate_fn=_collate, num_workers=workers,
                                       pin_memory=pin, persistent_workers=False)


# --------------------------------------------------------------------------------------- helpers
def _data_table(ds, samples, dataset: str) -> CacheData:
    """The metadata of the samples in the trainer's CacheData form (no features), so that the cached
    mode's unit selection and prediction writing apply unchanged."""
    n = len(samples)
    return CacheData(
        path=str(ds.root), feats=np.zeros((n, 1, 0), np.float32),
        video_ids=np.asarray([s.video_id for s in samples], dtype=str),
        scores=np.asarray([s.score for s in samples], dtype=np.float64),
        difficulty=np.asarray([np.nan if s.difficulty is None else s.difficulty for s in samples], np.float64),
        split=np.asarray([s.split for s in samples], dtype=str), cls=np.asarray([s.cls for s in samples], dtype=str),
        folds=tuple(dict(s.folds) for s in samples), views=(), attrs={"dataset": dataset}, test_view=0,
        train_views=())


def _slice(n: int, info: xdist.DistInfo) -> slice:
    """This rank's contiguous share of n items (np.array_split sizes)."""
    q, r = divmod(n, info.world_size)
    start = info.rank * q + min(info.rank, r)
    return slice(start, start + q + (1 if info.rank < r else 0))


def _sum_all(x: torch.Tensor, info: xdist.DistInfo) -> torch.Tensor:
    if info.enabled:
        torch.distributed.all_reduce(x)
    return x


# -------------------------------------------------------------------------------------- finetune
def finetune(cfg: FinetuneConfig, *, force: bool = False, progress: bool = True,
             on_epoch_end: Callable[[int, dict], None] | None = None, dataset=None) -> Path:
    """Fine-tune backbone + head; returns the run folder (module docstring).

    A folder with a complete summary is skipped unless `force` (which deletes its files first); a
    folder with checkpoint.pt of the same config resumes. `on_epoch_end(epoch, row)` runs after each
    epoch's checkpoint (raising interrupts the run: tests use it). `dataset`: an already built reader.
    """
    from data import get_dataset
    from extract.pipeline import resolve_device

    info = xdist.dist_info()
    device = xdist.rank_device(resolve_device(cfg.device), info)
    info, started = xdist.init(device, info)
    try:
        ds = dataset if dataset is not None else get_dataset(cfg.dataset, cfg.root)
        run_dir = cfg.run_dir()
        record = config_record(cfg, {}, cfg.dataset)
        record.pop("cache_attrs", None)
        record.update({"mode": "finetune", "cache": None, "world_size": info.world_size})
        if is_complete(run_dir) and not force:
            if not _same(run_dir, cfg):
                raise TrainError(f"{run_dir} holds a complete run of a different config; rerun with --force "
                                 "or change --out")
            log.info("%s is complete; skipping (use --force to retrain)", run_dir)
            return run_dir
        resume = (run_dir / "checkpoint.pt").is_file() and not force
        if resume and not _same(run_dir, cfg):
            raise TrainError(f"{run_dir} holds a checkpoint of a different config (config.json differs); "
                             "rerun with --force to start over, or change --out")
        if info.is_main:
            if force and run_dir.exists():
                for name in RUN_FILES:
                    (run_dir / name).unlink(missing_ok=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                atomic_write_text(run_dir / "config.json", dump_json(record))
        xdist.barrier(info)
        prev_det = torch.are_deterministic_algorithms_enabled()
        prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        pairs_log, once = logging.getLogger("train_head.pairs"), OncePerMessage()
        pairs_log.addFilter(once)
        try:
            return _finetune(cfg, ds, run_dir, resume, device, info, progress, on_epoch_end)
        finally:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            pairs_log.removeFilter(once)
    finally:
        xdist.finalize(started)


def _same(run_dir: Path, cfg: FinetuneConfig) -> bool:
    try:
        old = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return False
    # performance knobs that do not change the numbers may differ between a run and its resumption
    keys = [k for k in FIELDS if k not in _SPEED_ONLY]
    new = cfg.to_dict()
    return {k: old.get(k) for k in keys} == {k: new[k] for k in keys}


def _finetune(cfg: FinetuneConfig, ds, run_dir: Path, resume: bool, device: torch.device,
              info: xdist.DistInfo, progress: bool, on_epoch_end) -> Path:
    from extract.weights import load_i3d

    t_start = time.perf_counter()
    head_cls = HEADS[cfg.head]
    samples = ds.samples()
    data = _data_table(ds, samples, cfg.dataset)
    trainval, test = select_unit(data, cfg)

    # ---- validation carve, targets, groups: exactly the cached trainer's rules
    pool_pos, val_pos = carve_validation(data.scores[trainval], cfg.val_fraction, cfg.val_bins,
                                         np.random.default_rng([cfg.seed, 1]))
    unit = Unit(trainval[pool_pos], trainval[val_pos], test)
    diff = data.difficulty
    targets, d_tr = run_targets(head_cls, data, unit, source=cfg.root, hint="use a head without '_dd'")
    groups, n_clamped = run_groups(head_cls, targets, unit, d_tr, cfg.depth, cfg.theta, run_dir,
                                   write=info.is_main)
    if info.is_main:
        write_split(run_dir, data, unit)

    # ---- model and optimiser
    cuda = device.type == "cuda"
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and cuda)
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and cuda)
    backbone = FrozenBNI3D(load_i3d(cfg.weights, device="cpu"), train_bn_bias=cfg.train_bn_bias,
                           train_from=cfg.train_from, checkpoint_activations=cfg.checkpoint_activations)
    torch.manual_seed(cfg.seed)
    head = build_head(cfg.head, feat_dim=I3D.feature_dim, theta=cfg.theta, depth=cfg.depth, hidden=cfg.hidden,
                      groups=groups)
    model = FinetuneModel(backbone, head, amp=amp, channels_last=channels_last).to(device)
    if channels_last:
        model.backbone.to(memory_format=torch.channels_last_3d)
    optim = build_optimizer(model, cfg.lr_backbone, cfg.lr_head, cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    rows: list[dict] = []
    best: dict = {"epoch": None, "val_rho": None}
    best_state = None
    start_epoch = 1
    if resume:
        rows, best, best_state, start_epoch = load_checkpoint(run_dir, model, optim, rng, "cpu")
    ddp = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel
        ddp = DistributedDataParallel(model, device_ids=[device] if cuda else None, broadcast_buffers=False)

    # ---- data
    fcfg = cfg.frame_config()
    clips = ClipDataset(ds, samples, fcfg, cfg.n_clips, cfg.clip_len, cfg.max_shift)
    workers = cfg.workers if cfg.workers is not None else (4 if cuda else 0)
    t_all = torch.from_numpy(targets).float()
    tr = unit.train
    n_tr = len(tr)
    ev_pos = np.concatenate([unit.train, unit.val, unit.test])

    def eval_features(state=None) -> dict[int, torch.Tensor]:
        """Test-view features of the pool, val and test videos from the current (or `state`'s) model."""
        was = model.training
        if state is not None:
            keep = cpu_state(model)
            model.load_state_dict(state)
        model.eval()
        mine = xdist.shard(list(ev_pos), info)
        plan = [[(int(p), None) for p in mine[s:s + cfg.eval_batch]] for s in range(0, len(mine), cfg.eval_batch)]
        out: list[torch.Tensor] = []
        with torch.inference_mode():
            for x in _loader(clips, plan, workers, cuda):
                out.append(model.features(x.to(device, non_blocking=True)).cpu())
        feats = torch.cat(out) if out else torch.zeros(0, I3D.feature_dim)
        pairs = list(zip(mine, feats))
        if info.enabled:
            gathered: list = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, pairs)
            pairs = [p for g in gathered for p in g]
        if state is not None:
            model.load_state_dict(keep)
        model.train(was)
        return {int(p): f for p, f in pairs}

    def evaluators(feats: dict[int, torch.Tensor]):
        def stack(pos):
            return (torch.stack([feats[int(p)] for p in pos]).to(device) if len(pos)
                    else torch.zeros(0, I3D.feature_dim, device=device))
        pool = stack(unit.train)
        t_tr = t_all[unit.train].to(device)
        ev_rng = np.random.default_rng([cfg.seed, 2])           # same voters at every evaluation
        mk = [Evaluator(head_cls, stack(p), data.scores[p], diff[p] if head_cls.dd else None, pool, t_tr,
                         d_tr, cfg.voters, ev_rng) for p in (unit.val, unit.test)]
        return mk[0], mk[1]

    nan3 = {"rho": math.nan, "l2": math.nan, "rl2": math.nan}
    bs, accum = cfg.batch_size, cfg.grad_accum
    if bs < info.world_size:
        raise TrainError(f"batch_size {bs} (pairs per micro-step over all ranks) is smaller than the "
                         f"{info.world_size} processes; raise --batch-size")
    last_feats = None
    epochs = range(start_epoch, cfg.epochs + 1)
    bar = None
    if progress and info.is_main:
        from tqdm import tqdm
        bar = tqdm(epochs, desc=f"finetune {cfg.dataset}/{cfg.unit}/{cfg.head} seed{cfg.seed}", leave=False,
                   dynamic_ncols=True)
    n_dropped_pairs = 0
    for epoch in (bar if bar is not None else epochs):
        model.train()
        # ---- the epoch's global plan, identical on every rank (drawn from the run's Generator)
        if head_cls.pairwise:
            q, e, n_dropped_pairs = train_pairs(n_tr, rng, difficulty=d_tr)
            perm = rng.permutation(q.size)
            q, e = q[perm], e[perm]
        else:
            q, e = rng.permutation(n_tr), None
        n_items = q.size
        n_batches = math.ceil(n_items / bs)      # 0 when every query was dropped (DD, no partner)
        if n_items == 0:
            log.warning("%s: epoch %d has no training pair (no two pool videos share a difficulty); "
                        "nothing to train", run_dir, epoch)
        plan, meta = [], []
        for b in range(n_batches):
            qb = q[b * bs:(b + 1) * bs]
            aq = draw_augs(rng, qb.size, cfg.max_shift)
            ae = draw_augs(rng, qb.size, cfg.max_shift) if e is not None else None
            sl = _slice(qb.size, info)
            items = [(int(tr[k]), a) for k, a in zip(qb[sl], aq[sl])]
            if e is not None:
                eb = e[b * bs:(b + 1) * bs]
                items += [(int(tr[k]), a) for k, a in zip(eb[sl], ae[sl])]
                meta.append((tr[qb[sl]], tr[eb[sl]], qb.size))
            else:
                meta.append((tr[qb[sl]], None, qb.size))
            plan.append(items)
        loss_sum = torch.zeros((), dtype=torch.float64)
        optim.zero_grad(set_to_none=True)
        for b, x in enumerate(_loader(clips, plan, workers, cuda)):
            pq, pe, n_global = meta[b]
            nl = len(pq)
            sync = (b + 1) % accum == 0 or b + 1 == n_batches
            ctx = ddp.no_sync() if (info.enabled and not sync) else contextlib.nullcontext()
            with ctx:
                if nl == 0:
                    empty = torch.zeros((0, 1), device=device)
                    loss = ddp(empty, empty)
                else:
                    x = x.to(device, non_blocking=True)
                    tq = t_all[pq].to(device)
                    if pe is not None:
                        loss = ddp(x[:nl], tq, x[nl:], t_all[pe].to(device))
                    else:
                        loss = ddp(x, tq)
                # this slice's share of the global mean; DDP averages over ranks, hence x world size
                w = nl * info.world_size / n_global
                (loss * (w / accum)).backward()
            loss_sum += loss.detach().double().cpu() * nl
            if sync:
                optim.step()
                optim.zero_grad(set_to_none=True)
        train_loss = float(_sum_all(loss_sum.to(device) if cuda else loss_sum, info).item()) / max(1, n_items)

        row = {"epoch": epoch, "train_loss": train_loss}
        evaluated = epoch % cfg.val_every == 0 or epoch == cfg.epochs
        if evaluated:
            last_feats = eval_features()
            val_eval, test_eval = evaluators(last_feats)
            vm, tm = val_eval.metrics(model.head), test_eval.metrics(model.head)
        else:
            vm = tm = nan3
        row.update({f"val_{k}": v for k, v in vm.items()})
        row.update({f"test_{k}": v for k, v in tm.items()})
        rows.append(row)
        if evaluated:
            new_best = update_best(best, epoch, vm["rho"])
            if new_best is not None:
                best, best_state = new_best, cpu_state(model)
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.4g}", val=f"{vm['rho']:.3f}", test=f"{tm['rho']:.3f}")
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            if info.is_main:
                atomic_write_text(run_dir / "metrics.csv", metrics_csv(rows))
                save_checkpoint(run_dir, model, optim, epoch, rng, rows, best, best_state)
            xdist.barrier(info)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    if bar is not None:
        bar.close()

    # ---- selected and final models on the test set
    final_state = cpu_state(model)
    if last_feats is None:           # resumed after the last epoch's checkpoint
        last_feats = eval_features()
    sel_feats = last_feats if best["epoch"] == cfg.epochs else eval_features(best_state)
    model.head.load_state_dict(_sub(best_state, "head."))
    sel_pred, sel_pv, sel_leaf = evaluators(sel_feats)[1].predict(model.head)
    model.head.load_state_dict(_sub(final_state, "head."))
    test_eval = evaluators(last_feats)[1]
    fin_pred, fin_pv, fin_leaf = test_eval.predict(model.head)
    if not info.is_main:
        xdist.barrier(info)
        return run_dir
    atomic_write_text(run_dir / "metrics.csv", metrics_csv(rows))
    atomic_torch_save(_sub(final_state, "head."), run_dir / "model_final.pt")
    atomic_torch_save(_sub(best_state, "head."), run_dir / "model_selected.pt")
    atomic_torch_save(_sub(final_state, "backbone.i3d."), run_dir / "backbone_final.pt")
    atomic_torch_save(_sub(best_state, "backbone.i3d."), run_dir / "backbone_selected.pt")
    write_predictions(run_dir, data, unit, test_eval, sel_pred, sel_pv, fin_pred, fin_pv)
    if head_cls.tree:
        write_leaf_counts(run_dir, cfg.depth, sel_leaf, fin_leaf)
    summary = run_summary(cfg, data, unit, cfg.dataset, rows, best, sel_pred, fin_pred,
                          n_dropped_pairs=n_dropped_pairs, n_clamped=n_clamped,
                          voters=cfg.voters if head_cls.pairwise else 0, mode="finetune",
                          extra={"world_size": info.world_size})
    atomic_write_text(run_dir / "timing.json", dump_json({"seconds": time.perf_counter() - t_start}))
    atomic_write_text(run_dir / "summary.json", dump_json(summary))
    xdist.barrier(info)
    log.info("%s: selected epoch %s test rho %s (final %s)", run_dir, best["epoch"],
             summary["selected"]["rho"], summary["final"]["rho"])
    return run_dir


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------------ CLI
def _frame_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        h, w = (int(v) for v in parts)
    except ValueError:
        raise ConfigError(f"--frame-size expects HEIGHT,WIDTH (e.g. 455,256), got {value!r}") from None
    return h, w


def finetune_cli_main(*, dataset: str, root: str, force: bool = False, progress: bool = True,
                      **options: Any) -> list[Path]:
    """What `python -m train_head finetune` does: resolve the config (preset + options) and run it.

    `cls="all"` on a dataset with several classes/tasks runs each one on its own, one after the other
    (SPEC section 1); it returns the run folders."""
    options = dict(options)
    if "frame_size" in options:
        options["resize_hw"] = _frame_size(options.pop("frame_size"))
    units: list[str | None] = [options.pop("cls", None)]
    if units[0] == "all":
        from data import get_dataset
        classes = sorted({s.cls for s in get_dataset(dataset, root).samples()})
        units = classes if len(classes) > 1 else [None]
    return [finetune(resolve_finetune_config(dataset, root, **options, cls=u), force=force, progress=progress)
            for u in units]


def _build_command():
    import click

    params = [
        click.Option(["--dataset"], required=True, help="dataset name (aqa7, mtl_aqa, jigsaws, csv, synthetic)"),
        click.Option(["--root"], required=True, type=click.Path(exists=True, file_okay=False),
                     help="the dataset's folder"),
        click.Option(["--head"], default=None, help="head (default: the dataset preset's, core / core_dd)"),
        click.Option(["--class", "--task", "cls"], default=None, help="AQA-7 class / JIGSAWS task"),
        click.Option(["--protocol"], default=None, help="JIGSAWS cross-validation protocol (4fold, loso, louo)"),
        click.Option(["--fold"], default=None, help="held-out fold of --protocol"),
        click.Option(["--epochs"], type=int, default=None, help="[200]"),
        click.Option(["--batch-size"], type=int, default=None,
                     help="pairs per micro-step over all processes [2]"),
        click.Option(["--grad-accum"], type=int, default=None, help="micro-steps per Adam update [2]"),
        click.Option(["--lr-backbone"], type=float, default=None, help="[1e-4]"),
        click.Option(["--lr-head"], type=float, default=None, help="[1e-3]"),
        click.Option(["--frame-size"], default=None, help="resize HEIGHT,WIDTH (or HEIGHTxWIDTH) [455,256]"),
        click.Option(["--crop"], type=int, default=None, help="square crop [224]"),
        click.Option(["--interp"], type=click.Choice(["nearest", "bilinear_short_side"]), default=None),
        click.Option(["--norm"], type=click.Choice(["imagenet", "minus1to1"]), default=None),
        click.Option(["--n-clips"], type=int, default=None, help="clips per video [10]"),
        click.Option(["--clip-len"], type=int, default=None, help="frames per clip [16]"),
        click.Option(["--weights"], default=None, help="kinetics400 | random | PATH [kinetics400]"),
        click.Option(["--train-from"], default=None, help="first I3D endpoint that trains [all]"),
        click.Option(["--train-bn-bias/--freeze-bn-bias"], default=None,
                     help="the batch-norm shift trains [train]; statistics are always frozen"),
        click.Option(["--max-shift"], type=int, default=None, help="MTL-AQA end-frame shift range [3]"),
        click.Option(["--device"], default=None, help="auto | cpu | cuda [auto]"),
        click.Option(["--amp"], type=click.Choice(["auto", "bf16", "off"]), default=None),
        click.Option(["--channels-last"], type=click.Choice(["auto", "on", "off"]), default=None),
        click.Option(["--checkpoint-activations/--no-checkpoint-activations"], default=None,
                     help="recompute Inception blocks in backward (less memory)"),
        click.Option(["--workers"], type=int, default=None, help="decoding workers [4 on CUDA, 0 on CPU]"),
        click.Option(["--voters"], type=int, default=None, help="exemplars per test video [10]"),
        click.Option(["--val-every"], type=int, default=None, help="evaluate every k epochs [1]"),
        click.Option(["--seed"], type=int, default=None, help="[0]"),
        click.Option(["--out"], default=None, help="results root [artifacts/runs]"),
        click.Option(["--tag"], default=None, help="head-level tag of the run folder [finetune]"),
        click.Option(["--force"], is_flag=True, help="retrain even if the run folder is complete"),
        click.Option(["--no-progress"], is_flag=True),
        click.Option(["-v", "--verbose"], is_flag=True),
    ]

    def callback(dataset, root, force, no_progress, verbose, **options):
        from data import DataError
        from extract.weights import WeightsError

        if verbose:
            logging.basicConfig(level=logging.INFO)
        info = xdist.dist_info()
        try:
            run_dirs = finetune_cli_main(dataset=dataset, root=root, force=force, progress=not no_progress,
                                         **options)
        except (ConfigError, TrainError, DataError, WeightsError) as exc:
            raise click.ClickException(str(exc)) from None
        if info.is_main:
            for run_dir in run_dirs:
                summary = json.loads((run_dir / "summary.json").read_text())
                click.echo(f"{run_dir}: selected epoch {summary['selected_epoch']} test rho "
                           f"{summary['selected']['rho']} (final {summary['final']['rho']}); "
                           f"{info.world_size} process(es)")

    return click.Command("finetune", params=params, callback=callback,
                         help="End-to-end fine-tuning of I3D + head from frames (docs/FINETUNE.md).")


finetune_command = _build_command()


def register(group) -> None:
    """Add the `finetune` command to a click group: `register(cli)` in train_head/__main__.py."""
    group.add_command(finetune_command, "finetune")


if __name__ == "__main__":
    finetune_command()
