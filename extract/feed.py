"""The decode side of stage one: one item per video, the uint8 frames, delivered as they are ready.

    for item in decoded_videos(dataset, items, max_shift, workers=7):
        ("frames", index, uint8 tensor [T + 2*max_shift, H, W, 3], release)   or   ("fail", index, text, exc)
        # call release() once the frames are no longer needed (they may sit in a shared slot)

The CPU does nothing per video but decode: views, normalisation and clip cutting run on the device
(`extract.views_device`). Each video is one work item, so a worker never holds half a video and the
workers share the list dynamically; with ``in_order=False`` (the default) videos are delivered in the
order they finish, so one slow video does not stall the others (results are placed by index).

Where the decoding runs (``mode``):
- ``workers=0``: in the calling thread (the CPU default: the network needs the cores);
- ``"processes"``: DataLoader worker processes. The decoded frames cross to the main process through a
  ring of shared-memory slots allocated once (`SlotRing`): ``workers + 3`` slots of 1.25 x the first
  video's size, e.g. 10 x 1.25 x 109 x 256 x 455 x 3 bytes = 476 MB for 7 workers at 455x256 (MTL-AQA
  views), 3 workers: 286 MB. That is all the shared memory the feed uses (a video larger than a slot,
  or one decoded while every slot is busy, goes through DataLoader's own shared tensors). Containers
  often give ``/dev/shm`` only 64 MiB (``docker run --shm-size 1g`` raises it);
- ``"threads"``: a thread pool in the main process (no shared memory; JPEG decoding releases the GIL,
  the rest of a frame's handling does not, so it scales less well than processes);
- ``"auto"`` (default): processes when ``/dev/shm`` has room for the ring (measured on the first video,
  which the calling thread decodes itself), else threads, with a warning naming the sizes.

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
SPARE = 2              # slots for the videos the consumer holds


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


def slot_bytes(video_bytes: int) -> int:
    return int(video_bytes * 1.25) + 4096          # room for slightly larger videos


def ring_bytes(workers: int, video_bytes: int, spare: int | None = None) -> int:
    """Shared memory of the process feed: one slot per worker, one being delivered, the spares."""
    return (workers + 1 + (SPARE if spare is None else spare)) * slot_bytes(video_bytes)


def choose_mode(mode: str, workers: int, video_bytes: int, free: int | None = None) -> str:
    """``"processes"`` or ``"threads"`` for ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"decode mode must be one of {MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    free = shm_free_bytes() if free is None else free
    need = ring_bytes(workers, video_bytes)
    if free is not None and free < need:
        log.warning("decoding in %d threads instead of worker processes: %s has %.0f MiB free, the ring of "
                    "decoded videos needs about %.0f MiB (%d slots of %.1f MiB); give the container more "
                    "shared memory (e.g. docker run --shm-size 1g) for process workers", workers, SHM,
                    free / 2**20, need / 2**20, workers + 1 + SPARE, slot_bytes(video_bytes) / 2**20)
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
    """Key k (or ``(k, slot)``): ``("frames", index, uint8 tensor, release)`` or ``("fail", index, text,
    exception)`` for ``items[k]``. With a slot of a `SlotRing` the frames are copied into that shared
    slot and the worker returns only its number (`decoded_videos` turns it back into a tensor)."""

    def __init__(self, dataset, items: Sequence[tuple[int, Any]], max_shift: int, ring: "SlotRing | None" = None):
        self.dataset, self.items, self.max_shift = dataset, list(items), int(max_shift)
        self.ring = ring

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key) -> tuple:
        k, slot = key if isinstance(key, tuple) else (key, -1)
        index, sample = self.items[k]
        try:
            frames = self.dataset.read_frames(sample, max_shift=self.max_shift)
        except Exception as e:      # DataError, decode errors from PIL/av: the caller records or raises
            text = f"{type(e).__name__}: {e}"
            return ("fail", index, text, _portable(e, text), slot)
        t = torch.from_numpy(frames)
        if slot >= 0 and self.ring is not None and self.ring.fits(t):
            self.ring.slots[slot, :t.numel()].copy_(t.view(-1))
            return ("slot", index, slot, tuple(t.shape))
        return ("frames", index, t, slot)


class SlotRing:
    """Shared-memory slots allocated once, before the workers start: a worker copies a decoded video
    into the slot it was given (a memcpy into pages mapped once) instead of DataLoader moving a fresh
    tensor into shared memory per video (``share_memory_`` of 38 MB measured ~80 ms vs ~8 ms for the
    copy). The main process frees a slot when the consumer calls the item's ``release``; a worker given
    no free slot (-1) returns its frames the DataLoader way, so a slow consumer never blocks."""

    def __init__(self, n_slots: int, slot_bytes: int):
        self.slots = torch.empty((n_slots, slot_bytes), dtype=torch.uint8).share_memory_()
        self.free = list(range(n_slots))
        self.n_fallback = 0

    def fits(self, t: torch.Tensor) -> bool:
        return t.numel() <= self.slots.shape[1]

    def take(self) -> int:
        if self.free:
            return self.free.pop()
        self.n_fallback += 1
        return -1

    def view(self, slot: int, shape: tuple) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= d
        return self.slots[slot, :n].view(shape)

    def releaser(self, slot: int):
        done = []

        def release() -> None:
            if slot >= 0 and not done:
                done.append(1)
                self.free.append(slot)
        return release


def _keys(keys: Sequence[int], ring: SlotRing) -> Iterator[tuple[int, int]]:
    """The DataLoader's sampler: each key with a free slot (taken when the loader asks for the key)."""
    for k in keys:
        yield (k, ring.take())


def _no_release() -> None:
    pass


def _deliver(item: tuple, ring: SlotRing | None) -> tuple:
    """A worker's item as the consumer sees it: ``("frames", index, tensor, release)`` / ``("fail", ...)``."""
    slot = item[2] if item[0] == "slot" else item[-1]
    release = ring.releaser(slot) if ring is not None else _no_release
    if item[0] == "slot":
        return ("frames", item[1], ring.view(item[2], item[3]), release)
    release()                                    # a slot given but not used (a failure or a larger video)
    return item[:4] if item[0] == "fail" else ("frames", item[1], item[2], _no_release)


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
                yield _deliver(running.pop(0).result(), None)
                continue
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for f in [f for f in running if f in done]:
                running.remove(f)
                yield _deliver(f.result(), None)
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def decoded_videos(dataset, items: Sequence[tuple[int, Any]], max_shift: int, *, workers: int = 0,
                   mode: str = "auto", in_order: bool = False, spare_slots: int = SPARE) -> Iterator[tuple]:
    """Decode every ``(index, sample)`` of ``items`` once; yield ``("frames", index, uint8 tensor,
    release)`` or ``("fail", index, text, exception)`` per video (module docstring).

    Call ``release()`` when the tensor is no longer needed (it may live in a shared slot that is then
    reused); ``spare_slots``: slots beyond one per worker, for the items the consumer holds."""
    src = DecodedVideos(dataset, items, max_shift)
    if not len(src):
        return
    if workers <= 0:
        for k in range(len(src)):
            yield _deliver(src[k], None)
        return
    first = _deliver(src[0], None)               # decoded here: its size decides processes vs threads
    video_bytes = first[2].numel() if first[0] == "frames" else 0
    yield first
    rest = range(1, len(src))
    if not rest:
        return
    how = choose_mode(mode, workers, video_bytes)
    if how == "threads":
        yield from _threads(src, rest, workers, in_order)
        return
    ring = None
    if video_bytes:                              # room for slightly larger videos; others go the slow way
        ring = src.ring = SlotRing(workers + 1 + spare_slots, slot_bytes(video_bytes))
    loader = torch.utils.data.DataLoader(
        src, batch_size=None, sampler=_KeySampler(list(rest), ring), num_workers=workers,
        prefetch_factor=1, persistent_workers=False, in_order=in_order)
    it = iter(loader)
    try:
        for item in it:
            yield _deliver(item, ring)
    finally:
        del it                                   # shuts the workers down (also after an exception)
        src.ring = None


class _KeySampler(torch.utils.data.Sampler):
    def __init__(self, keys: list[int], ring: SlotRing | None):
        self.keys, self.ring = keys, ring

    def __iter__(self):
        return _keys(self.keys, self.ring) if self.ring is not None else iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


__all__ = ["MODES", "available_cores", "ranks_per_node", "default_workers", "choose_mode", "shm_free_bytes",
           "DecodedVideos", "SlotRing", "decoded_videos"]
