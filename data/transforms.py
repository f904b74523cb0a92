"""Views and frame transforms (docs/ARCHITECTURE.md, docs/METHOD.md §2).

`apply_view` turns uint8 frames [T, H, W, 3] into float32 [3, T, crop, crop]:

1. resize. `interp="nearest"` (default) resizes to `resize_hw = (height, width)` = (455, 256) with
   nearest neighbour, source index = floor(dst_index * in_size / out_size) (the rule of torch's
   `interpolate(mode="nearest")`, which the reference pipelines use; landscape frames end up stretched
   vertically: this is what the published numbers were obtained with). `interp="bilinear_short_side"`
   keeps the aspect ratio and resizes the short side to `min(resize_hw)` (bilinear, antialiased);
2. crop `crop x crop` at the view's position: "center" (offsets round((size - crop) / 2)), "tl", "tr",
   "bl", "br" (the corners);
3. horizontal flip when `view.flip`;
4. normalise: "imagenet" scales to [0, 1] then uses mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225);
   "minus1to1" maps 0..255 to [-1, 1] (what the DeepMind I3D weights expect).

With nearest resizing, steps 1-3 are one gather of precomputed row/column indices (moving whole 3-byte pixels; the
resized image is never materialised) and step 4 one multiply-add per channel, so the cost is about one pass
over the output.

`View.shift` is the MTL-AQA end-frame shift; `apply_view` does not look at it: take the window for a shift
with `shift_window` first (`Dataset.read_frames(sample, max_shift)` returns T + 2*max_shift frames).

Default views (`default_views`), test view first:
- mtl_aqa: "test" + 14 training views: end-frame shift -3..3 x {no flip, flip}, centre crop
  (named "s-3", "s-3_flip", ..., "s+3_flip");
- aqa7, jigsaws, csv, synthetic (no shift protocol): "test" + 6 training views:
  crop {center, tl, br} x {no flip, flip} (named "center", "center_flip", "tl", ...). Three crop
  positions (centre and two opposite corners) cover the spread of the paper's random crop at half the
  extraction cost of all five.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

CROPS = ("center", "tl", "tr", "bl", "br")
NORMS = ("imagenet", "minus1to1")
INTERPS = ("nearest", "bilinear_short_side")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class View:
    name: str
    shift: int = 0
    flip: bool = False
    crop: str = "center"
    role: str = "train"

    def __post_init__(self):
        if self.crop not in CROPS:
            raise ValueError(f"View {self.name!r}: crop must be one of {CROPS}, got {self.crop!r}")
        if self.role not in ("train", "test"):
            raise ValueError(f"View {self.name!r}: role must be 'train' or 'test', got {self.role!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "View":
        return cls(**d)


TEST_VIEW = View("test", 0, False, "center", "test")


@dataclass(frozen=True)
class FrameConfig:
    resize_hw: tuple[int, int] = (455, 256)
    crop: int = 224
    norm: str = "imagenet"
    interp: str = "nearest"

    def __post_init__(self):
        object.__setattr__(self, "resize_hw", tuple(int(v) for v in self.resize_hw))
        if len(self.resize_hw) != 2 or min(self.resize_hw) <= 0:
            raise ValueError(f"FrameConfig: resize_hw must be (height, width) > 0, got {self.resize_hw}")
        if self.norm not in NORMS:
            raise ValueError(f"FrameConfig: norm must be one of {NORMS}, got {self.norm!r}")
        if self.interp not in INTERPS:
            raise ValueError(f"FrameConfig: interp must be one of {INTERPS}, got {self.interp!r}")
        if self.crop <= 0:
            raise ValueError(f"FrameConfig: crop must be > 0, got {self.crop}")
        # nearest: frames become exactly resize_hw; bilinear_short_side: the short side becomes
        # min(resize_hw). Either way a crop larger than min(resize_hw) fits no frame.
        if self.crop > min(self.resize_hw):
            raise ValueError(f"crop {self.crop} is larger than the resized frame "
                             f"{self.resize_hw[0]}x{self.resize_hw[1]} ({self.interp}); use a crop of at most "
                             f"{min(self.resize_hw)} or a larger frame size")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resize_hw"] = list(self.resize_hw)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrameConfig":
        return cls(**{**d, "resize_hw": tuple(d.get("resize_hw", (455, 256)))})


def default_views(dataset_name: str) -> list[View]:
    """The stored view set of a dataset: the test view first, then the training views (module docstring)."""
    views = [TEST_VIEW]
    if dataset_name == "mtl_aqa":
        for s in range(-3, 4):
            for flip in (False, True):
                views.append(View(f"s{s:+d}" + ("_flip" if flip else ""), s, flip, "center", "train"))
    else:
        for crop in ("center", "tl", "br"):
            for flip in (False, True):
                views.append(View(crop + ("_flip" if flip else ""), 0, flip, crop, "train"))
    return views


def shift_window(frames: np.ndarray, shift: int, max_shift: int, n_frames: int) -> np.ndarray:
    """The T-frame window for end-frame shift `shift` from `read_frames(sample, max_shift)` output."""
    if abs(shift) > max_shift:
        raise ValueError(f"shift {shift} outside [-{max_shift}, {max_shift}]")
    if frames.shape[0] != n_frames + 2 * max_shift:
        raise ValueError(f"expected {n_frames + 2 * max_shift} frames, got {frames.shape[0]}")
    return frames[max_shift + shift: max_shift + shift + n_frames]


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum((np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)


def _crop_offsets(h: int, w: int, crop: int, where: str) -> tuple[int, int]:
    if crop > h or crop > w:
        raise ValueError(f"crop {crop} is larger than the resized frame {h}x{w}")
    if where == "center":
        return int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    top = 0 if where[0] == "t" else h - crop
    left = 0 if where[1] == "l" else w - crop
    return top, left


def _norm_affine(norm: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, offset), float32: value = byte * scale + offset."""
    if norm == "imagenet":
        std, mean = np.array(IMAGENET_STD), np.array(IMAGENET_MEAN)
        return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)
    return np.full(3, 1 / 127.5, np.float32), np.full(3, -1.0, np.float32)


_NORM_AFFINE = {n: _norm_affine(n) for n in NORMS}


def _resize_bilinear_short_side(frames: np.ndarray, short: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t, h, w, _ = frames.shape
    scale = short / min(h, w)
    oh, ow = max(short, int(math.floor(h * scale + 0.5))), max(short, int(math.floor(w * scale + 0.5)))
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def apply_view(frames: np.ndarray, view: View, cfg: FrameConfig = FrameConfig()) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [3, T, crop, crop]: resize, crop, flip, normalise (module docstring)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"apply_view expects uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    c = cfg.crop
    if cfg.interp == "nearest":
        _, h, w, _ = frames.shape
        oh, ow = cfg.resize_hw
        top, left = _crop_offsets(oh, ow, c, view.crop)
        rows = _nearest_index(h, oh)[top: top + c]
        cols = _nearest_index(w, ow)[left: left + c]
    else:
        frames = _resize_bilinear_short_side(frames, min(cfg.resize_hw))
        _, h, w, _ = frames.shape
        top, left = _crop_offsets(h, w, c, view.crop)
        rows = np.arange(top, top + c)
        cols = np.arange(left, left + c)
    if view.flip:
        cols = cols[::-1]
    # one gather of 3-byte pixels (numpy moves one void item per pixel: ~3x faster than gathering bytes),
    # then normalise channel by channel into channel-first [3, T, c, c]
    if not frames[0, 0].flags.c_contiguous:
        frames = np.ascontiguousarray(frames)
    pix = frames.view(np.dtype((np.void, 3)))[..., 0]
    gathered = np.ascontiguousarray(pix[:, rows[:, None], cols[None, :]])
    patch = gathered.view(np.uint8).reshape(gathered.shape + (3,))
    scale, offset = _NORM_AFFINE[cfg.norm]
    out = np.empty((3,) + patch.shape[:3], dtype=np.float32)
    for ch in range(3):
        np.multiply(patch[..., ch], scale[ch], out=out[ch])
        out[ch] += offset[ch]
    return out


def describe_resize(h: int, w: int, cfg: FrameConfig = FrameConfig()) -> str:
    """How `apply_view` turns an h x w frame into the crop, in words (the CSV dataset's notice for a
    portrait or unusual aspect ratio)."""
    c = cfg.crop
    if cfg.interp == "nearest":
        oh, ow = cfg.resize_hw
        how = (f"stretched to {oh}x{ow} (height x width, nearest neighbour, --resize-mode nearest): the "
               f"aspect ratio (width/height) goes from {w / h:.2f} to {ow / oh:.2f}")
    else:
        scale = min(cfg.resize_hw) / min(h, w)
        oh, ow = max(c, int(math.floor(h * scale + 0.5))), max(c, int(math.floor(w * scale + 0.5)))
        how = (f"scaled by {scale:.3g} to {oh}x{ow} (height x width, bilinear, --resize-mode "
               f"bilinear_short_side): the aspect ratio is kept")
    return (f"{how}; then the {c}x{c} crop keeps {min(1.0, c / oh):.0%} of the height and "
            f"{min(1.0, c / ow):.0%} of the width")


# reference clip starts where the generic rule differs from the published protocol
_REFERENCE_STARTS = {(103, 10, 16): [0, 10, 20, 30, 40, 50, 60, 70, 80, 86]}


def clip_starts(n_frames: int, n_clips: int, clip_len: int = 16) -> list[int]:
    """Start frames of `n_clips` windows of `clip_len` frames in a sample of `n_frames`.

    Generic rule: round(linspace(0, T - clip_len, n_clips)) (JIGSAWS 160/10: 0, 16, ..., 144, windows
    that do not overlap). For T = 103, 10 clips of 16 the protocol of docs/METHOD.md §2 is kept exactly
    (0, 10, ..., 80, 86); the generic rule would give 0, 10, 19, 29, ... there, so that case is a fixed
    table entry.
    """
    if n_frames < clip_len:
        raise ValueError(f"a sample of {n_frames} frames is shorter than one clip of {clip_len}")
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    ref = _REFERENCE_STARTS.get((n_frames, n_clips, clip_len))
    if ref is not None:
        return list(ref)
    return [int(v) for v in np.round(np.linspace(0, n_frames - clip_len, n_clips))]


def cut_clips(x, starts: Sequence[int], clip_len: int = 16):
    """[3, T, S, S] (numpy or torch) -> [n_clips, 3, clip_len, S, S] (same type)."""
    t = x.shape[1]
    for s in starts:
        if s < 0 or s + clip_len > t:
            raise ValueError(f"clip start {s} (+{clip_len}) outside a sample of {t} frames")
    parts = [x[:, s: s + clip_len] for s in starts]
    if isinstance(x, np.ndarray):
        return np.stack(parts)
    import torch

    return torch.stack(parts)
