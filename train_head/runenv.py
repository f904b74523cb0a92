"""The process-wide settings of a training run, set for its duration and restored afterwards: the thread
count, deterministic algorithms (CPU always; CUDA when asked), one warning per distinct message from the
pair sampler."""
from __future__ import annotations

import contextlib
import logging
import sys

import torch


@contextlib.contextmanager
def run_environment(threads: int = 0, *, device: torch.device | None = None, deterministic: bool = False):
    """One warning per distinct message from the pair sampler, the run's thread count, and deterministic
    algorithms (warn only) on the CPU, where they cost nothing; on CUDA only when asked (`deterministic`:
    slower cuDNN kernels; CUBLAS_WORKSPACE_CONFIG is then set for reproducible matrix products). All
    restored afterwards."""
    import os

    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cuda = device is not None and device.type == "cuda"
    if cuda and deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _set_deterministic(not cuda or deterministic, warn_only=True)
    pairs_log, once = logging.getLogger("train_head.pairs"), _OncePerMessage()
    pairs_log.addFilter(once)
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        _set_deterministic(prev[0], warn_only=prev[1])
        pairs_log.removeFilter(once)
        torch.set_num_threads(prev_threads)


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
