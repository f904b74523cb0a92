r"""Command line of stage two: `python -m train_head {train,sweep,presets,finetune}`.

Examples:

\b
    # CoRe w/ DD on MTL-AQA, three seeds
    python -m train_head train --cache artifacts/features/mtl_aqa.h5 --head core_dd --seeds 0,1,2
    # every AQA-7 class, each its own run folder
    python -m train_head train --cache artifacts/features/aqa7.h5 --class all --jobs 2
    # JIGSAWS: every task x every 4-fold split
    python -m train_head train --cache artifacts/features/jigsaws.h5 --class all --protocol 4fold
    # a grid, two processes
    python -m train_head sweep --cache artifacts/features/synthetic.h5 \
        --grid head=core,mlp depth=3,5 voters=5,10 seeds=0,1 --jobs 2 --out artifacts/runs
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys

import click

from data.cli import CONTEXT_SETTINGS, force_option, user_error, verbose_option
from extract.devices import device_option
from train_head.config import ConfigError, parse_set_options
from train_head.finetune_cli import finetune_command


def _preset_for(preset, dataset, head, cache_path):
    from train_head.presets import default_preset

    if preset:
        return preset
    if dataset is None:
        try:
            from cache import read_attrs
            dataset = str(read_attrs(cache_path).get("dataset") or "") or None
        except Exception as exc:  # the trainer will raise the cache's own clear message
            logging.getLogger(__name__).debug("could not read %s attrs: %s", cache_path, exc)
    return default_preset(dataset, head)


def _overrides(cache, dataset, head, cls, protocol, fold, epochs, batch_size, voters, depth, out, device, sets):
    ov = {"cache": cache, "dataset": dataset, "head": head, "cls": cls, "protocol": protocol, "fold": fold,
          "epochs": epochs, "batch_size": batch_size, "voters": voters, "depth": depth, "out": out,
          "device": device}
    ov.update(parse_set_options(sets))
    return ov


def _report(results) -> None:
    def f(x):
        return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

    click.echo(f"{'status':8s} {'sel_ep':>6s} {'rho_sel':>8s} {'rho_final':>9s}  run")
    for r in results:
        click.echo(f"{r['status']:8s} {str(r['selected_epoch'] or ''):>6s} {f(r['selected_rho']):>8s} "
                   f"{f(r['final_rho']):>9s}  {r['run_dir']}")
    for r in results:
        for w in r.get("warnings") or ():
            click.echo(f"WARNING {r['run_dir']}: {w} (final-epoch rho: {f(r['final_rho'])})", err=True)
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        click.echo(f"\nFAILED {r['run_dir']}:\n{r['error']}", err=True)
    for r in results:
        if r["status"] == "skipped" and r.get("error"):
            click.echo(f"SKIPPED {r['run_dir']}: {r['error']}", err=True)
    click.echo("rho_sel: test rho of the epoch chosen on validation; rho_final: last epoch.")
    if failed:
        sys.exit(1)


_COMMON = [
    click.option("--cache", required=True, type=click.Path(dir_okay=False),
                 help="HDF5 feature cache (python -m extract features ... --out FILE)."),
    click.option("--preset", default=None,
                 help="Preset (python -m train_head presets); default: from the dataset and head."),
    click.option("--dataset", default=None, help="Dataset the cache must hold (default: the cache's own)."),
    click.option("--head", default=None, help="core, core_dd, mlp, mlp_dd, contrastive_mlp."),
    click.option("--class", "cls", default=None, help="Class/task to train; 'all' = each class its own run."),
    click.option("--protocol", default=None, type=click.Choice(["4fold", "loso", "louo"]),
                 help="JIGSAWS cross-validation protocol (preset jigsaws: 4fold)."),
    click.option("--fold", default=None, help="Held-out fold id; 'all' or omitted = every fold of the protocol."),
    click.option("--epochs", type=click.IntRange(min=1), default=None, help="Default 200."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Pairs per step (default 32; paper: 2 + grad_accum 2)."),
    click.option("--voters", type=click.IntRange(min=1), default=None, help="Exemplars per test video (default 10)."),
    click.option("--depth", type=click.IntRange(min=2), default=None, help="Tree depth (default 5 = 16 leaves)."),
    click.option("--out", default=None, help="Results root (default artifacts/runs)."),
    device_option(default=None, help="auto (default), cpu, cuda, cuda:1."),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Any RunConfig field, e.g. --set lr=1e-4 --set val_fraction=0.1 (repeatable)."),
    click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Parallel runs (joblib loky processes)."),
    click.option("--scheduler", default=None, metavar="ADDRESS",
                 help="Run on a dask.distributed scheduler (tcp://host:8786); needs requirements-dask.txt."),
    force_option(help="Retrain runs that are already complete (and replace runs of another config)."),
    verbose_option,
]


def _common(f):
    for opt in reversed(_COMMON):
        f = opt(f)
    return f


@click.group(context_settings=CONTEXT_SETTINGS, help=__doc__.replace("\\b", "\b"))
@verbose_option
def cli() -> None:
    pass


@contextlib.contextmanager
def _planning():
    """Errors while planning runs: a config error is a usage error (exit 2), others one line (exit 1)."""
    try:
        yield
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except (ValueError, OSError) as exc:
        raise user_error(exc) from None


def _run_and_report(cfgs, *, jobs, scheduler, force) -> None:
    """Run planned configs (joblib or dask), turning user errors into one clear message, then report."""
    from train_head.sweep import run_many   # lazy: keeps `--help` fast

    from data.locks import LockedError

    try:
        results = run_many(cfgs, jobs=jobs, scheduler=scheduler, force=force)
    except (ConfigError, ValueError, FileNotFoundError, OSError, LockedError) as exc:
        raise user_error(exc) from None
    _report(results)


@cli.command(context_settings=CONTEXT_SETTINGS)
@_common
@click.option("--seeds", default=None, help="Comma-separated seeds, e.g. 0,1,2 (default: seed from config, 0).")
def train(cache, preset, dataset, head, cls, protocol, fold, epochs, batch_size, voters, depth, out, device, sets,
          jobs, scheduler, force, seeds):
    """Train a head on cached features: one run folder per class/fold and seed,
    <out>/<dataset>/<cls-or-fold>/<head>/seed<k>/.

    \b
    python -m train_head train --cache artifacts/features/mtl_aqa.h5 --head core_dd --seeds 0,1,2
    python -m train_head train --cache artifacts/features/aqa7.h5 --class all --set epochs=100
    """
    from train_head.sweep import plan_runs

    with _planning():
        ov = _overrides(cache, dataset, head, cls, protocol, fold, epochs, batch_size, voters, depth, out,
                        device, sets)
        grid = None
        if seeds is not None:
            grid = {"seed": [s.strip() for s in seeds.split(",") if s.strip()]}
            if not grid["seed"]:
                raise ConfigError(f"--seeds {seeds!r} names no seed; give comma-separated seeds, e.g. 0,1,2")
        cfgs = plan_runs(_preset_for(preset, dataset, ov.get("head"), cache), ov, grid)
    _run_and_report(cfgs, jobs=jobs, scheduler=scheduler, force=force)


@cli.command(context_settings=CONTEXT_SETTINGS)
@_common
@click.option("--grid", "grid_opt", multiple=True, metavar="KEY=V1,V2",
              help="Grid axis (repeatable; further KEY=V1,V2 words after it are axes too). "
                   "Keys: any RunConfig field, plus 'seeds'.")
@click.argument("grid_args", nargs=-1, metavar="[KEY=V1,V2]...")
def sweep(cache, preset, dataset, head, cls, protocol, fold, epochs, batch_size, voters, depth, out, device, sets,
          jobs, scheduler, force, grid_opt, grid_args):
    """Run a hyper-parameter grid (cartesian product), one run folder per point.

    The head level of the folder carries the grid values that differ from the base config:
    <out>/<dataset>/<cls-or-fold>/<head>+depth=3+voters=5/seed<k>/. Complete runs are skipped.

    \b
    python -m train_head sweep --cache artifacts/features/synthetic.h5 \\
        --grid head=core,mlp depth=3,5 voters=5,10 seeds=0,1 --jobs 2 --out artifacts/sweep
    python -m train_head sweep --cache F.h5 --grid lr=1e-3,1e-4 --scheduler tcp://10.0.0.5:8786
    """
    from train_head.sweep import parse_grid, plan_runs

    with _planning():
        grid = parse_grid(list(grid_opt) + list(grid_args))
        if not grid:
            raise ConfigError("sweep needs at least one --grid KEY=V1,V2 axis")
        ov = _overrides(cache, dataset, head, cls, protocol, fold, epochs, batch_size, voters, depth, out,
                        device, sets)
        heads = grid.get("head", [ov.get("head")])
        presets = {_preset_for(preset, dataset, h, cache) for h in heads}
        if len(presets) > 1 and preset is None:
            # e.g. MTL-AQA with core and core_dd: the dd preset sets theta 30. Resolve per head.
            cfgs = []
            for h in heads:
                sub = {**grid, "head": [h]}
                cfgs += plan_runs(_preset_for(None, dataset, h, cache), ov, sub)
        else:
            cfgs = plan_runs(presets.pop(), ov, grid)
    _run_and_report(cfgs, jobs=jobs, scheduler=scheduler, force=force)


@cli.command(context_settings=CONTEXT_SETTINGS)
def presets() -> None:
    """List the presets and the values they set."""
    from train_head.presets import PRESETS

    for name, values in PRESETS.items():
        click.echo(f"{name:32s} {values}")


cli.add_command(finetune_command, "finetune")


if __name__ == "__main__":
    cli()
