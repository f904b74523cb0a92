"""Feature cache CLI.

    python -m cache info artifacts/features/aqa7-i3d-1a2b3c4d-default.h5
    python -m cache merge artifacts/features/aqa7-i3d-1a2b3c4d-default.h5   # merge <FILE>.parts/
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import click

from data.cli import CONTEXT_SETTINGS, user_error, verbose_option

from .reader import load_cache
from .store import CacheError, merge_parts, parts_dir, scan_parts


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


@click.group(context_settings=CONTEXT_SETTINGS)
@verbose_option
def main() -> None:
    """Inspect and merge HDF5 feature caches."""


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--max-failed", default=20, show_default=True, help="Failed videos listed at most.")
@verbose_option
def info(file: Path, max_failed: int) -> None:
    """Print what a cache FILE holds: videos, views, attributes, size, per-split counts, failures."""
    try:
        c = load_cache(file)
    except CacheError as e:
        raise user_error(e) from None
    n, v, k, d = c.features.shape
    click.echo(f"file:      {c.path}  ({_human(c.path.stat().st_size)})")
    click.echo(f"features:  {n} videos x {v} views x {k} clips x {d}  ({c.features.dtype})")
    splits = Counter(c.split.tolist())
    click.echo("splits:    " + ", ".join(f"{s}={splits[s]}" for s in sorted(splits)))
    per_cls = Counter(zip(c.cls.tolist(), c.split.tolist()))
    for cl in sorted(set(c.cls.tolist())):
        click.echo(f"  {cl}: " + ", ".join(f"{s}={per_cls[(cl, s)]}" for s in sorted(splits)))
    click.echo("views:")
    for i, view in enumerate(c.views):
        click.echo(f"  [{i}] " + json.dumps(view, sort_keys=True))
    click.echo("attrs:")
    for key in sorted(c.attrs):
        if key == "views":
            continue
        val = c.attrs[key]
        click.echo(f"  {key}: {json.dumps(val, sort_keys=True) if not isinstance(val, str) else val}")
    click.echo(f"failed:    {len(c.failed)}")
    for vid, err in list(c.failed.items())[:max_failed]:
        click.echo(f"  {vid}: {err}")
    if len(c.failed) > max_failed:
        click.echo(f"  ... and {len(c.failed) - max_failed} more")


@main.command(context_settings=CONTEXT_SETTINGS)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--keep-parts", is_flag=True, help="Keep <OUT>.parts/ after merging.")
@verbose_option
def merge(out: Path, keep_parts: bool) -> None:
    """Merge the part files in OUT.parts/ (from one run or several torchrun ranks) into OUT.

    The extraction does this itself at the end; use it after ranks finished on separate machines
    and their part files were copied into one OUT.parts/ folder.
    """
    try:
        st = scan_parts(out, cleanup=True)
        if not st.n_parts:
            raise CacheError(f"No readable part files in {parts_dir(out)}.")
        merge_parts(out, remove_parts=not keep_parts)
        c = load_cache(out)
    except CacheError as e:
        raise user_error(e) from None
    click.echo(f"{out}: {len(c)} videos, {len(c.failed)} failed (from {st.n_parts} part files)")


if __name__ == "__main__":
    sys.exit(main())
