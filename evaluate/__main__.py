"""Command line of the evaluation package.

    python -m evaluate report RUNS [--out DIR] [--best-on-test] [--long]   # what `make eval` runs
    python -m evaluate table RUNS... [--csv F] [--latex F] [--markdown F] [--long] [--best-on-test]
    python -m evaluate plots RUN_DIR... [--dpi 300]    # PNG + PDF into each run folder
    python -m evaluate score VIDEO --run RUN_DIR [--difficulty D] [--voters M] [--json] [--device auto]

`report` prints the compact table and writes, beside the runs (evaluate.outputs): results.md,
results.tex, results.csv, results_published.csv, comparison-<dataset>.png/.pdf, and each run's plots.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import click

from data.cli import CONTEXT_SETTINGS, user_error, verbose_option
from extract.devices import device_option


class _Lazy:
    """A module imported on first use: `--help` must not pay for pandas and matplotlib."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr):
        import importlib
        return getattr(importlib.import_module(self._name), attr)


cpt = _Lazy("evaluate.compact")
_out = _Lazy("evaluate.outputs")


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
    """Evaluate trained runs: tables, figures, scoring a new video."""


_table_options = [
    click.option("--long", "long_", is_flag=True,
                 help="Print the long table (a row per selection protocol, L2, every note) instead of the "
                      "compact one."),
    click.option("--best-on-test", is_flag=True,
                 help="Add the best epoch chosen ON THE TEST SET (labelled; optimistic by construction)."),
    click.option("--no-reference", "no_reference", is_flag=True,
                 help="Leave out the published (end-to-end fine-tuned) numbers."),
    click.option("--n-boot", type=click.IntRange(min=1), default=1000, show_default=True,
                 help="Bootstrap draws for the rho intervals."),
    click.option("--boot-seed", type=int, default=0, show_default=True, help="Seed of the bootstrap."),
]


def _add(options):
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f
    return deco


def _tables(paths, *, n_boot, boot_seed, best_on_test, no_reference):
    from evaluate.tables import build_table, find_runs

    runs, skipped = find_runs(paths)
    long = build_table(runs, n_boot=n_boot, seed=boot_seed, best_on_test=best_on_test)
    if no_reference and len(long):
        long = long.assign(published_rho=math.nan, published_RL2x100=math.nan, published_source="")
    return runs, skipped, long, cpt.compact_frame(long, best_on_test=best_on_test)


def _text(long, compact, skipped, *, n_boot, long_, reference) -> str:
    parts = [cpt.long_markdown(long) if long_ else cpt.to_markdown(compact, n_boot=n_boot, reference=reference)]
    if cpt.skipped_text(skipped):
        parts.append(cpt.skipped_text(skipped))
    return "\n\n".join(parts)


def _write_tables(paths: dict, long, compact, text, *, n_boot, reference, options=None) -> list[Path]:
    """Write the given outputs; `options` names the option to change when one cannot be written."""
    from evaluate.latex import to_latex

    opt = {"csv": "--csv", "markdown": "--markdown", "latex": "--latex", **(options or {})}
    out = []
    if paths.get("csv"):
        out.append(_out.write_csv(paths["csv"], long, opt["csv"]))
        if reference:
            out.append(_out.write_csv(Path(paths["csv"]).with_name(Path(paths["csv"]).stem + "_published.csv"),
                                 cpt.reference_frame(long), opt["csv"]))
    if paths.get("markdown"):
        out.append(_out.write_text(paths["markdown"], text + "\n", opt["markdown"]))
    if paths.get("latex"):
        out.append(_out.write_text(paths["latex"], to_latex(compact, n_boot=n_boot, reference=reference), opt["latex"]))
    return out


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--csv", type=click.Path(dir_okay=False), default=None, help="Write the long table as CSV here.")
@click.option("--latex", type=click.Path(dir_okay=False), default=None,
              help="Write the compact table as a LaTeX document (booktabs) here.")
@click.option("--markdown", type=click.Path(dir_okay=False), default=None,
              help="Write the printed table (markdown) here.")
@_add(_table_options)
@verbose_option
def table(runs, csv, latex, markdown, long_, best_on_test, no_reference, n_boot, boot_seed):
    """Result table of every run folder (a folder with summary.json) under RUNS."""
    _, skipped, long, compact = _tables(runs, n_boot=n_boot, boot_seed=boot_seed, best_on_test=best_on_test,
                                        no_reference=no_reference)
    text = _text(long, compact, skipped, n_boot=n_boot, long_=long_, reference=not no_reference)
    click.echo(text)
    paths = {"csv": csv, "latex": latex, "markdown": markdown}
    try:
        if any(paths.values()):
            _out.refuse_empty(len(long), runs, skipped, [p for p in (csv,) if p])
        for w in _write_tables(paths, long, compact, text, n_boot=n_boot, reference=not no_reference):
            click.echo(f"wrote {w}")
    except _out.OutputError as e:
        raise user_error(e) from None


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--dpi", type=click.IntRange(min=50, max=1200), default=300, show_default=True,
              help="Resolution of the PNG files (a vector PDF is written beside each).")
@verbose_option
def plots(run_dirs, dpi):
    """Plots (scatter, curves, leaves; PNG + PDF) into each RUN_DIR (or every run under it)."""
    from evaluate.plots import plot_run
    dirs = _run_dirs(run_dirs)
    if not dirs:
        raise click.ClickException(f"no run folders (with summary.json or metrics.csv) under {', '.join(run_dirs)}")
    for d in dirs:
        problems: list[str] = []
        for p in plot_run(d, dpi=dpi, problems=problems):
            click.echo(str(p))
        for why in problems:
            click.echo(f"{d}: not drawn: {why}")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("runs_root", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for results.md/.tex/.csv, results_published.csv and the comparison figures "
                   "[default: RUNS_ROOT itself, so the results follow the runs].")
@click.option("--csv", type=click.Path(dir_okay=False), default=None, help="Long-table CSV [default: OUT/results.csv].")
@click.option("--latex", type=click.Path(dir_okay=False), default=None, help="LaTeX [default: OUT/results.tex].")
@click.option("--no-plots", is_flag=True, help="Only the tables: no run plots, no comparison figures.")
@click.option("--dpi", type=click.IntRange(min=50, max=1200), default=300, show_default=True,
              help="Resolution of the PNG files (a vector PDF is written beside each).")
@_add(_table_options)
@verbose_option
def report(runs_root, out_dir, csv, latex, no_plots, dpi, long_, best_on_test, no_reference, n_boot, boot_seed):
    """Everything `make eval` needs: the compact table (printed, markdown, LaTeX), the long CSV, the
    comparison figures and every run's plots, written beside the runs."""
    paths = _out.default_paths(runs_root, out_dir)
    paths.update({k: Path(v) for k, v in (("csv", csv), ("latex", latex)) if v})
    runs, skipped, long, compact = _tables([runs_root], n_boot=n_boot, boot_seed=boot_seed,
                                           best_on_test=best_on_test, no_reference=no_reference)
    text = _text(long, compact, skipped, n_boot=n_boot, long_=long_, reference=not no_reference)
    click.echo(text)
    try:
        _out.refuse_empty(len(long), [runs_root], skipped, [paths["csv"]])
        written = _write_tables(paths, long, compact, text, n_boot=n_boot, reference=not no_reference,
                                options={"csv": "--csv" if csv else "--out", "markdown": "--out",
                                         "latex": "--latex" if latex else "--out"})
        if not no_plots:
            from evaluate.figures import comparison_figures
            try:
                written += comparison_figures(runs, long, paths["figures"], dpi=dpi)
            except OSError as e:
                raise _out.OutputError(f"cannot write the comparison figures into {paths['figures']} "
                                  f"({e.strerror or e}); choose another --out") from None
    except _out.OutputError as e:
        raise user_error(e) from None
    click.echo("")
    for w in written:
        click.echo(f"wrote {w}")
    if not no_plots:
        from evaluate.plots import plot_run
        n = 0
        click.echo("Plots:")
        for r in runs:
            problems: list[str] = []
            made = plot_run(r.path, dpi=dpi, problems=problems)
            n += len(made)
            names = " ".join(dict.fromkeys(p.stem for p in made))
            click.echo(f"  {r.path}/: {names or '(none)'}" + "".join(f"; not drawn: {w}" for w in problems))
        click.echo(f"wrote {n} plot files (PNG {dpi} dpi + PDF) into {len(runs)} run folders under {runs_root}")


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
@click.option("--model", type=click.Choice(["selected", "final"]), default="selected", show_default=True,
              help="The run's validation-selected model (model_selected.pt) or its final epoch's (model_final.pt).")
@click.option("--weights", default=None,
              help="Backbone weights source if the cache's (config) one is not loadable here; "
                   "its sha256 must still match the cache's.")
@verbose_option
def score(video, run_dir, difficulty, voters, as_json, device, sampling, seed, model, weights):
    """Score a new clip (video file or frame folder) with a trained run."""
    from evaluate.score import ScoreError, score_video
    try:
        res = score_video(video, run_dir, difficulty=difficulty, voters=voters, device=device,
                          sampling=sampling, seed=seed, weights=weights, model=model)
    except ScoreError as e:             # a DeviceError reaches here as a ScoreError (score._device)
        raise user_error(e) from None
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    dd = res["difficulty"] is not None
    click.echo(f"predicted score: {res['score']:.3f}   ({res['head']} run {res['run']}, "
               f"{res.get('model', model)} model)")
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
