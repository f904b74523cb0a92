"""The words every command line of this project shares (`python -m data|extract|cache|train_head|evaluate`).

Import-light on purpose (click and the standard library only): `--help` must stay fast.

    from data.cli import CONTEXT_SETTINGS, verbose_option, force_option, opt_option

    @click.group(context_settings=CONTEXT_SETTINGS)
    @verbose_option
    def main(): ...

    @main.command(context_settings=CONTEXT_SETTINGS)
    @verbose_option
    @force_option
    @opt_option
    def run(force, opts): ...          # opts: dict, already parsed

The same things have the same names everywhere:

- ``-h/--help`` on every group and command (`CONTEXT_SETTINGS`).
- ``-v/--verbose``, counted, on groups and commands (they add up: ``-v cmd -v`` = ``-vv``):
  none = WARNING, ``-v`` = INFO, ``-vv`` = DEBUG (`setup_logging`).
- ``--force``: redo, replacing existing results even if they were made with other settings
  (old name ``--overwrite`` still accepted, not shown).
- ``--opt KEY=VALUE`` (repeatable): dataset reader options (old ``-o/--option`` still accepted).
- ``--frame-size HEIGHT,WIDTH`` (or ``HEIGHTxWIDTH`` or one number) and
  ``--resize-mode nearest|bilinear_short_side`` (old ``--interp`` still accepted).
- ``--device`` and ``--precision``: `extract.devices` (they need torch, lazily).

Errors, one rule: an error the user caused (a bad option, a missing file, a wrong dataset layout, no CUDA)
is printed as ONE line (`click.ClickException`, exit code 1; click's own usage errors exit 2), without a
traceback; with ``-v`` the traceback is printed too (`user_error` / `user_errors`). Errors of the code
itself are not caught and keep their traceback.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import traceback
from typing import Any, Callable, Iterable, Iterator, Sequence

import click

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
RESIZE_MODES = ("nearest", "bilinear_short_side")
FORCE_HELP = "Redo: replace existing results, even ones made with other settings."

_VERBOSITY_KEY = "aqa_verbosity"
_verbosity = 0


# ------------------------------------------------------------------------------------ hidden aliases
class AliasOption(click.Option):
    """A click option some of whose names are accepted but not shown (old names kept working).

    ``AliasOption(["--force", "--overwrite"], hidden_aliases=["--overwrite"], ...)``: both parse into the
    same value; help and error messages show only ``--force``.
    """

    def __init__(self, param_decls: Sequence[str], *, hidden_aliases: Iterable[str] = (), **kwargs: Any):
        super().__init__(list(param_decls), **kwargs)
        self.hidden_aliases = tuple(hidden_aliases)
        unknown = [a for a in self.hidden_aliases if a not in self.opts]
        if unknown:
            raise TypeError(f"hidden aliases {unknown} are not names of this option {self.opts}")

    def _shown(self, fn: Callable, *args: Any) -> Any:
        saved = self.opts
        self.opts = [o for o in saved if o not in self.hidden_aliases]
        try:
            return fn(*args)
        finally:
            self.opts = saved

    def get_help_record(self, ctx: click.Context):
        return self._shown(super().get_help_record, ctx)

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return self._shown(super().get_error_hint, ctx)


def _decorator(decls: Sequence[str], hidden: Sequence[str], **kwargs: Any) -> Callable:
    return click.option(*decls, cls=AliasOption, hidden_aliases=hidden, **kwargs)


def bare_or_configured(f: Callable | None, make: Callable[[], Callable]) -> Callable:
    """Lets an option be used bare (``@force_option``) or configured (``@force_option(help=...)``)."""
    deco = make()
    return deco(f) if f is not None else deco


# ----------------------------------------------------------------------------------------- logging
class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* sys.stderr (not the one at creation: test runners swap it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.setStream; the current stderr is always used
        pass


_handler: logging.Handler | None = None


def log_level(verbosity: int) -> int:
    """0 -> WARNING, 1 (-v) -> INFO, 2 or more (-vv) -> DEBUG."""
    return logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG


def rank_prefix() -> str:
    """``[rank N] `` under torchrun with more than one process (from its environment), else ``""``."""
    try:
        world = int(os.environ.get("WORLD_SIZE") or 1)
        rank = int(os.environ.get("RANK") or 0)
    except ValueError:
        return ""
    return f"[rank {rank}] " if world > 1 else ""


def setup_logging(verbosity: int = 0) -> None:
    """Root logging for a command line: level from `log_level`, one format (`LOG_FORMAT`, with the torchrun
    rank in front under torchrun), to stderr. Idempotent: a second call replaces the first one's handler."""
    global _handler, _verbosity
    _verbosity = int(verbosity)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter(rank_prefix() + LOG_FORMAT))
    root.addHandler(_handler)
    root.setLevel(log_level(_verbosity))


def verbosity() -> int:
    """The verbosity of the last `setup_logging` (0 = none given)."""
    return _verbosity


def _verbose_callback(ctx: click.Context, param: click.Parameter, value: int) -> int:
    root = ctx.find_root()
    total = root.meta.get(_VERBOSITY_KEY, 0) + (value or 0)
    root.meta[_VERBOSITY_KEY] = total
    setup_logging(total)
    return total


def verbose_option(f: Callable | None = None) -> Callable:
    """``-v/--verbose`` (counted; put it on the group and on every command: the counts add up).
    Sets up logging itself (`setup_logging`); the command does not receive a value."""
    return bare_or_configured(f, lambda: click.option(
        "-v", "--verbose", "verbosity", count=True, expose_value=False, is_eager=True,
        callback=_verbose_callback,
        help="More log output: -v INFO, -vv DEBUG (default: warnings only); -v also shows tracebacks."))


# ------------------------------------------------------------------------------------------ errors
def user_error(exc: BaseException, message: str | None = None) -> click.ClickException:
    """The one-line click error for an error the user caused; with -v its traceback is printed first.

        except (DataError, CacheError) as e:
            raise user_error(e) from None
    """
    if _verbosity >= 1 and exc.__traceback__ is not None:
        click.echo("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip(), err=True)
    return click.ClickException(message if message is not None else (str(exc) or type(exc).__name__))


@contextlib.contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """``with user_errors(DataError, ValueError): ...`` turns those into one-line click errors."""
    try:
        yield
    except click.ClickException:
        raise
    except types as e:
        raise user_error(e) from None


# ------------------------------------------------------------------------------------------- force
def force_option(f: Callable | None = None, *, help: str = FORCE_HELP) -> Callable:
    """``--force`` (flag, parameter ``force``); ``--overwrite`` is a hidden alias."""
    return bare_or_configured(f, lambda: _decorator(["--force", "--overwrite", "force"], ["--overwrite"],
                                               is_flag=True, default=False, help=help))


# ------------------------------------------------------------------------------------- dataset opts
def _json_scalar(text: str) -> Any:
    """Numbers and booleans as JSON reads them (``3``, ``0.5``, ``true``); anything else stays a string."""
    try:
        v = json.loads(text)
    except ValueError:
        return text
    if isinstance(v, bool) or isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)):
        return v
    return text


def parse_opts(items: Iterable[str] | None) -> dict[str, Any]:
    """``("class=diving", "n_frames=96", "normalise=true")`` -> ``{"cls": "diving", "n_frames": 96,
    "normalise": True}``. ``class`` is spelled ``cls`` in Python; numbers and booleans are JSON-decoded.
    A later KEY wins. An item without ``=`` or with an empty KEY raises click.BadParameter (naming --opt)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. --opt class=diving)", param_hint="'--opt'")
        out["cls" if key == "class" else key] = _json_scalar(value.strip())
    return out


def _opts_callback(ctx: click.Context, param: click.Parameter, value) -> dict[str, Any]:
    return parse_opts(value)


def opt_option(f: Callable | None = None, *, help: str | None = None) -> Callable:
    """``--opt KEY=VALUE`` (repeatable; parameter ``opts``, already a dict from `parse_opts`);
    ``-o`` and ``--option`` are hidden aliases."""
    text = help or ("Dataset reader option, repeatable: class=diving (aqa7), task=Suturing (jigsaws), "
                    "n_frames=96 (csv), normalise=true (synthetic); see `python -m data info`.")
    return bare_or_configured(f, lambda: _decorator(["--opt", "-o", "--option", "opts"], ["-o", "--option"],
                                               multiple=True, metavar="KEY=VALUE", callback=_opts_callback,
                                               help=text))


# ------------------------------------------------------------------------------------------- frames
def parse_frame_size(text: Any) -> tuple[int, int]:
    """``"455,256"`` / ``"455x256"`` -> ``(455, 256)`` (HEIGHT, WIDTH); ``"224"`` -> ``(224, 224)``.
    A (h, w) pair is passed through (checked). Anything else, or a size <= 0, raises click.BadParameter."""
    if isinstance(text, (tuple, list)):
        parts = [str(p) for p in text]
    else:
        parts = str(text).strip().lower().replace("x", ",").split(",")
    try:
        nums = [int(p.strip()) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) <= 0:
        raise click.BadParameter(f"{text!r}: expected HEIGHT,WIDTH in pixels (e.g. 455,256), HEIGHTxWIDTH, or one "
                                 f"number for a square; positive whole numbers", param_hint="'--frame-size'")
    return nums[0], nums[1]


class FrameSize(click.ParamType):
    """click type of ``--frame-size``: a (height, width) tuple (`parse_frame_size`)."""
    name = "HEIGHT,WIDTH"

    def convert(self, value, param, ctx):
        try:
            return parse_frame_size(value)
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)


FRAME_SIZE = FrameSize()


def frame_size_option(f: Callable | None = None, *, default: str | None = "455,256", help: str | None = None
                      ) -> Callable:
    """``--frame-size HEIGHT,WIDTH`` (parameter ``frame_size``: a (h, w) tuple, or None if default=None)."""
    text = help or ("Resize frames to HEIGHT,WIDTH (also HEIGHTxWIDTH, or one number for a square); with "
                    "--resize-mode bilinear_short_side the short side goes to min(HEIGHT,WIDTH).")
    return bare_or_configured(f, lambda: click.option(
        "--frame-size", "frame_size", type=FRAME_SIZE, default=default, show_default=default is not None,
        metavar="HEIGHT,WIDTH", help=text))


def resize_mode_option(f: Callable | None = None, *, default: str | None = "nearest", help: str | None = None
                       ) -> Callable:
    """``--resize-mode nearest|bilinear_short_side`` (parameter ``resize_mode``); ``--interp`` is a hidden alias."""
    text = help or "Frame resize rule: nearest to --frame-size, or bilinear on the short side (docs/METHOD.md §2)."
    return bare_or_configured(f, lambda: _decorator(
        ["--resize-mode", "--interp", "resize_mode"], ["--interp"], type=click.Choice(RESIZE_MODES),
        default=default, show_default=default is not None, help=text))


# --------------------------------------------------------------------------------------------- misc
def split_list(text: str | Iterable[str] | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; None -> ``[]``; a list of such strings is flattened."""
    if text is None:
        return []
    items = [text] if isinstance(text, str) else list(text)
    return [p.strip() for item in items for p in str(item).split(",") if p.strip()]


__all__ = ["CONTEXT_SETTINGS", "LOG_FORMAT", "RESIZE_MODES", "FORCE_HELP", "AliasOption", "FrameSize",
           "FRAME_SIZE", "bare_or_configured", "log_level", "rank_prefix", "setup_logging", "verbosity",
           "verbose_option", "user_error", "user_errors", "force_option", "parse_opts", "opt_option",
           "parse_frame_size", "frame_size_option", "resize_mode_option", "split_list"]
