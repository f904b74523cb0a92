"""The process-wide settings of a training run, set for its duration and restored afterwards: the thread
count, deterministic algorithms (CPU always; CUDA when asked), one warning per distinct message from the
pair sampler. One setting stays: the C allocator keeps freed memory for reuse (`keep_freed_memory`)."""
from __future__ import annotations

import contextlib
import ctypes
import logging
import sys

import torch


@contextlib.contextmanager
def run_environment(threads: int = 0, *, device: torch.device | None = None, deterministic: bool = False):
    """One warning per distinct message from the pair sampler, the run's thread count, and deterministic
    algorithms (warn only) on the CPU, where they cost nothing; on CUDA only when asked (`deterministic`:
    slower cuDNN kernels; CUBLAS_WORKSPACE_CONFIG is then set for reproducible matrix products). All
    restored afterwards, except that freed memory is kept for reuse from then on (`keep_freed_memory`)."""
    import os

    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cuda = device is not None and device.type == "cuda"
    if cuda and deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _set_deterministic(not cuda or deterministic, warn_only=True)
    pairs_log, once = logging.getLogger("train_head.pairs"), _OncePerMessage()
    pairs_log.addFilter(once)
    prev_threads = torch.get_num_threads()
    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        _set_deterministic(prev[0], warn_only=prev[1])
        pairs_log.removeFilter(once)
        torch.set_num_threads(prev_threads)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20          # glibc's largest allowed value
TRIM_THRESHOLD = 512 << 20


def keep_freed_memory() -> bool:
    """Let glibc's malloc serve blocks up to 32 MiB from its heap and keep up to 512 MiB of freed heap
    memory instead of handing it back to the kernel; True when set (glibc), False elsewhere (no change).

    Why: PyTorch's CPU tensors come straight from malloc. By default glibc maps each large block afresh
    (mmap) and unmaps it when freed, so every large temporary (an evaluation batch's tree level is
    ~29 MB; the per-step gradients ~10 MB) is new memory that the kernel must fault in and zero page by
    page. Measured on the MTL-AQA-sized bench cache (2 threads): one test-set prediction of core_dd
    57-72 ms -> 45-47 ms, one training step 8.0 -> 6.5 ms (with gradients set to None). Numbers are
    unchanged: only where memory comes from changes. The setting stays for the process (it is what a
    long-running trainer wants; glibc's own adaptive threshold does the same for blocks it has seen
    freed, but gives memory back at the top of the heap, which the next step then faults in again)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok


def _set_deterministic(mode: bool, *, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms`` without its import of torch._inductor (~3 s on first use,
    a large share of a small run); that import only serves compiled code, which stage two never uses.
    Once torch._inductor is loaded (someone compiles), the public call keeps its config in step."""
    if "torch._inductor" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


class _OncePerMessage(logging.Filter):
    """Lets each distinct message through once (train_pairs warns about the same dropped queries every
    epoch)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg in self.seen:
            return False
        self.seen.add(msg)
        return True
