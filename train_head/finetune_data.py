"""Frames for fine-tuning: per-sample training augmentation and the clip dataset the loader reads.

Training augmentation is drawn per sample per step from the run's train stream: a uniform random crop
position, a random horizontal flip, and for MTL-AQA an end-frame shift uniform in [-max_shift,
max_shift] (`read_frames(max_shift)` + `shift_window`). The test view is the centre crop, no flip, no
shift. Keys come from the main process (the plan drawn from the seed), so a batch does not depend on
the number of loader workers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from data.transforms import FrameConfig, TEST_VIEW, View, apply_view, clip_starts, cut_clips, shift_window


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


def clip_loader(dataset: ClipDataset, plan: list[list], workers: int, pin: bool):
    return torch.utils.data.DataLoader(dataset, batch_sampler=plan, collate_fn=_collate, num_workers=workers,
                                       pin_memory=pin, persistent_workers=False)


@dataclass(frozen=True)
class Labels:
    """The labels of a dataset's samples in the arrays the protocol reads (train_head.protocol)."""
    path: str
    video_ids: np.ndarray
    scores: np.ndarray
    difficulty: np.ndarray
    split: np.ndarray
    cls: np.ndarray
    folds: tuple
    judges: np.ndarray | None = None     # (N, J) judges' scores for heads that learn them (musdl)


def labels_of(ds, samples) -> Labels:
    from train_head.heads_sdl import judge_matrix

    return Labels(
        path=str(ds.root), video_ids=np.asarray([s.video_id for s in samples], dtype=str),
        scores=np.asarray([s.score for s in samples], dtype=np.float64),
        difficulty=np.asarray([np.nan if s.difficulty is None else s.difficulty for s in samples], np.float64),
        split=np.asarray([s.split for s in samples], dtype=str), cls=np.asarray([s.cls for s in samples], dtype=str),
        folds=tuple(dict(s.folds) for s in samples), judges=judge_matrix([dict(s.extra) for s in samples]))
