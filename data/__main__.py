"""`python -m data synthetic ...` and `python -m data info --dataset NAME --root DIR`."""
from __future__ import annotations

import collections
import sys
import time

import click

from . import DATASETS, DataError, get_dataset
from .cli import CONTEXT_SETTINGS, opt_option, user_error, verbose_option


@click.group(context_settings=CONTEXT_SETTINGS)
@verbose_option
def cli():
    """Datasets: demo data generation and inspection."""


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output folder")
@click.option("--n-videos", default=48, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--size", default=128, show_default=True, type=int, help="frame side in pixels")
@verbose_option
def synthetic(out, n_videos, seed, size):
    """Render the synthetic diving demo dataset (AQA-7 layout) into OUT."""
    from .synthetic import write_synthetic

    t = time.time()
    try:
        write_synthetic(out, n_videos=n_videos, seed=seed, size=size)
    except DataError as exc:
        raise user_error(exc) from None
    click.echo(f"wrote {n_videos} videos to {out} in {time.time() - t:.1f}s")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--dataset", "name", required=True, type=click.Choice(sorted(DATASETS)))
@click.option("--root", required=True, help="dataset root (csv: the CSV file)")
@opt_option
@verbose_option
def info(name, root, opts):
    """Count samples per split and class."""
    try:
        ds = get_dataset(name, root, **opts)
        samples = ds.samples()
    except DataError as exc:
        raise user_error(exc) from None
    counts = collections.Counter((s.split, s.cls) for s in samples)
    click.echo(f"{name} at {root}: {len(samples)} samples, {ds.n_frames} frames each")
    for split in sorted({s for s, _ in counts}):
        n = sum(v for (sp, _), v in counts.items() if sp == split)
        click.echo(f"  {split}: {n}")
        for (sp, c), v in sorted(counts.items()):
            if sp == split:
                click.echo(f"    {c}: {v}")
    folds = collections.Counter((p, f) for s in samples for p, f in s.folds.items())
    for (p, f), v in sorted(folds.items()):
        click.echo(f"  fold {p}={f}: {v}")
    scale = getattr(ds, "score_scale", None)
    if scale:
        click.echo(f"  score scale in split files: {scale}")


if __name__ == "__main__":
    sys.exit(cli())
