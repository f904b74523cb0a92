"""torchrun helpers: rank detection, the process group, failure-aware barriers, sharding.

    torchrun --nproc_per_node 4 -m extract features --dataset aqa7 --root /data/AQA-7
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 8 -m extract features ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; without them (a plain ``python -m``)
everything here is a no-op for a single process. One GPU per process: ``cuda`` becomes
``cuda:LOCAL_RANK`` and ``torch.cuda.set_device`` is always called on CUDA. Two ranks on one GPU is an
error (``--device cuda:0`` under torchrun, more ranks per node than GPUs, or two ranks that see the
same GPU: checked by its UUID once the group is up).

Failures: a rank that raises calls `report_failure` (the extraction does), which puts its error into
the rendezvous store; `barrier` waits on the store, not in a collective, and raises `DistError` naming
the failed rank and its error within about a second, instead of waiting for the others for hours.
Collectives (the process group: gloo for the extraction, which needs no GPU collectives; nccl for
fine-tuning's DistributedDataParallel) time out after ``AQA_DIST_TIMEOUT_MIN`` minutes (default 10).
A barrier waits at most ``AQA_DIST_WAIT_H`` hours (default 24: the slowest rank's share of a long
extraction) for ranks that are still working; losing the store (rank 0 gone) ends the wait at once.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


class DistError(RuntimeError):
    """Another rank failed, or the ranks cannot work together (one line: which rank, what to do)."""


def _minutes(name: str, default: float) -> _dt.timedelta:
    try:
        return _dt.timedelta(minutes=float(os.environ.get(name) or default))
    except ValueError:
        raise ValueError(f"environment variable {name}={os.environ[name]!r} is not a number of minutes") from None


def collective_timeout() -> _dt.timedelta:
    return _minutes("AQA_DIST_TIMEOUT_MIN", 10.0)


def wait_timeout() -> _dt.timedelta:
    return _minutes("AQA_DIST_WAIT_H", 24.0) * 60        # the variable is in hours


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
    """One GPU per process: ``cuda`` -> ``cuda:LOCAL_RANK`` under torchrun (CPU unchanged). A fixed
    ``cuda:N`` under torchrun, or more ranks on a node than it has GPUs, is a DistError."""
    if device.type != "cuda" or not info.enabled:
        return device
    if device.index is not None:
        raise DistError(f"--device {device} under torchrun: every rank would use that one GPU; pass --device "
                        f"cuda (or auto) and each rank takes cuda:LOCAL_RANK")
    n = torch.cuda.device_count()
    if info.local_rank >= n:
        raise DistError(f"rank {info.rank} has LOCAL_RANK={info.local_rank} but this node shows {n} GPU(s): two "
                        f"ranks would share a GPU; start at most {n} processes per node (--nproc_per_node {n})")
    return torch.device("cuda", info.local_rank)


_STORE = None        # the rendezvous store of the group this module started (keys under "aqa/")


def init(device: torch.device, info: DistInfo | None = None, *, backend: str | None = None
         ) -> tuple[DistInfo, bool]:
    """Start the process group when running under torchrun; ``set_device`` on CUDA. Returns (info,
    whether we started it). ``backend``: gloo on CPU, nccl on CUDA unless given (the extraction: gloo)."""
    global _STORE
    info = info or dist_info()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not info.enabled or not torch.distributed.is_available() or torch.distributed.is_initialized():
        return info, False
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    timeout = collective_timeout()
    store, rank, world = next(torch.distributed.rendezvous("env://", info.rank, info.world_size, timeout=timeout))
    kwargs = {"device_id": device} if backend == "nccl" else {}
    torch.distributed.init_process_group(backend, store=torch.distributed.PrefixStore("pg", store), rank=rank,
                                         world_size=world, timeout=timeout, **kwargs)
    _STORE = torch.distributed.PrefixStore("aqa", store)
    log.info("rank %d/%d: process group up (%s, %s)", info.rank, info.world_size, backend, device)
    if device.type == "cuda":
        _check_gpus_unique(device, info)
    return info, True


def _check_gpus_unique(device: torch.device, info: DistInfo) -> None:
    props = torch.cuda.get_device_properties(device)
    mine = f"{socket.gethostname()}/{getattr(props, 'uuid', None) or props.name + ':' + str(device.index)}"
    _STORE.set(f"gpu/{info.rank}", mine)
    barrier(info, "gpus")
    seen: dict[str, int] = {}
    for r in range(info.world_size):
        key = _STORE.get(f"gpu/{r}").decode()
        if key in seen:
            raise DistError(f"ranks {seen[key]} and {r} run on the same GPU ({key}); give each process its own "
                            f"GPU (CUDA_VISIBLE_DEVICES, --nproc_per_node)")
        seen[key] = r


def report_failure(info: DistInfo, exc: BaseException) -> None:
    """Tell the other ranks (waiting in `barrier`) that this one failed, and why (best effort)."""
    if _STORE is None or not info.enabled:
        return
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:500] if str(exc) else type(exc).__name__
    try:
        _STORE.set(f"failed/{info.rank}", text)
        _STORE.add("n_failed", 1)
    except Exception as e:                 # the store may be gone already (rank 0 exited)
        log.debug("could not report the failure of rank %d: %s", info.rank, e)


_GEN: dict[str, int] = {}


def barrier(info: DistInfo, name: str = "barrier", timeout: _dt.timedelta | None = None) -> None:
    """Wait until every rank got here; raise DistError as soon as any rank reported a failure, when the
    store is lost, or after ``timeout`` (default `wait_timeout`)."""
    if not info.enabled or _STORE is None:
        if info.enabled and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()    # a group started by someone else: its own barrier
        return
    gen = _GEN[name] = _GEN.get(name, 0) + 1
    keys = [f"{name}/{gen}/{r}" for r in range(info.world_size)]
    limit = time.monotonic() + (timeout or wait_timeout()).total_seconds()
    pause = 0.01
    try:
        _STORE.set(keys[info.rank], "1")
        while True:
            if _STORE.add("n_failed", 0):
                raise DistError(_failure_text(info))
            if _STORE.check(keys):
                return
            if time.monotonic() > limit:
                missing = [r for r, k in enumerate(keys) if not _STORE.check([k])]
                raise DistError(f"rank {info.rank}: ranks {missing} did not reach '{name}' within "
                                f"{(timeout or wait_timeout())}; they may hang (see their logs)")
            time.sleep(pause)
            pause = min(1.0, pause * 2)
    except DistError:
        raise
    except Exception as e:                # the store's server (rank 0's agent) is gone
        raise DistError(f"rank {info.rank}: lost contact with the other ranks while waiting at '{name}' "
                        f"({type(e).__name__}: {e}); another rank probably failed, see its log") from None


def _failure_text(info: DistInfo) -> str:
    for r in range(info.world_size):
        if r != info.rank and _STORE.check([f"failed/{r}"]):
            return f"rank {r} failed ({_STORE.get(f'failed/{r}').decode()}); rank {info.rank} stops too"
    return f"rank {info.rank} stops: another rank failed"


def finalize(started: bool) -> None:
    global _STORE
    if started and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if started:
        _STORE = None
        _GEN.clear()


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
