"""Command line of the evaluation package.

    python -m evaluate table RUNS... [--csv out.csv] [--latex out.tex] [--no-reference] [--n-boot 1000]
    python -m evaluate plots RUN_DIR...          # PNGs into each run folder (a folder of runs: all of them)
    python -m evaluate report RUNS_ROOT [--csv FILE]   # table + CSV + every run's plots (make eval)
    python -m evaluate score VIDEO --run RUN_DIR [--difficulty D] [--voters M] [--json] [--device auto]
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from data.cli import CONTEXT_SETTINGS, user_error, verbose_option
from evaluate import tables
from extract.devices import device_option


def _write(path: str | None, text: str) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")


def _write_outputs(df, skipped, csv, latex, reference) -> list[str]:
    written = []
    if csv:
        Path(csv).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(csv, index=False)
        written.append(csv)
        if reference:
            ref_csv = str(Path(csv).with_name(Path(csv).stem + "_published.csv"))
            tables.reference_frame(df).to_csv(ref_csv, index=False)
            written.append(ref_csv)
    if latex:
        _write(latex, tables.to_latex(df, reference=reference))
        written.append(latex)
    return written


def _run_dirs(paths) -> list[Path]:
    """The given folders that are runs, or the runs found under them (complete or not)."""
    out = []
    for p in map(Path, paths):
        if (p / "summary.json").is_file() or (p / "metrics.csv").is_file() or (p / "predictions.csv").is_file():
            out.append(p)
        else:
            out.extend(sorted({q.parent for name in ("summary.json", "metrics.csv") for q in p.rglob(name)}))
    return out


@click.group(context_settings=CONTEXT_SETTINGS)
@verbose_option
def cli() -> None:
    """Evaluate trained runs: tables, plots, scoring a new video."""


_table_options = [
    click.option("--latex", type=click.Path(dir_okay=False), default=None, help="Also write LaTeX here."),
    click.option("--no-reference", "no_reference", is_flag=True,
                 help="Leave out the block of published (end-to-end fine-tuned) numbers."),
    click.option("--n-boot", type=click.IntRange(min=1), default=1000, show_default=True,
                 help="Bootstrap draws for the rho CIs."),
    click.option("--boot-seed", type=int, default=0, show_default=True, help="Seed of the bootstrap."),
]


def _add(options):
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f
    return deco


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--csv", type=click.Path(dir_okay=False), default=None, help="Write the table as CSV here.")
@_add(_table_options)
@verbose_option
def table(runs, csv, latex, no_reference, n_boot, boot_seed):
    """Result table of every run folder (a folder with summary.json) under RUNS."""
    df, skipped = tables.results_table(runs, n_boot=n_boot, seed=boot_seed)
    click.echo(tables.render(df, skipped, reference=not no_reference))
    for w in _write_outputs(df, skipped, csv, latex, not no_reference):
        click.echo(f"wrote {w}")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@verbose_option
def plots(run_dirs):
    """PNG plots (scatter, curves, leaves) into each RUN_DIR (or every run under it)."""
    from evaluate.plots import plot_run
    dirs = _run_dirs(run_dirs)
    if not dirs:
        raise click.ClickException(f"no run folders (with summary.json or metrics.csv) under {', '.join(run_dirs)}")
    for d in dirs:
        for p in plot_run(d):
            click.echo(str(p))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("runs_root", type=click.Path(exists=True, file_okay=False))
@click.option("--csv", type=click.Path(dir_okay=False), default=None,
              help="CSV path [default: results.csv beside RUNS_ROOT, e.g. artifacts/results.csv].")
@click.option("--no-plots", is_flag=True, help="Only the table.")
@_add(_table_options)
@verbose_option
def report(runs_root, csv, no_plots, latex, no_reference, n_boot, boot_seed):
    """Everything `make eval` needs: table (markdown + CSV) and every run's plots."""
    from evaluate.plots import plot_run
    csv = csv or str(Path(runs_root).resolve().parent / "results.csv")
    df, skipped = tables.results_table([runs_root], n_boot=n_boot, seed=boot_seed)
    click.echo(tables.render(df, skipped, reference=not no_reference))
    for w in _write_outputs(df, skipped, csv, latex, not no_reference):
        click.echo(f"wrote {w}")
    if not no_plots:
        runs, _ = tables.find_runs([runs_root])
        n = 0
        click.echo("\nPlots:")
        for r in runs:
            made = plot_run(r.path)
            n += len(made)
            click.echo(f"  {r.path}/: {' '.join(p.name for p in made)}")
        click.echo(f"wrote {n} plots into {len(runs)} run folders under {runs_root}")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("video", type=click.Path(exists=True))
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A run folder (config.json, model_selected.pt, ...).")
@click.option("--difficulty", type=float, default=None, help="Difficulty degree (required by DD heads).")
@click.option("--voters", type=click.IntRange(min=1), default=10, show_default=True, help="Exemplars M.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@device_option
@click.option("--sampling", type=click.Choice(["even", "first"]), default="even", show_default=True,
              help="How T frames are taken from the clip: spread evenly over it, or the first T.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for drawing the exemplars.")
@click.option("--weights", default=None,
              help="Backbone weights source if the cache's (config) one is not loadable here; "
                   "its sha256 must still match the cache's.")
@verbose_option
def score(video, run_dir, difficulty, voters, as_json, device, sampling, seed, weights):
    """Score a new clip (video file or frame folder) with a trained run."""
    from evaluate.score import ScoreError, score_video
    try:
        res = score_video(video, run_dir, difficulty=difficulty, voters=voters, device=device,
                          sampling=sampling, seed=seed, weights=weights)
    except ScoreError as e:             # a DeviceError reaches here as a ScoreError (score._device)
        raise user_error(e) from None
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    dd = res["difficulty"] is not None
    click.echo(f"predicted score: {res['score']:.3f}   ({res['head']} run {res['run']})")
    if res["exemplars"]:
        # for DD heads the difference is in completeness (score / difficulty), the head's target
        diff_head = "diff (compl.)" if dd else "pred diff"
        click.echo(f"{'exemplar':<24}{'score':>10}{'difficulty' if dd else '':>11}{diff_head:>14}{'-> pred':>10}")
        for e in res["exemplars"]:
            d = f"{e['difficulty']:>11.2f}" if dd else f"{'':>11}"
            click.echo(f"{e['video_id']:<24}{e['score']:>10.3f}{d}{e['predicted_difference']:>14.3f}"
                       f"{e['prediction']:>10.3f}")
        s = res["spread"]
        click.echo(f"spread over {len(res['exemplars'])} exemplars: std {s['std']:.3f}, "
                   f"min {s['min']:.3f}, max {s['max']:.3f}")
    for note in res["notes"]:
        click.echo(f"note: {note}")


if __name__ == "__main__":
    cli()
