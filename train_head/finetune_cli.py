"""`python -m train_head finetune`: the command line of end-to-end fine-tuning.

Imports only click and `data.cli` at module level (torch and the fine-tuning code load when the command
runs), so `python -m train_head --help` stays fast. The options use the project's shared words
(`data.cli`, `extract.devices`); any other FinetuneConfig field is `--set KEY=VALUE`.
"""
from __future__ import annotations

import json
from typing import Any

import click

from data.cli import CONTEXT_SETTINGS, force_option, frame_size_option, resize_mode_option, user_error, verbose_option
from extract.devices import device_option, precision_option


def finetune_cli_main(*, dataset: str, root: str, force: bool = False, progress: bool = True,
                      sets: tuple[str, ...] = (), **options: Any) -> list:
    """What the command does: resolve the config (preset <- options <- --set) and run it. `cls="all"` on a
    dataset with several classes/tasks runs each one on its own, one after the other; returns the folders."""
    from train_head.config import FinetuneConfig, parse_set_options
    from train_head.finetune import finetune, resolve_finetune_config

    options = {k: v for k, v in options.items() if v is not None}
    if "frame_size" in options:
        options["resize_hw"] = options.pop("frame_size")
    options.update(parse_set_options(sets, FinetuneConfig))
    units: list[str | None] = [options.pop("cls", None)]
    if units[0] == "all":
        from data import get_dataset
        classes = sorted({s.cls for s in get_dataset(dataset, root).samples()})
        units = classes if len(classes) > 1 else [None]
    cfgs = [resolve_finetune_config(dataset, root, **options, cls=u) for u in units]   # all checked first
    return [finetune(c, force=force, progress=progress) for c in cfgs]


def _opt(name: str, type_=None, help_: str = "", **kw) -> click.Option:
    return click.Option([name], type=type_, default=None, help=help_, **kw)


@click.command("finetune", context_settings=CONTEXT_SETTINGS)
@click.option("--dataset", required=True, help="Dataset name (aqa7, mtl_aqa, jigsaws, csv, synthetic).")
@click.option("--root", required=True, type=click.Path(exists=True),
              help="The dataset's folder (the CSV file for --dataset csv).")
@click.option("--head", default=None, help="Head (default: the dataset preset's, core / core_dd).")
@click.option("--class", "--task", "cls", default=None, help="AQA-7 class / JIGSAWS task; 'all' = each its own run.")
@click.option("--protocol", default=None, type=click.Choice(["4fold", "loso", "louo"]),
              help="JIGSAWS cross-validation protocol.")
@click.option("--fold", default=None, help="Held-out fold of --protocol.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[200]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Pairs per micro-step over all processes [2].")
@click.option("--grad-accum", type=click.IntRange(min=1), default=None, help="Micro-steps per Adam update [2].")
@click.option("--lr-backbone", type=float, default=None, help="[1e-4]")
@click.option("--lr-head", type=float, default=None, help="[1e-3]")
@click.option("--depth", type=click.IntRange(min=2), default=None, help="Tree depth [5 = 16 leaves].")
@click.option("--hidden", type=click.IntRange(min=1), default=None, help="Hidden width [256].")
@click.option("--theta", type=float, default=None, help="Score range (default: the dataset preset's).")
@frame_size_option(default=None, help="Resize HEIGHT,WIDTH (or HEIGHTxWIDTH) [455,256].")
@click.option("--crop", type=click.IntRange(min=1), default=None, help="Square crop [224].")
@resize_mode_option(default=None)
@click.option("--norm", type=click.Choice(["imagenet", "minus1to1"]), default=None)
@click.option("--n-clips", type=click.IntRange(min=1), default=None, help="Clips per video [10].")
@click.option("--clip-len", type=click.IntRange(min=1), default=None, help="Frames per clip [16].")
@click.option("--weights", default=None, help="kinetics400 | random | PATH [kinetics400].")
@click.option("--train-from", default=None, help="First I3D endpoint that trains [all].")
@click.option("--train-bn-bias/--freeze-bn-bias", default=None,
              help="The batch-norm shift trains [train]; statistics are always frozen.")
@click.option("--max-shift", type=click.IntRange(min=0), default=None, help="MTL-AQA end-frame shift range [3].")
@device_option(default=None)
@precision_option(default=None, help="auto (bf16 autocast on CUDA, float32 on CPU) | bf16 | fp32.")
@click.option("--channels-last", type=click.Choice(["auto", "on", "off"]), default=None)
@click.option("--checkpoint-activations/--no-checkpoint-activations", default=None,
              help="Recompute Inception blocks in backward (less memory).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None,
              help="Write checkpoint.pt every k epochs [10; one is ~240 MB].")
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decoding workers [4 on CUDA, 0 on CPU].")
@click.option("--frame-store", default=None, metavar="auto|off|DIR",
              help="Decode each video once into a memory-mapped frame store, views cut on the device "
                   "[auto: on CUDA, into OUT/_frames/; off on the CPU].")
@click.option("--voters", type=click.IntRange(min=1), default=None, help="Exemplars per test video [10].")
@click.option("--val-every", type=click.IntRange(min=1), default=None, help="Evaluate every k epochs [1].")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="[0]")
@click.option("--out", default=None, help="Results root [artifacts/runs].")
@click.option("--tag", default=None, help="Head-level tag of the run folder [finetune].")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any fine-tuning config field, e.g. --set val_fraction=0.1 (repeatable).")
@force_option
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@verbose_option
def finetune_command(dataset, root, force, no_progress, sets, **options):
    """End-to-end fine-tuning of I3D + head from frames (docs/FINETUNE.md)."""
    from data import DataError
    from data.locks import LockedError
    from extract import dist as xdist
    from extract.devices import DeviceError
    from extract.dist import DistError
    from extract.weights import WeightsError
    from train_head.config import ConfigError
    from train_head.protocol import TrainError
    from train_head.runfolder import RunFolderError

    info = xdist.dist_info()
    try:
        run_dirs = finetune_cli_main(dataset=dataset, root=root, force=force, progress=not no_progress,
                                     sets=sets, **options)
    except (ConfigError, TrainError, DataError, WeightsError, DeviceError, RunFolderError, LockedError,
            DistError) as exc:
        raise user_error(exc) from None
    if info.is_main:
        for run_dir in run_dirs:
            summary = json.loads((run_dir / "summary.json").read_text())
            click.echo(f"{run_dir}: selected epoch {summary['selected_epoch']} test rho "
                       f"{summary['selected']['rho']} (final {summary['final']['rho']}); "
                       f"{info.world_size} process(es)")
