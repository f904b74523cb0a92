"""Stage one CLI.

    python -m extract weights                       # fetch + convert + verify the Kinetics-400 I3D weights
    python -m extract features --dataset synthetic --root artifacts/datasets/synthetic
    python -m extract features --dataset aqa7 --root /data/AQA-7 --opt class=diving --views test-only
    torchrun --nproc_per_node 4 -m extract features --dataset mtl_aqa --root /data/MTL-AQA   # 4 GPUs
    python -m extract cache-path --dataset csv --root my.csv   # the default --out (also make's FEATURES)

Shared option words (-h, -v/-vv, --force, --opt, --frame-size, --resize-mode): data/cli.py;
--device and --precision: extract/devices.py.
"""
from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import click

from data.cli import (CONTEXT_SETTINGS, force_option, frame_size_option, opt_option, resize_mode_option,
                      split_list, user_error, verbose_option)

from .devices import device_option, precision_option

VIEWSETS = ("default", "test-only")


def _name_part(text: str) -> str:
    """A piece of a file name that is safe unquoted in a shell or a Makefile."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "x"


def default_cache_path(dataset: str, weights: str = "kinetics400", root: str | Path | None = None,
                       artifacts: str | Path = "artifacts") -> Path:
    """THE default feature cache of a dataset, used by `python -m extract features` without --out, by
    `python -m extract cache-path`, and through it by the Makefile (its FEATURES default):

        <artifacts>/features/<dataset>-<weights name>.h5                 e.g. synthetic-kinetics400.h5
        <artifacts>/features/csv-<csv stem>-<hash8>-<weights name>.h5    DATASET=csv

    ``weights name`` is the weights source without folder and suffix (kinetics400, random, model_rgb).
    For ``csv`` the root is the CSV file: its stem and the first 8 hex digits of the sha256 of its absolute
    path keep two CSV datasets apart. Frame settings, views and --opt options are not in the name: the cache
    records them, and a rerun with other settings into the same file is refused (unless --force).
    """
    from data.fileio import dataset_label

    if dataset == "csv" and (root is None or not str(root).strip()):
        raise ValueError("dataset csv: the default cache name needs --root (the CSV file)")
    name = _name_part(dataset_label(dataset, root))
    return Path(artifacts) / "features" / f"{name}-{_name_part(Path(str(weights)).stem)}.h5"


def _select_views(spec: str, dataset_name: str):
    from data.transforms import default_views

    views = default_views(dataset_name)
    if spec == "default":
        return views, "default"
    if spec == "test-only":
        return [v for v in views if v.role == "test"][:1], "test-only"
    names = split_list(spec)
    by_name = {v.name: v for v in views}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise click.BadParameter(f"unknown view(s) {unknown} for {dataset_name}; choose from "
                                 f"{list(by_name)} or 'default' / 'test-only'", param_hint="--views")
    tag = "views-" + hashlib.sha256(",".join(names).encode()).hexdigest()[:6]
    return [by_name[n] for n in names], tag


def default_out(dataset: str, opts: dict, sha: str, viewset: str, cfg) -> Path:
    """artifacts/features/<dataset>[-<opts>]-i3d-<sha8>-<viewset>[-<frame config>].h5: a name with every
    setting in it, for scripts that keep one file per setting. Not the CLI's default (`default_cache_path`)."""
    from data.transforms import FrameConfig

    name = dataset + "".join(f"-{v}" for _, v in sorted(opts.items()))
    tail = ""
    if cfg != FrameConfig():
        d = FrameConfig()
        if tuple(cfg.resize_hw) != d.resize_hw:
            tail += f"-r{cfg.resize_hw[0]}x{cfg.resize_hw[1]}"
        if cfg.crop != d.crop:
            tail += f"-c{cfg.crop}"
        if cfg.norm != d.norm:
            tail += f"-{cfg.norm}"
        if cfg.interp != d.interp:
            tail += f"-{cfg.interp}"
    return Path("artifacts/features") / f"{name}-i3d-{sha[:8]}-{viewset}{tail}.h5"


@click.group(context_settings=CONTEXT_SETTINGS)
@verbose_option
def main() -> None:
    """Stage one: I3D weights and feature extraction into an HDF5 cache."""


@main.command(context_settings=CONTEXT_SETTINGS)
@force_option(help="Download and convert again even if the converted file exists.")
@verbose_option
def weights(force: bool) -> None:
    """Fetch, convert and verify the Kinetics-400 I3D weights; print their path and sha256."""
    from .weights import fetch_kinetics400, weights_sha256

    try:
        path = fetch_kinetics400(force=force)
        sha = weights_sha256("kinetics400")
    except ValueError as e:
        raise user_error(e) from None
    click.echo(f"{path}\nsha256 {sha}")


_DATASET_HELP = "Dataset name: aqa7, mtl_aqa, jigsaws, csv, synthetic."
_ROOT_HELP = "Dataset root folder (csv: the CSV file)."
_WEIGHTS_HELP = "kinetics400 | random (seeded, for tests) | PATH to a state dict."


@main.command("cache-path", context_settings=CONTEXT_SETTINGS)
@click.option("--dataset", required=True, help=_DATASET_HELP)
@click.option("--root", default=None, help=_ROOT_HELP + " Needed for csv only.")
@click.option("--weights", default="kinetics400", show_default=True, help=_WEIGHTS_HELP)
@click.option("--artifacts", default="artifacts", show_default=True, help="Artifacts folder (the Makefile's ART).")
@verbose_option
def cache_path(dataset, root, weights, artifacts) -> None:
    """Print the default cache file of `features` (no --out) for these settings; the Makefile's FEATURES."""
    try:
        click.echo(str(default_cache_path(dataset, weights, root, artifacts)))
    except ValueError as e:
        raise user_error(e) from None


@main.command(context_settings=CONTEXT_SETTINGS)
@click.option("--dataset", required=True, help=_DATASET_HELP)
@click.option("--root", required=True, type=click.Path(path_type=Path), help=_ROOT_HELP)
@opt_option
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output .h5 [default: artifacts/features/<dataset>-<weights>.h5, for csv "
                   "<dataset>-<csv stem>-<hash8>-<weights>.h5; `python -m extract cache-path` prints it].")
@click.option("--weights", default="kinetics400", show_default=True, help=_WEIGHTS_HELP)
@device_option(help="auto | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK).")
@precision_option
@click.option("--views", "views_spec", default="default", show_default=True,
              help="default (test view + training views) | test-only | comma list of view names.")
@frame_size_option
@click.option("--crop", default=224, show_default=True, type=click.IntRange(min=1), help="Crop size in pixels.")
@click.option("--norm", type=click.Choice(["imagenet", "minus1to1"]), default="imagenet", show_default=True,
              help="Input normalisation (imagenet = the CoRe paper's; minus1to1 = what the weights were trained on).")
@resize_mode_option
@click.option("--n-clips", default=10, show_default=True, type=click.IntRange(min=1),
              help="Clips of 16 frames per sample.")
@click.option("--batch-clips", default=None, type=click.IntRange(min=1),
              help="Clips per forward pass [default: 128 CUDA, 16 CPU].")
@click.option("--workers", default=None, type=click.IntRange(min=0),
              help="Decode workers [default: 0 on CPU; on CUDA the cores of the CPU affinity / ranks per node - 1].")
@click.option("--decode", "decode_mode", default="auto", show_default=True,
              type=click.Choice(["auto", "processes", "threads"]),
              help="Decode workers as processes (frames through /dev/shm) or threads; auto: processes when "
                   "/dev/shm has room.")
@click.option("--deterministic", is_flag=True,
              help="CUDA: reproducible kernels (slower; sets CUBLAS_WORKSPACE_CONFIG). The CPU always is.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network (pays off on long GPU runs).")
@click.option("--part-every", default=8, show_default=True, type=click.IntRange(min=1),
              help="Finished videos per part file (what a crash can lose at most, per rank).")
@click.option("--max-videos", default=None, type=click.IntRange(min=1),
              help="Only the first N samples (quick checks).")
@click.option("--strict", is_flag=True, help="Stop at the first video that fails instead of recording it.")
@force_option(help="Redo: replace an existing cache (and its part files), even one made with other settings.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@verbose_option
def features(dataset, root, opts, out, weights, device, precision, views_spec, frame_size, crop, norm, resize_mode,
             n_clips, batch_clips, workers, decode_mode, deterministic, compile_, part_every, max_videos, strict,
             force, no_progress) -> None:
    """Extract I3D clip features of every sample into one HDF5 cache (resumable; see `python -m cache info`)."""
    from cache import CacheError
    from data import DataError, get_dataset
    from data.locks import LockedError
    from data.transforms import FrameConfig

    from .dist import DistError, dist_info
    from .pipeline import ExtractError, run_extraction

    try:
        info = dist_info()
        ds = get_dataset(dataset, root, **opts)
        views, _ = _select_views(views_spec, ds.name)
        try:
            cfg = FrameConfig(resize_hw=frame_size, crop=crop, norm=norm, interp=resize_mode)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="'--crop' / '--frame-size'") from None
        if out is None:
            out = default_cache_path(dataset, weights, root)
        res = run_extraction(ds, out, views=views, frame_cfg=cfg, n_clips=n_clips, weights=weights, device=device,
                             batch_clips=batch_clips, workers=workers, strict=strict, max_videos=max_videos,
                             overwrite=force, precision=precision, part_every=part_every,
                             dataset_options=opts, progress=not no_progress, deterministic=deterministic,
                             compile=compile_, decode_mode=decode_mode)
    except (CacheError, DataError, ValueError, ExtractError, LockedError, DistError) as e:
        raise user_error(e) from None           # DeviceError and WeightsError are ValueErrors
    if not info.is_main:
        return
    if res.already_complete:
        if res.labels_changed:
            from cache import describe_label_changes
            click.echo(f"{out}: {describe_label_changes(res.labels_changed)}; labels refreshed (features kept)")
            return
        click.echo(f"{out}: already complete with these settings, nothing to do "
                   f"(--force to extract again)")
        return
    from cache import load_cache

    c = load_cache(out)
    click.echo(f"{out}")
    click.echo(f"  {len(c)} videos x {len(views)} views x {n_clips} clips, {len(c.failed)} failed, "
               f"{res.n_skipped} resumed from an earlier run")
    rate = (f"{res.videos_per_s:.2f} videos/s, {res.clips_per_s:.1f} clips/s" if res.seconds > 0 else "-")
    click.echo(f"  this process: {res.n_done_now} videos in {res.seconds:.1f}s ({rate}) on {res.device} "
               f"({res.precision}), {info.world_size} process(es)")
    for vid, err in list(c.failed.items())[:10]:
        click.echo(f"  failed {vid}: {err}")
    if len(c.failed) > 10:
        click.echo(f"  ... {len(c.failed) - 10} more failures: python -m cache info {out}")


if __name__ == "__main__":
    sys.exit(main())
