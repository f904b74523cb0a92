"""Stage one CLI.

    python -m extract weights                       # fetch + convert + verify the Kinetics-400 I3D weights
    python -m extract features --dataset synthetic --root artifacts/datasets/synthetic
    python -m extract features --dataset aqa7 --root /data/AQA-7 --opt class=diving --views test-only
    torchrun --nproc_per_node 4 -m extract features --dataset mtl_aqa --root /data/MTL-AQA   # 4 GPUs
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import click

VIEWSETS = ("default", "test-only")


def _parse_opts(opts: tuple[str, ...]) -> dict:
    out = {}
    for o in opts:
        if "=" not in o:
            raise click.BadParameter(f"{o!r}: expected KEY=VALUE (e.g. class=diving)", param_hint="--opt")
        k, v = o.split("=", 1)
        k = {"class": "cls"}.get(k.strip(), k.strip())
        try:
            out[k] = json.loads(v)          # numbers / booleans
        except ValueError:
            out[k] = v
    return out


def _parse_hw(s: str) -> tuple[int, int]:
    parts = s.lower().replace("x", ",").split(",")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise click.BadParameter(f"{s!r}: expected HEIGHT,WIDTH (e.g. 455,256) or one number",
                             param_hint="--frame-size")


def _select_views(spec: str, dataset_name: str):
    from data.transforms import default_views

    views = default_views(dataset_name)
    if spec == "default":
        return views, "default"
    if spec == "test-only":
        return [v for v in views if v.role == "test"][:1], "test-only"
    names = [n.strip() for n in spec.split(",") if n.strip()]
    by_name = {v.name: v for v in views}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise click.BadParameter(f"unknown view(s) {unknown} for {dataset_name}; choose from "
                                 f"{list(by_name)} or 'default' / 'test-only'", param_hint="--views")
    tag = "views-" + hashlib.sha256(",".join(names).encode()).hexdigest()[:6]
    return [by_name[n] for n in names], tag


def default_out(dataset: str, opts: dict, sha: str, viewset: str, cfg) -> Path:
    """artifacts/features/<dataset>[-<opts>]-i3d-<sha8>-<viewset>[-<frame config>].h5"""
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


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Stage one: I3D weights and feature extraction into an HDF5 cache."""
    from .dist import dist_info

    info = dist_info()
    prefix = f"[rank {info.rank}] " if info.enabled else ""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format=f"{prefix}%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--force", is_flag=True, help="Download and convert again even if the converted file exists.")
def weights(force: bool) -> None:
    """Fetch, convert and verify the Kinetics-400 I3D weights; print their path and sha256."""
    from .weights import fetch_kinetics400, weights_sha256

    try:
        path = fetch_kinetics400(force=force)
        sha = weights_sha256("kinetics400")
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{path}\nsha256 {sha}")


@main.command()
@click.option("--dataset", required=True, help="Dataset name: aqa7, mtl_aqa, jigsaws, csv, synthetic.")
@click.option("--root", required=True, type=click.Path(path_type=Path), help="Dataset root folder (csv: the CSV file).")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="Dataset option, repeatable: class=diving (aqa7), task=Suturing (jigsaws), normalise=true ...")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output .h5 [default: artifacts/features/<dataset>-i3d-<weights-sha8>-<viewset>.h5].")
@click.option("--weights", default="kinetics400", show_default=True,
              help="kinetics400 | random (seeded, for tests) | PATH to a state dict.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
              help="CUDA autocast dtype (auto = bf16); the CPU always runs float32.")
@click.option("--views", "views_spec", default="default", show_default=True,
              help="default (test view + training views) | test-only | comma list of view names.")
@click.option("--frame-size", default="455,256", show_default=True, help="Resize to HEIGHT,WIDTH (nearest) or "
              "short side min(HEIGHT,WIDTH) with --resize-mode bilinear_short_side.")
@click.option("--crop", default=224, show_default=True, type=int, help="Crop size in pixels.")
@click.option("--norm", type=click.Choice(["imagenet", "minus1to1"]), default="imagenet", show_default=True,
              help="Input normalisation (imagenet = the CoRe paper's; minus1to1 = what the weights were trained on).")
@click.option("--resize-mode", type=click.Choice(["nearest", "bilinear_short_side"]), default="nearest",
              show_default=True, help="Frame resize rule (SPEC section 2).")
@click.option("--n-clips", default=10, show_default=True, type=int, help="Clips of 16 frames per sample.")
@click.option("--batch-clips", default=None, type=int, help="Clips per forward pass [default: 128 CUDA, 16 CPU].")
@click.option("--workers", default=None, type=int, help="Decode workers [default: 0 on CPU, up to 8 on CUDA].")
@click.option("--part-every", default=8, show_default=True, type=int,
              help="Finished videos per part file (what a crash can lose at most, per rank).")
@click.option("--max-videos", default=None, type=int, help="Only the first N samples (quick checks).")
@click.option("--strict", is_flag=True, help="Stop at the first video that fails instead of recording it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache (or parts) made with other settings.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def features(dataset, root, opts, out, weights, device, precision, views_spec, frame_size, crop, norm, resize_mode,
             n_clips, batch_clips, workers, part_every, max_videos, strict, overwrite, no_progress) -> None:
    """Extract I3D clip features of every sample into one HDF5 cache (resumable; see `python -m cache info`)."""
    from cache import CacheError
    from data import DataError, get_dataset
    from data.transforms import FrameConfig

    from .dist import dist_info
    from .pipeline import run_extraction
    from .weights import weights_sha256

    info = dist_info()
    options = _parse_opts(opts)
    try:
        ds = get_dataset(dataset, root, **options)
        views, viewset = _select_views(views_spec, ds.name)
        cfg = FrameConfig(resize_hw=_parse_hw(frame_size), crop=crop, norm=norm, interp=resize_mode)
        if out is None:
            out = default_out(dataset, options, weights_sha256(weights), viewset, cfg)
        res = run_extraction(ds, out, views=views, frame_cfg=cfg, n_clips=n_clips, weights=weights, device=device,
                             batch_clips=batch_clips, workers=workers, strict=strict, max_videos=max_videos,
                             overwrite=overwrite, precision=precision, part_every=part_every,
                             dataset_options=options, progress=not no_progress)
    except (CacheError, DataError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    if not info.is_main:
        return
    if res.already_complete:
        click.echo(f"{out}: already complete with these settings, nothing to do "
                   f"(--overwrite to extract again)")
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
