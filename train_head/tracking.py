"""Following training: overall progress of a many-run command, and optional TensorBoard logging.

Progress (`RunProgress`): commands that run several runs (several seeds, `--class all`, sweeps;
`train_head.sweep.run_many`) print one line per event on stderr, never a redrawn bar, so that the lines
read the same in a terminal, in `make`'s output and in a CI log:

    12 runs, 2 in parallel
    [run 3/12] core/seed2 (diving) ...                  (sequential execution: the current run)
    [3/12] core/seed2 (diving): trained in 41s, val-selected test rho 0.812 | elapsed 2m03s, about 5m30s left

The estimate is the mean wall time of the runs trained so far (skipped and failed runs excluded) times
the runs left, divided by the number of runs in parallel; until one run has been trained it says so.

TensorBoard (`epoch_logger`): off by default; the `tensorboard` package is an extra requirement
(`pip install -r requirements-tensorboard.txt`). The scalars are the per-epoch row of metrics.csv, named as
its columns (train_loss, val_rho, val_l2, val_rl2, test_rho, test_l2, test_rl2; step = epoch; epochs
without evaluation write only train_loss), into `<run_dir>/tensorboard/`. Watch with
`tensorboard --logdir artifacts/runs`. The writer is made at the first epoch logged, with
`purge_step` = that epoch, so a resumed run (or a rerun with --force) replaces the events of the epochs it
trains again instead of drawing them twice. Each epoch is flushed, so the curves follow training live.
"""
from __future__ import annotations

import math
import numbers
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

EXTRA_REQUIREMENTS = "requirements-tensorboard.txt"
TB_FOLDER = "tensorboard"


class TrackingError(ValueError):
    """TensorBoard logging was asked for but cannot run; the message says what to install."""


# ------------------------------------------------------------------------------------------- progress
def fmt_seconds(s: float) -> str:
    """41s, 2m03s, 1h05m."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def run_label(cfg_dict: Mapping[str, Any]) -> str:
    """`core+depth=3/seed1 (diving)`: what tells one run of a command from the others."""
    head = str(cfg_dict.get("head")) + (f"+{cfg_dict['tag']}" if cfg_dict.get("tag") else "")
    unit = [str(v) for v in (cfg_dict.get("cls"), cfg_dict.get("fold")) if v not in (None, "")]
    return f"{head}/seed{cfg_dict.get('seed')}" + (f" ({', '.join(unit)})" if unit else "")


class RunProgress:
    """Runs done of total, the current run, elapsed time and an estimate, one line per event.

    `clock` and `stream` are there for tests (default: time.monotonic, sys.stderr at call time)."""

    def __init__(self, total: int, parallel: int = 1, *, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.parallel = int(total), max(1, int(parallel))
        self.n_done = 0
        self.trained_seconds: list[float] = []
        self._stream, self._clock = stream, clock
        self._t0 = clock()
        where = f", {self.parallel} in parallel" if self.parallel > 1 else ""
        self._say(f"{self.total} runs{where}")

    def _say(self, line: str) -> None:
        print(line, file=self._stream or sys.stderr, flush=True)

    def start(self, label: str) -> None:
        """A run begins (sequential execution: this is the current run)."""
        self._say(f"[run {self.n_done + 1}/{self.total}] {label} ...")

    def estimate(self) -> float | None:
        """Seconds left, or None before the first trained run."""
        if not self.trained_seconds:
            return None
        left = self.total - self.n_done
        mean = sum(self.trained_seconds) / len(self.trained_seconds)
        return mean * left / max(1, min(self.parallel, left)) if left else 0.0

    def done(self, row: Mapping[str, Any], label: str | None = None) -> None:
        """A run ended (row: run_many's result dict: status, run_dir, selected_rho, seconds)."""
        self.n_done += 1
        status = str(row.get("status", "?"))
        secs = row.get("seconds")
        secs = float(secs) if isinstance(secs, numbers.Real) and math.isfinite(secs) else None
        if status == "done" and secs is not None:
            self.trained_seconds.append(secs)
        rho = row.get("selected_rho")
        if status == "done":
            what = "trained" + (f" in {fmt_seconds(secs)}" if secs is not None else "")
            if isinstance(rho, numbers.Real) and math.isfinite(rho):
                what += f", val-selected test rho {rho:.3f}"
        elif status == "skipped":
            what = "not trained (" + ("already complete" if not row.get("error") else "unit too small") + ")"
        else:
            what = "FAILED (the error is reported at the end)"
        eta = self.estimate()
        if self.n_done >= self.total:
            tail = "all runs finished"
        elif eta is None:
            tail = "estimate after the first trained run"
        else:
            tail = f"about {fmt_seconds(eta)} left"
        self._say(f"[{self.n_done}/{self.total}] {label or row.get('run_dir', '?')}: {what} | "
                  f"elapsed {fmt_seconds(self._clock() - self._t0)}, {tail}")


# ---------------------------------------------------------------------------------------- tensorboard
def _summary_writer_class():
    """torch's SummaryWriter; TrackingError naming the extra requirement when `tensorboard` is missing."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it, and says so less clearly)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise TrackingError(f"TensorBoard logging (tensorboard=true) needs the 'tensorboard' package, which is not "
                            f"installed ({exc}): pip install -r {EXTRA_REQUIREMENTS} (into .venv: .venv/bin/pip "
                            f"install -r {EXTRA_REQUIREMENTS}), or turn it off (--set tensorboard=false)") from None
    return SummaryWriter


def require_tensorboard() -> None:
    """TrackingError (one line naming requirements-tensorboard.txt) unless TensorBoard logging can run; for
    checking a config before any run starts."""
    _summary_writer_class()


def epoch_logger(run_dir: str | Path, enabled: bool, *,
                 writer_factory: Callable[..., Any] | None = None) -> Callable[[int, dict], None] | None:
    """None when not `enabled`; else `log(epoch, row)` writing the row's finite numbers as scalars
    (tag = column name, step = epoch) into `<run_dir>/tensorboard/` (module docstring). Raises
    TrackingError at once (before any training) when the package is missing.

    `log.close()` closes the writer (also done when `log` is garbage-collected). `writer_factory(log_dir,
    purge_step=...)` replaces torch's SummaryWriter (tests)."""
    if not enabled:
        return None
    factory = writer_factory or _summary_writer_class()
    log_dir = Path(run_dir) / TB_FOLDER
    state: dict[str, Any] = {"writer": None}

    def log(epoch: int, row: Mapping[str, Any]) -> None:
        w = state["writer"]
        if w is None:
            log_dir.mkdir(parents=True, exist_ok=True)
            w = state["writer"] = factory(str(log_dir), purge_step=int(epoch))
            weakref.finalize(log, w.close)
        for key, value in row.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            if math.isfinite(float(value)):
                w.add_scalar(key, float(value), int(epoch))
        w.flush()

    def close() -> None:
        if state["writer"] is not None:
            state["writer"].close()
            state["writer"] = None

    log.close = close            # type: ignore[attr-defined]
    log.log_dir = log_dir        # type: ignore[attr-defined]
    return log


def chain(*callbacks: Callable[[int, dict], None] | None) -> Callable[[int, dict], None] | None:
    """One on_epoch_end callback calling each given one in order (Nones dropped); None if none is left."""
    cbs = [c for c in callbacks if c is not None]
    if not cbs:
        return None
    if len(cbs) == 1:
        return cbs[0]

    def both(epoch: int, row: dict) -> None:
        for c in cbs:
            c(epoch, row)
    return both
