"""The decode side of stage one: one item per video, the uint8 frames, delivered as they are ready.

    for item in decoded_videos(dataset, items, max_shift, workers=7):
        ("frames", index, uint8 tensor [T + 2*max_shift, H, W, 3])   or   ("fail", index, text, exception)

The CPU does nothing per video but decode: views, normalisation and clip cutting run on the device
(`extract.views_device`). Each video is one work item, so a worker never holds half a video and the
workers share the list dynamically; with ``in_order=False`` (the default) videos are delivered in the
order they finish, so one slow video does not stall the others (results are placed by index).

Where the decoding runs (``mode``):
- ``workers=0``: in the calling thread (the CPU default: the network needs the cores);
- ``"processes"``: DataLoader worker processes. Each decoded video crosses to the main process through
  shared memory (``/dev/shm``) once: at most ``workers + 2`` videos are in flight, about
  ``(workers + 2) x T x H x W x 3`` bytes, e.g. 9 x 109 x 256 x 455 x 3 = 343 MB for 7 workers at
  455x256. Containers often give ``/dev/shm`` only 64 MiB (``docker run --shm-size 1g`` raises it);
- ``"threads"``: a thread pool in the main process (no shared memory; JPEG decoding releases the GIL,
  the rest of a frame's handling does not, so it scales less well than processes);
- ``"auto"`` (default): processes when ``/dev/shm`` has room for the videos in flight (measured on the
  first video, which the calling thread decodes itself), else threads, with a warning naming the sizes.

Errors: a video whose decoding raises is delivered as ``("fail", index, "Type: message", exception)``;
the caller records it or, with ``--strict``, raises the exception (the original one, also from a worker
process).
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import pickle
import shutil
from typing import Any, Iterator, Sequence

import torch

log = logging.getLogger(__name__)

MODES = ("auto", "processes", "threads")
SHM = "/dev/shm"


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or a job's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):       # not Linux
        return os.cpu_count() or 1


def ranks_per_node() -> int:
    """Processes torchrun starts on this node (``LOCAL_WORLD_SIZE``; 1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    except ValueError:
        return 1


def default_workers(device: torch.device) -> int:
    """Decode workers per process: 0 on the CPU (the network needs the cores); on CUDA the cores of this
    process's affinity mask shared among the ranks of the node, less one for the thread feeding the GPU."""
    if device.type != "cuda":
        return 0
    return max(1, available_cores() // ranks_per_node() - 1)


def shm_free_bytes(path: str = SHM) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def choose_mode(mode: str, workers: int, video_bytes: int, free: int | None = None) -> str:
    """``"processes"`` or ``"threads"`` for ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"decode mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    free = shm_free_bytes() if free is None else free
    need = (workers + 2) * video_bytes
    if free is not None and free < need:
        log.warning("decoding in %d threads instead of worker processes: %s has %.0f MiB free, the videos in "
                    "flight need about %.0f MiB (%d x %.1f MiB); give the container more shared memory "
                    "(e.g. docker run --shm-size 1g) for process workers", workers, SHM, free / 2**20,
                    need / 2**20, workers + 2, video_bytes / 2**20)
        return "threads"
    return "processes"


def _portable(exc: BaseException, text: str) -> BaseException:
    """The exception itself when it survives pickling (to cross from a worker process), else a RuntimeError."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(text)


class DecodedVideos(torch.utils.data.Dataset):
    """Item k: ``("frames", index, uint8 tensor)`` or ``("fail", index, text, exception)`` for ``items[k]``."""

    def __init__(self, dataset, items: Sequence[tuple[int, Any]], max_shift: int):
        self.dataset, self.items, self.max_shift = dataset, list(items), int(max_shift)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> tuple:
        index, sample = self.items[k]
        try:
            frames = self.dataset.read_frames(sample, max_shift=self.max_shift)
            return ("frames", index, torch.from_numpy(frames))
        except Exception as e:      # DataError, decode errors from PIL/av: the caller records or raises
            text = f"{type(e).__name__}: {e}"
            return ("fail", index, text, _portable(e, text))


def _threads(src: DecodedVideos, keys: Sequence[int], workers: int, in_order: bool) -> Iterator[tuple]:
    ex = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    todo = iter(keys)
    running: list[cf.Future] = []
    try:
        while True:
            while len(running) < workers + 1:
                k = next(todo, None)
                if k is None:
                    break
                running.append(ex.submit(src.__getitem__, k))
            if not running:
                return
            if in_order:
                yield running.pop(0).result()
                continue
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for f in [f for f in running if f in done]:
                running.remove(f)
                yield f.result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def decoded_videos(dataset, items: Sequence[tuple[int, Any]], max_shift: int, *, workers: int = 0,
                   mode: str = "auto", in_order: bool = False) -> Iterator[tuple]:
    """Decode every ``(index, sample)`` of ``items`` once; yield its item (module docstring)."""
    src = DecodedVideos(dataset, items, max_shift)
    if not len(src):
        return
    if workers <= 0:
        for k in range(len(src)):
            yield src[k]
        return
    first = src[0]                               # decoded here: its size decides processes vs threads
    video_bytes = first[2].numel() if first[0] == "frames" else 0
    yield first
    rest = range(1, len(src))
    if not rest:
        return
    how = choose_mode(mode, workers, video_bytes)
    if how == "threads":
        yield from _threads(src, rest, workers, in_order)
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(src, list(rest)), batch_size=None, shuffle=False, num_workers=workers,
        prefetch_factor=1, persistent_workers=False, in_order=in_order)
    it = iter(loader)
    try:
        yield from it
    finally:
        del it                                   # shuts the workers down (also after an exception)


__all__ = ["MODES", "available_cores", "ranks_per_node", "default_workers", "choose_mode", "shm_free_bytes",
           "DecodedVideos", "decoded_videos"]
