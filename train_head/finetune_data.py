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
from pathlib import Path
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


# ------------------------------------------------------------------------------ frame store (issue 12)
STORE_VERSION = 1


class FrameStore:
    """Every sample's frames decoded ONCE into a uint8 file on disk, read back memory-mapped.

        store = FrameStore.open_or_build(ds, samples, "artifacts/frames/aqa7-diving", cfg, max_shift=0)
        store.window(pos)          # np.uint8 [T + 2*max_shift, H', W', 3] (a memory-mapped view)

    Frames are stored already resized as ``cfg`` asks (nearest to resize_hw, or bilinear short side):
    the resize is the same for every augmentation, so only the crop, flip, normalisation and clip cutting
    are left per step, and they run on the device (`device_clips`). ``frames.u8`` holds the videos one
    after the other; ``index.json`` (written last, atomically) their offsets and shapes, and the key
    (dataset, root, frames, shift, resize, video list) that a reuse must match. An interrupted build is
    redone from the start. Size: about T x H' x W' x 3 bytes a video (36 MB at 103 x 455 x 256).
    """

    def __init__(self, path: Path, index: dict):
        self.path, self.index = Path(path), index
        self.entries = [tuple(e) for e in index["videos"]]
        self.data = np.memmap(self.path / "frames.u8", dtype=np.uint8, mode="r") if self.entries else None

    @staticmethod
    def key(ds, samples, cfg: FrameConfig, max_shift: int) -> dict:
        import hashlib
        ids = "\n".join(s.video_id for s in samples).encode()
        return {"version": STORE_VERSION, "dataset": ds.name, "root": str(getattr(ds, "root", "")),
                "n_frames": int(ds.n_frames), "max_shift": int(max_shift), "resize_hw": list(cfg.resize_hw),
                "interp": cfg.interp, "videos_sha256": hashlib.sha256(ids).hexdigest()}

    @classmethod
    def open_or_build(cls, ds, samples, path, cfg: FrameConfig, max_shift: int = 0, workers: int = 0) -> "FrameStore":
        import json
        path = Path(path)
        max_shift = max_shift if ds.supports_shift else 0
        key = cls.key(ds, samples, cfg, max_shift)
        try:
            index = json.loads((path / "index.json").read_text())
            if index.get("key") == key:
                return cls(path, index)
        except (OSError, ValueError):
            pass
        return cls(path, cls._build(ds, samples, path, cfg, max_shift, workers, key))

    @staticmethod
    def _build(ds, samples, path: Path, cfg: FrameConfig, max_shift: int, workers: int, key: dict) -> dict:
        from data.fileio import atomic_write_text, dump_json
        from extract.feed import decoded_videos
        from extract.views_device import resize_short_side

        path.mkdir(parents=True, exist_ok=True)
        (path / "index.json").unlink(missing_ok=True)
        entries: list = [None] * len(samples)
        with open(path / "frames.u8", "wb") as fh:
            for item in decoded_videos(ds, list(enumerate(samples)), max_shift, workers=workers):
                if item[0] == "fail":
                    raise item[3]
                _, pos, frames, release = item
                if cfg.interp == "nearest":
                    _, h, w, _ = frames.shape
                    rows = torch.from_numpy(_nearest(h, cfg.resize_hw[0]))
                    cols = torch.from_numpy(_nearest(w, cfg.resize_hw[1]))
                    small = frames[:, rows][:, :, cols]
                else:
                    small = resize_short_side(frames, min(cfg.resize_hw))
                release()
                arr = np.ascontiguousarray(small.numpy())
                entries[pos] = [fh.tell(), *arr.shape[:3]]
                fh.write(arr.tobytes())
        index = {"key": key, "videos": entries}
        atomic_write_text(path / "index.json", dump_json(index))
        return index

    def __len__(self) -> int:
        return len(self.entries)

    def window(self, pos: int) -> np.ndarray:
        off, t, h, w = self.entries[pos]
        return self.data[off:off + t * h * w * 3].reshape(t, h, w, 3)


def _nearest(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum((np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)


def device_clips(frames: torch.Tensor, aug: "Aug | None", cfg: FrameConfig, n_frames: int, max_shift: int,
                 starts: Sequence[int], clip_len: int, out: torch.Tensor) -> None:
    """One sample's clips on the device: ``frames`` uint8 [T + 2*max_shift, H', W', 3] from the store (already
    resized) -> ``out`` [n_clips, 3, clip_len, crop, crop]: the same values as `ClipDataset` builds on the
    CPU (shift window, crop from aug.u_*, flip, normalise, cut; None = the centre test view), bitwise."""
    from data.transforms import _NORM_AFFINE

    c = cfg.crop
    _, oh, ow, _ = frames.shape
    if aug is None:
        shift, top, left, flip = 0, int(round((oh - c) / 2.0)), int(round((ow - c) / 2.0)), False
    else:
        shift, flip = (aug.shift if max_shift else 0), aug.flip   # no shift protocol: the draw is ignored
        top = min(int(aug.u_top * (oh - c + 1)), oh - c)
        left = min(int(aug.u_left * (ow - c + 1)), ow - c)
    dev = frames.device
    t = torch.from_numpy((np.asarray(starts)[:, None] + np.arange(clip_len)).reshape(-1) + max_shift + shift)
    rows = torch.arange(top, top + c, device=dev)
    cols = torch.arange(left, left + c, device=dev)
    cols = cols.flip(0) if flip else cols
    scale, offset = (torch.from_numpy(a).to(dev) for a in _NORM_AFFINE[cfg.norm])
    g = frames[t.to(dev)[:, None, None], rows[None, :, None], cols[None, None, :]]     # uint8 [C*L, c, c, 3]
    y = g.to(torch.float32).mul_(scale).add_(offset)
    out.copy_(y.view(len(starts), clip_len, c, c, 3).permute(0, 4, 1, 2, 3))


class StoreLoader:
    """Batches of a plan (lists of (position, Aug | None)) as float32 device tensors [B, n_clips, 3, L, S, S].

    A thread reads each batch's windows from the memory-mapped store ahead of time (``prefetch``
    batches; pinned memory on CUDA), the main thread copies them to the device and cuts the views
    there: the CPU neither decodes nor builds float32 clips during training."""

    def __init__(self, store: FrameStore, plan: list[list], cfg: FrameConfig, n_frames: int, n_clips: int,
                 clip_len: int, device: torch.device | str, prefetch: int = 2):
        self.store, self.plan, self.cfg = store, plan, cfg
        self.device = torch.device(device)
        self.max_shift = int(store.index["key"]["max_shift"])
        self.n_frames, self.clip_len = n_frames, clip_len
        self.starts = clip_starts(n_frames, n_clips, clip_len)
        self.prefetch = max(1, prefetch)

    def _read(self, batch: list) -> list[torch.Tensor]:
        pin = self.device.type == "cuda"
        out = []
        for pos, _ in batch:
            w = torch.from_numpy(np.array(self.store.window(pos)))      # one copy out of the page cache
            out.append(w.pin_memory() if pin else w)
        return out

    def __iter__(self):
        import queue
        import threading

        q: queue.Queue = queue.Queue(self.prefetch)
        stop = threading.Event()

        def work():
            try:
                for batch in self.plan:
                    if stop.is_set():
                        return
                    q.put(("ok", self._read(batch)))
            except BaseException as e:          # noqa: BLE001 - raised in the consumer
                q.put(("error", e))
            q.put(("end", None))

        th = threading.Thread(target=work, name="frame-store", daemon=True)
        th.start()
        try:
            for batch in self.plan:
                kind, frames = q.get()
                if kind == "error":
                    raise frames
                c = self.cfg.crop
                x = torch.empty((len(batch), len(self.starts), 3, self.clip_len, c, c), device=self.device)
                for i, ((_, aug), f) in enumerate(zip(batch, frames)):
                    device_clips(f.to(self.device, non_blocking=True), aug, self.cfg, self.n_frames, self.max_shift,
                                 self.starts, self.clip_len, x[i])
                yield x
        finally:
            stop.set()
            while th.is_alive():
                try:
                    q.get(timeout=0.1)
                except queue.Empty:
                    pass
