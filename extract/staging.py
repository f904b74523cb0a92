"""Moving data to and from the GPU without stopping it, and writing results off the feeding thread.

- `Stager`: host -> device copies of each video's uint8 frames through a ring of pinned staging buffers
  on a side stream. The compute stream waits for the copy (an event, not the host), so copying video
  k+1 overlaps the network running on video k. A buffer is refilled only after the copy that last read
  it has finished (its event). Buffers grow to the largest video seen.
- `CopyBack`: device -> host copies of each batch's features into a ring of pinned buffers, started
  without waiting; results are handed back once their event has completed, and at most ``depth``
  batches are in flight (which also bounds how far the host runs ahead of the GPU).
- `BackgroundWriter`: one thread that runs the part-file writes (HDF5) in order, so the thread feeding
  the GPU never waits on the disk; its first error is raised in the caller at the next call.

On the CPU (or with ``pin=False``) the same classes run without streams or events: the ring and growth
logic is what the CPU tests exercise (`tests/test_extract_feed.py`); only the CUDA calls differ.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)


def _grow(n: int) -> int:
    return int(n * 1.25) + 4096          # room for slightly larger videos without reallocating


class Stager:
    """``put(frames)``: uint8 host tensor -> the same values on ``device``, ready on the current stream."""

    def __init__(self, device: torch.device | str, slots: int = 2, pin: bool | None = None, keep: bool = True):
        self.device = torch.device(device)
        # CPU: keep=True returns a copy the caller may keep; keep=False a view of the ring buffer, valid
        # until its slot is refilled (only the host's work of the GPU path: what bench_feed measures)
        self.keep = keep
        self.cuda = self.device.type == "cuda"
        self.pin = self.cuda if pin is None else bool(pin)
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.bufs: list[torch.Tensor | None] = [None] * max(1, slots)
        self.events: list[Any] = [None] * len(self.bufs)
        self.i = 0
        self.n_allocs = 0

    def put(self, frames: torch.Tensor) -> torch.Tensor:
        k = self.i
        self.i = (k + 1) % len(self.bufs)
        if self.events[k] is not None:
            self.events[k].synchronize()          # the copy that last read this buffer has finished
        n = frames.numel()
        buf = self.bufs[k]
        if buf is None or buf.numel() < n:
            self.bufs[k] = buf = torch.empty(_grow(n), dtype=frames.dtype, pin_memory=self.pin)
            self.n_allocs += 1
        host = buf[:n].view(frames.shape)
        host.copy_(frames)
        if not self.cuda:
            return host.clone() if self.keep else host   # clone: the buffer is refilled later
        with torch.cuda.stream(self.stream):
            dev = torch.empty(frames.shape, dtype=frames.dtype, device=self.device)
            dev.copy_(host, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self.stream)
        self.events[k] = ev
        cur = torch.cuda.current_stream(self.device)
        cur.wait_stream(self.stream)
        dev.record_stream(cur)                    # allocated on the side stream, used on this one
        return dev


class CopyBack:
    """``push(feats, tag)`` starts the copy of a device tensor [B, D] to the host and returns the
    ``(array, tag)`` pairs that are complete (oldest first); ``flush()`` returns the rest. An array is a
    view of a ring buffer: use it before ``depth + 1`` more pushes."""

    def __init__(self, device: torch.device | str, depth: int = 3, pin: bool | None = None,
                 event: Callable[[], Any] | None = None):
        self.device = torch.device(device)
        # CUDA: a torch.cuda.Event per copy; CPU: the copy is done when push returns, unless a test
        # passes an event factory (objects with record(), query(), synchronize()) to exercise the ring
        self.event = event
        self.cuda = self.device.type == "cuda"
        self.pin = self.cuda if pin is None else bool(pin)
        self.depth = max(1, depth)
        self.bufs: list[torch.Tensor | None] = [None] * (self.depth + 1)
        self.i = 0
        self.pending: deque = deque()
        self.n_allocs = 0
        self.max_pending = 0

    def _pop(self, wait: bool = True) -> tuple:
        ev, host, tag = self.pending.popleft()
        if ev is not None and wait:
            ev.synchronize()
        return host.numpy(), tag

    def push(self, feats: torch.Tensor, tag: Any) -> list[tuple]:
        done = self._completed()
        while len(self.pending) >= self.depth:
            done.append(self._pop())              # too many in flight: wait for the oldest
        k = self.i
        self.i = (k + 1) % len(self.bufs)
        buf = self.bufs[k]
        n = feats.numel()
        if buf is None or buf.numel() < n or buf.dtype != feats.dtype:
            self.bufs[k] = buf = torch.empty(n, dtype=feats.dtype, pin_memory=self.pin)
            self.n_allocs += 1
        host = buf[:n].view(feats.shape)
        ev = None
        if self.cuda:
            host.copy_(feats, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(self.device))
        else:
            host.copy_(feats)
            if self.event is not None:
                ev = self.event()
                ev.record()
        self.pending.append((ev, host, tag))
        self.max_pending = max(self.max_pending, len(self.pending))
        return done + self._completed()

    def _completed(self) -> list[tuple]:
        """The oldest entries whose copies have finished (handed over without waiting)."""
        done = []
        while self.pending and (self.pending[0][0] is None or self.pending[0][0].query()):
            done.append(self._pop(wait=False))
        return done

    def flush(self) -> list[tuple]:
        return [self._pop() for _ in range(len(self.pending))]


class BackgroundWriter:
    """Runs ``submit(fn, *args)`` calls in order on one thread; the first error is re-raised in the caller
    at the next ``submit`` or at ``close``; after it, queued calls are dropped."""

    _STOP = object()

    def __init__(self, maxsize: int = 64, name: str = "cache-writer"):
        self.q: queue.Queue = queue.Queue(maxsize)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.q.get()
            if job is self._STOP:
                return
            if self.error is None:
                fn, args = job
                try:
                    fn(*args)
                except BaseException as e:        # noqa: BLE001 - handed to the caller
                    self.error = e

    def _raise(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def submit(self, fn: Callable, *args) -> None:
        self._raise()
        self.q.put((fn, args))

    def close(self, raise_error: bool = True) -> None:
        """Wait for every queued call; re-raise the first error (``raise_error=False``: log it)."""
        if self.thread.is_alive():
            self.q.put(self._STOP)
            self.thread.join()
        if raise_error:
            self._raise()
        elif self.error is not None:
            log.warning("a queued cache write failed: %s", self.error)


__all__ = ["Stager", "CopyBack", "BackgroundWriter"]
