"""Figures: the comparison figure across runs (seeds, intervals, curves averaged over seeds), print
resolution PNG + vector PDF, proper names, and a leaf-usage plot whose labels do not overlap.
Figures are captured when matplotlib closes them, so their content is checked, not only the files.
Run: .venv/bin/python -m pytest tests/test_evaluate_figures.py -q"""
import json

import numpy as np
import pytest
from PIL import Image

from evaluate import figures, plots
from evaluate.tables import build_table, find_runs
from train_head.runfolder import RunFolder
from tests.test_evaluate_tables import write_run


@pytest.fixture()
def captured(monkeypatch):
    """Every figure plots.save_figure closes, kept open for inspection."""
    closed, real_close = [], plots.plt.close
    monkeypatch.setattr(plots.plt, "close", lambda fig=None: closed.append(fig))
    yield closed
    for f in closed:
        real_close(f)


def _curves(run, test_rho, val_rho):
    RunFolder(run).write_metrics([{"epoch": e + 1, "train_loss": 1.0, "val_rho": v, "val_l2": 1.0, "val_rl2": 0.1,
                                   "test_rho": t, "test_l2": 1.0, "test_rl2": 0.1}
                                  for e, (t, v) in enumerate(zip(test_rho, val_rho))])


@pytest.fixture()
def two_methods(tmp_path):
    root = tmp_path / "runs"
    for head in ("core", "mlp"):
        for c in ("diving", "gym_vault"):
            for seed in (0, 1):
                run = write_run(root / "aqa7" / c / head / f"seed{seed}", cls=c, head=head, seed=seed,
                                rho=0.5 + 0.1 * seed, pred_seed=seed, tree=head == "core")
                _curves(run, [0.1 * seed, 0.2 + 0.1 * seed, 0.4], [0.0, 0.3 * seed, 0.2])
    return root


def test_comparison_figure(two_methods, captured, tmp_path):
    runs, _ = find_runs([two_methods])
    long = build_table(runs, n_boot=50)
    out = figures.comparison_figures(runs, long, tmp_path / "figs", dpi=300)
    assert [p.name for p in out] == ["comparison-aqa7.png", "comparison-aqa7.pdf"]
    assert out[1].read_bytes()[:5] == b"%PDF-"
    with Image.open(out[0]) as im:
        assert im.info["dpi"] == pytest.approx((300, 300), abs=0.5)           # print resolution
    fig = captured[-1]
    rho_ax, curve_ax = fig.axes
    assert [t.get_text() for t in rho_ax.get_xticklabels()] == ["Diving", "Gym vault", "Avg. (Fisher z, 2/6 classes)"]
    assert {"CoRe", "I3D+MLP"} <= {t.get_text() for t in rho_ax.get_legend().get_texts()}
    assert fig._suptitle.get_text().startswith("AQA-7: methods compared (2 seeds per class/fold)")
    # seed dots: 2 methods x 2 classes, 2 seeds each, at the seeds' rho
    dots = [c for c in rho_ax.collections if c.get_offsets().shape == (2, 2)]
    assert len(dots) == 4 and all(sorted(d.get_offsets()[:, 1]) == pytest.approx([0.5, 0.6]) for d in dots)
    # the interval bars are the table's bootstrap intervals
    sel = long[long["protocol"] == "val-selected"]
    segs = [s for c in rho_ax.collections if hasattr(c, "get_segments") for s in c.get_segments()]
    spans = sorted((round(s[0][1], 6), round(s[1][1], 6)) for s in segs)
    expect = sorted((round(lo, 6), round(hi, 6)) for lo, hi in zip(sel["rho_ci_lo"], sel["rho_ci_hi"]))
    assert spans == expect
    # curves: mean over seeds (and the 2 classes) per epoch, test solid and validation dashed
    lines = {(ln.get_linestyle(), tuple(np.round(ln.get_ydata(), 6))) for ln in curve_ax.lines if len(ln.get_xdata())}
    assert ("-", (0.05, 0.25, 0.4)) in lines and ("--", (0.0, 0.15, 0.2)) in lines
    assert "mean over seeds and 2 classes/folds" in curve_ax.get_title()


def test_run_plots_use_proper_names_and_print_resolution(two_methods, captured):
    run = two_methods / "aqa7" / "gym_vault" / "core" / "seed1"
    made = plots.plot_run(run)
    assert len(made) == 6 and all(p.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-" for p in made)
    with Image.open(run / "curves.png") as im:
        assert im.size == (1800, 1800) and im.info["dpi"] == pytest.approx((300, 300), abs=0.5)
    titles = [ax.get_title() for f in captured for ax in f.axes if ax.get_title()]
    assert len(titles) == 3 and all(t.startswith("AQA-7 · Gym vault · CoRe · seed 1") for t in titles), titles


def _overlaps(fig, labels):
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in labels if t.get_text()]
    return sum(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), boxes


@pytest.mark.parametrize("n_leaves", [16, 32])
def test_leaf_plot_labels_do_not_overlap(tmp_path, captured, n_leaves):
    run = write_run(tmp_path / "r" / "aqa7" / "diving" / "core" / "seed0")
    edges = np.round(np.linspace(-100, 100, n_leaves + 1), 2)
    RunFolder(run).write_json("groups.json", {"groups": [[float(a), float(b)] for a, b in zip(edges, edges[1:])]})
    rng = np.random.default_rng(0)
    RunFolder(run).write_json("leaf_counts.json", {"selected": rng.integers(0, 60, n_leaves).tolist(),
                                                   "final": rng.integers(0, 60, n_leaves).tolist()})
    made = plots.plot_leaves(run, json.loads((run / "summary.json").read_text()))
    assert [p.name for p in made] == ["leaves.png", "leaves.pdf"]
    fig = captured[-1]
    ax = fig.axes[0]
    fig.canvas.draw()
    labels = ax.get_yticklabels()
    assert len([t for t in labels if t.get_text()]) == n_leaves
    assert labels[0].get_text() == "leaf 0: [-100.0, -87.5]" if n_leaves == 16 else labels[0].get_text()
    n, boxes = _overlaps(fig, labels)
    assert n == 0                                                          # no label touches another
    fig_box = fig.bbox
    assert all(b.x0 >= fig_box.x0 - 1 and b.y0 >= fig_box.y0 - 1 and b.y1 <= fig_box.y1 + 1 for b in boxes)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"val-selected model", "final-epoch model"}
