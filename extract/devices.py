"""The one device resolver of the project, and the click options ``--device`` and ``--precision``.

    from extract.devices import DeviceError, resolve_device, device_option, precision_option

    resolve_device("auto")    # cuda when torch sees one, else cpu
    resolve_device("cuda:1")  # DeviceError (a ValueError) with one clear line if there is no such GPU

torch is imported inside the functions, so that importing this module (and `--help`) stays fast.
Commands that take ``--device`` get it checked while the command line is parsed (`device_option`): a
device this machine does not have is a one-line click error, never a traceback.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import click

from data.cli import AliasOption, bare_or_configured

if TYPE_CHECKING:  # pragma: no cover
    import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICE_HELP = "auto (CUDA when available, else CPU) | cpu | cuda | cuda:N."


class DeviceError(ValueError):
    """A device the user asked for that this machine or torch does not have (one-line message)."""


def resolve_device(name: "str | torch.device | None" = "auto") -> "torch.device":
    """``"auto"`` (or None) -> ``cuda`` when torch sees a CUDA device, else ``cpu``; ``"cpu"``; ``"cuda"`` /
    ``"cuda:k"``. A ``torch.device`` is returned as it is.

    Raises `DeviceError` when CUDA is asked for and torch sees none, when ``k`` is out of range, or when the
    name is not a device torch knows (or not one this project runs on: only cpu and cuda).
    """
    import torch

    if isinstance(name, torch.device):
        return name
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"--device {name}: not a device torch knows; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise DeviceError(f"--device {name}: {dev.type} devices are not supported here; use auto, cpu, cuda "
                          f"or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: this machine has no CUDA device (torch reports none); "
                          f"use --device cpu or auto")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise DeviceError(f"--device {name}: CUDA device index {dev.index} is out of range, this machine has "
                          f"{n} (cuda:0 to cuda:{n - 1})")
    return dev


def check_device(name: str | None) -> str | None:
    """`resolve_device` for a command line: the name back unchanged, or a one-line click error."""
    if name is None or str(name).strip().lower() == "auto":
        return name                         # always valid; no torch import for it
    try:
        resolve_device(name)
    except DeviceError as e:
        from data.cli import user_error
        raise user_error(e) from None
    return name


def _device_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return check_device(value)


def device_option(f: Callable | None = None, *, default: str | None = "auto", help: str | None = None) -> Callable:
    """``--device NAME`` (parameter ``device``: the name as given, checked by `resolve_device` at parse time)."""
    return bare_or_configured(f, lambda: click.option(
        "--device", "device", default=default, show_default=default is not None, metavar="NAME",
        callback=_device_callback, help=help or DEVICE_HELP))


def precision_option(f: Callable | None = None, *, default: str | None = "auto", help: str | None = None
                     ) -> Callable:
    """``--precision auto|bf16|fp16|fp32`` (parameter ``precision``); ``--amp`` is a hidden alias."""
    text = help or "CUDA autocast dtype (auto = bf16; fp32 = none); the CPU always runs float32."
    return bare_or_configured(f, lambda: click.option(
        "--precision", "--amp", "precision", cls=AliasOption, hidden_aliases=["--amp"],
        type=click.Choice(PRECISIONS), default=default, show_default=default is not None, help=text))


__all__ = ["PRECISIONS", "DeviceError", "resolve_device", "check_device", "device_option", "precision_option"]

