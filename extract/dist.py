"""torchrun helpers for the extraction: rank detection, process group, barrier, sharding.

    torchrun --nproc_per_node 4 -m extract features --dataset aqa7 --root /data/AQA-7
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 8 -m extract features ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them (a plain ``python -m extract``) everything
here is a no-op for a single process. The backend is gloo on CPU and nccl on CUDA (one GPU per process,
``cuda:LOCAL_RANK``). Every rank writes its own part files next to the output; rank 0 merges them.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

# A rank that finishes early waits at the final barrier for the slowest rank: allow long runs.
_TIMEOUT = _dt.timedelta(hours=float(os.environ.get("AQA_DIST_TIMEOUT_H", "24")))


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    try:
        return int(v) if v not in (None, "") else default
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer") from None


def dist_info() -> DistInfo:
    """Rank/world size from torchrun's environment (single process when absent)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """One GPU per process: ``cuda`` -> ``cuda:LOCAL_RANK`` under torchrun (CPU unchanged)."""
    if device.type == "cuda" and device.index is None and info.enabled:
        return torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
    return device


def init(device: torch.device, info: DistInfo | None = None) -> tuple[DistInfo, bool]:
    """Start the process group when running under torchrun. Returns (info, whether we started it)."""
    info = info or dist_info()
    if not info.enabled or not torch.distributed.is_available():
        return info, False
    if torch.distributed.is_initialized():
        return info, False
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend, timeout=_TIMEOUT, **kwargs)
    log.info("rank %d/%d: process group up (%s, %s)", info.rank, info.world_size, backend, device)
    return info, True


def barrier(info: DistInfo) -> None:
    if info.enabled and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def finalize(started: bool) -> None:
    if started and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's share, round robin (``items[rank::world]``): balanced, and each rank's part of a
    dataset sorted by size stays mixed."""
    return list(items[info.rank::info.world_size])


def contiguous_slice(n: int, info: DistInfo) -> slice:
    """This rank's contiguous share of n items (np.array_split sizes): rank r of a global batch."""
    q, r = divmod(n, info.world_size)
    start = info.rank * q + min(info.rank, r)
    return slice(start, start + q + (1 if info.rank < r else 0))


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `x` over the ranks (in place; unchanged for a single process)."""
    if info.enabled:
        torch.distributed.all_reduce(x)
    return x
