"""Views, normalisation and clip cutting on the device, from the uint8 frames of one video.

    dv = DeviceViews(views, frame_cfg, n_frames=103, n_clips=10, device=dev, dtype=torch.bfloat16)
    vc = dv.prepare(frames)           # frames: uint8 [T + 2*max_shift, H, W, 3] on `dev`
    vc.write(dst[:k], lo, lo + k)     # clips lo..lo+k-1 of the (view, clip) grid, view-major

The decoded uint8 frames travel to the device once per video (about 38 MB at 109 x 256 x 455); every
view and clip is cut there. The operations are `data.transforms.apply_view` + `cut_clips` written with
torch ops, so they run on the CPU or on CUDA:

- nearest (the default): one gather of the source rows/columns (the same index rule, crop offsets and
  flip as `apply_view`), then ``float32(byte) * scale + offset`` per channel: two float32 roundings, the
  same as numpy's, so the result is **bitwise equal** to `apply_view` / `cut_clips` on the same frames
  on the CPU, and on CUDA too (IEEE multiply and add, not fused: they are separate kernels);
- bilinear_short_side: the frames are resized once per video with the same `F.interpolate` call as
  `apply_view` (antialiased, rounded back to uint8), then cropped per view. Bitwise equal on the CPU;
  on CUDA the interpolation kernel may round differently: within one uint8 level per pixel, i.e. one
  step of the normalised scale (1/(255*std) = 0.0175 for ImageNet normalisation).

The output is written into a caller's batch tensor ``[k, 3, 16, S, S]`` (any dtype, any memory format):
the gathered clip is ``[k, 16, S, S, 3]``, so a channels_last_3d destination takes it without a
transpose. A float16/bfloat16 destination receives the float32 values rounded once, as ``.to(dtype)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data.transforms import (_NORM_AFFINE, FrameConfig, View, _crop_offsets, _nearest_index, clip_starts)

CLIP_LEN = 16


def resize_short_side(frames: torch.Tensor, short: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [T, H', W', 3] with the short side = ``short``: the exact operations
    of `data.transforms._resize_bilinear_short_side`, on the tensor's device."""
    t, h, w, _ = frames.shape
    scale = short / min(h, w)
    oh = max(short, int(np.floor(h * scale + 0.5)))
    ow = max(short, int(np.floor(w * scale + 0.5)))
    x = frames.permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@dataclass
class VideoClips:
    """The (view, clip) grid of one video, cut lazily into batch slices (see `DeviceViews.prepare`)."""
    src: torch.Tensor                    # uint8 [T', H', W', 3] (resized for bilinear, raw for nearest)
    index: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]   # per view: (time, rows, cols)
    n_clips: int
    scale: torch.Tensor                  # float32 [3]
    offset: torch.Tensor                 # float32 [3]

    @property
    def n(self) -> int:
        return len(self.index) * self.n_clips

    def write(self, dst: torch.Tensor, lo: int, hi: int) -> None:
        """dst[0 : hi-lo] = clips lo..hi-1 (clip c of view v is number v * n_clips + c), float values
        ``[.., 3, 16, S, S]`` in dst's dtype."""
        if not 0 <= lo <= hi <= self.n or dst.shape[0] < hi - lo:
            raise ValueError(f"clip range {lo}:{hi} outside 0:{self.n} or larger than the batch {dst.shape[0]}")
        o = 0
        while lo < hi:
            v, c0 = divmod(lo, self.n_clips)
            k = min(hi - lo, self.n_clips - c0)
            t, r, c = self.index[v]
            tt = t[c0 * CLIP_LEN:(c0 + k) * CLIP_LEN]
            g = self.src[tt[:, None, None], r[None, :, None], c[None, None, :]]    # uint8 [k*16, S, S, 3]
            y = g.to(torch.float32).mul_(self.scale).add_(self.offset)
            y = y.view(k, CLIP_LEN, *y.shape[1:]).permute(0, 4, 1, 2, 3)            # [k, 3, 16, S, S]
            dst[o:o + k].copy_(y)
            o, lo = o + k, lo + k


class DeviceViews:
    """The view transforms of one extraction (views, frame config, clip rule) for one device."""

    def __init__(self, views: Sequence[View], cfg: FrameConfig, n_frames: int, n_clips: int,
                 device: torch.device | str = "cpu"):
        self.views, self.cfg = list(views), cfg
        self.n_frames, self.n_clips = int(n_frames), int(n_clips)
        self.device = torch.device(device)
        self.max_shift = max((abs(int(v.shift)) for v in self.views), default=0)
        self.starts = clip_starts(self.n_frames, self.n_clips, CLIP_LEN)
        scale, offset = _NORM_AFFINE[cfg.norm]
        self.scale = torch.from_numpy(scale).to(self.device)
        self.offset = torch.from_numpy(offset).to(self.device)
        clip_t = (np.asarray(self.starts)[:, None] + np.arange(CLIP_LEN)[None, :]).reshape(-1)
        self._time = [torch.from_numpy(clip_t + self.max_shift + int(v.shift)).to(self.device) for v in self.views]
        self._cache: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @property
    def n_per_video(self) -> int:
        return len(self.views) * self.n_clips

    def _rows_cols(self, h: int, w: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per view, the source rows and columns of the crop (resize, crop offsets and flip folded in)."""
        key = (h, w)
        if key not in self._cache:
            c = self.cfg.crop
            out = []
            for v in self.views:
                if self.cfg.interp == "nearest":
                    oh, ow = self.cfg.resize_hw
                    top, left = _crop_offsets(oh, ow, c, v.crop)
                    rows = _nearest_index(h, oh)[top:top + c]
                    cols = _nearest_index(w, ow)[left:left + c]
                else:                              # h, w are the resized sizes here
                    top, left = _crop_offsets(h, w, c, v.crop)
                    rows, cols = np.arange(top, top + c), np.arange(left, left + c)
                if v.flip:
                    cols = cols[::-1]
                out.append((torch.from_numpy(np.ascontiguousarray(rows)).to(self.device),
                            torch.from_numpy(np.ascontiguousarray(cols)).to(self.device)))
            self._cache[key] = out
        return self._cache[key]

    def check(self, shape: Sequence[int]) -> None:
        """ValueError naming what is wrong with a frames array of this shape (before any clip is cut)."""
        want = self.n_frames + 2 * self.max_shift
        if len(shape) != 4 or shape[-1] != 3 or shape[0] != want:
            raise ValueError(f"expected uint8 frames [{want}, H, W, 3] (T={self.n_frames} + 2 x max shift "
                             f"{self.max_shift}), got {tuple(shape)}")

    def prepare(self, frames: torch.Tensor) -> VideoClips:
        """``frames``: uint8 [T + 2*max_shift, H, W, 3] on this device -> the video's clip grid."""
        if frames.dtype != torch.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        self.check(frames.shape)
        src = frames
        if self.cfg.interp != "nearest":
            src = resize_short_side(frames, min(self.cfg.resize_hw))
        h, w = int(src.shape[1]), int(src.shape[2])
        if self.cfg.interp != "nearest" and self.cfg.crop > min(h, w):
            raise ValueError(f"crop {self.cfg.crop} is larger than the resized frame {h}x{w}")
        rc = self._rows_cols(h, w)
        index = [(t, r, c) for t, (r, c) in zip(self._time, rc)]
        return VideoClips(src, index, self.n_clips, self.scale, self.offset)

    def clips(self, frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Every clip of a video at once: [V * n_clips, 3, 16, S, S] (tests, single-video scoring)."""
        vc = self.prepare(frames)
        s = self.cfg.crop
        out = torch.empty((vc.n, 3, CLIP_LEN, s, s), dtype=dtype, device=frames.device)
        vc.write(out, 0, vc.n)
        return out


__all__ = ["DeviceViews", "VideoClips", "resize_short_side", "CLIP_LEN"]
