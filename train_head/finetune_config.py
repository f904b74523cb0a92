"""The configuration of end-to-end fine-tuning: `BaseConfig` (train_head/config.py) plus the backbone, the
frames and the precision. Import it from `train_head.config` (re-exported there) or from here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from train_head.config import BaseConfig, ConfigError


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(BaseConfig):
    """End-to-end fine-tuning (docs/FINETUNE.md). dataset + root: the registry name and its folder (a
    CSV file for `csv`). lr_backbone / lr_head: Adam's two groups (paper 1e-4 / 1e-3). train_bn_bias:
    the batch-norm shift trains (statistics never do). train_from: first I3D endpoint that trains (None
    = all). weights: kinetics400 | random | path. norm, resize_hw, crop, resize_mode: the frame pipeline.
    n_clips x clip_len: clips per video. max_shift: MTL-AQA end-frame shift range. precision: auto (bf16
    on CUDA) | bf16 | fp32. channels_last: auto | on | off. checkpoint_activations, workers (None = 4
    on CUDA, 0 on CPU), eval_batch: speed and memory only. frame_store: decode every video once into a
    memory-mapped uint8 store and cut the views on the device: "auto" (on CUDA; the store goes to
    <out>/_frames/, about T x 455 x 256 x 3 bytes a video, 36 MB), "off", or a folder; the same clips."""
    batch_size: int = 2
    grad_accum: int = 2
    tag: str = "finetune"
    root: str = ""
    lr_backbone: float = 1e-4
    lr_head: float = 1e-3
    train_bn_bias: bool = True
    train_from: str | None = None
    weights: str = "kinetics400"
    norm: str = "imagenet"
    resize_hw: tuple[int, int] = (455, 256)
    crop: int = 224
    resize_mode: str = "nearest"
    n_clips: int = 10
    clip_len: int = 16
    max_shift: int = 3
    precision: str = "auto"
    channels_last: str = "auto"
    checkpoint_activations: bool = False
    workers: int | None = None
    eval_batch: int = 4
    frame_store: str = "auto"

    mode: ClassVar[str] = "finetune"
    speed_only: ClassVar[tuple[str, ...]] = ("workers", "eval_batch", "checkpoint_activations",
                                             "checkpoint_every", "tensorboard", "frame_store")
    _positive = BaseConfig._positive + ("n_clips", "clip_len", "eval_batch", "crop")

    def validate(self) -> None:
        from extract.i3d import ENDPOINTS

        super().validate()
        if self.precision == "off":                     # the old --amp off
            object.__setattr__(self, "precision", "fp32")
        if not self.dataset or not self.root:
            raise ConfigError("fine-tuning needs `dataset` and `root` (the dataset's folder or CSV file)")
        if self.lr_backbone < 0 or self.lr_head <= 0:
            raise ConfigError("`lr_backbone` must be >= 0 and `lr_head` > 0")
        if self.precision not in ("auto", "bf16", "fp32") or self.channels_last not in ("auto", "on", "off"):
            raise ConfigError("`precision` must be auto|bf16|fp32 and `channels_last` auto|on|off")
        if self.train_from is not None and self.train_from not in ENDPOINTS:
            raise ConfigError(f"`train_from` {self.train_from!r} is not an I3D endpoint; one of {ENDPOINTS}")
        if self.max_shift < 0 or (self.workers is not None and self.workers < 0):
            raise ConfigError("`max_shift` and `workers` must be >= 0")
        try:
            self.frame_config()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def frame_config(self):
        from data.transforms import FrameConfig

        return FrameConfig(resize_hw=self.resize_hw, crop=self.crop, norm=self.norm, interp=self.resize_mode)
