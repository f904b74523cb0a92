"""Tables, plots and the CLI on run folders written by hand in the documented format
(docs/ARCHITECTURE.md, "Run folder").  Run: .venv/bin/python -m pytest tests/test_evaluate_tables.py -q"""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from evaluate.__main__ import cli
from evaluate.metrics import bootstrap_ci, fisher_z_mean, spearman
from evaluate.plots import plot_run
from evaluate.published import AQA7_CLASSES
from evaluate.tables import build_table, find_runs, results_table
from train_head.runfolder import RunFolder

CORE_PUBLISHED = dict(zip(AQA7_CLASSES, (0.8824, 0.7746, 0.7115, 0.6624, 0.9442, 0.9078)))
SEL, FIN, BEST = "val-selected", "final-epoch", "best-epoch-on-test (selected on test!)"


def write_run(d, *, dataset="aqa7", cls="diving", fold=None, head="core", seed=0, rho=0.5, rho_final=0.4,
              rho_best=0.9, l2=10.0, rl2=0.02, n_test=12, pred_seed=0, constant=False, complete=True,
              tree=True, with_predictions=True):
    """A run folder with chosen numbers, written through the trainer's own writer (RunFolder)."""
    folder = RunFolder(d)
    d.mkdir(parents=True)
    rng = np.random.default_rng(pred_seed)
    true = np.linspace(0, 100, n_test)
    pred = np.full(n_test, 50.0) if constant else true + rng.normal(0, 20, n_test)
    if with_predictions:
        folder.write_predictions(pd.DataFrame({
            "video_id": [f"{cls}/{i:03d}" for i in range(n_test)], "true": true, "pred": pred,
            "pred_final": pred + 5, "difficulty": np.nan, "n_voters": 10, "exemplars": "a b",
            "exemplar_preds": "1.0 2.0"}))
    folder.write_metrics([{"epoch": e, "train_loss": loss, "val_rho": v, "val_l2": 1.0, "val_rl2": 0.1,
                           "test_rho": t, "test_l2": 1.0, "test_rl2": 0.1}
                          for e, loss, v, t in ((0, 3.0, 0.1, 0.2), (1, 2.0, 0.4, 0.5), (2, 1.5, 0.3, 0.6))])
    folder.write_json("config.json", {"dataset": dataset, "head": head, "seed": seed, "lr": 1e-3})
    tiny = {"w": torch.zeros(2)}                    # model files, so that the run is not reported broken
    folder.save("model_selected.pt", tiny)
    folder.save("model_final.pt", tiny)
    if tree:
        folder.write_json("groups.json", {"groups": [[-2, -1], [-1, 0], [0, 1], [1, 2]], "theta": 100,
                                          "n_clamped": 0})
        folder.write_json("leaf_counts.json", {"selected": [3, 0, 5, 4]})
    s = {"dataset": dataset, "cls": cls, "fold": fold, "head": head, "seed": seed, "selected_epoch": 1,
         "final_epoch": 2, "selected": {"rho": None if constant else rho, "l2": l2, "rl2": rl2},
         "final": {"rho": rho_final, "l2": l2 + 1, "rl2": rl2 + 0.01},
         "best_on_test": {"epoch": 2, "rho": rho_best, "l2": l2 - 1, "rl2": rl2 - 0.01},
         "n_train": 30, "n_val": 5, "n_test": n_test, "complete": complete}
    folder.write_json("summary.json", s)
    return d


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    for c in AQA7_CLASSES:
        for seed in (0, 1):
            write_run(root / "aqa7" / c / "core" / f"seed{seed}", cls=c, seed=seed, rho=CORE_PUBLISHED[c],
                      rl2=0.01 * (1 + AQA7_CLASSES.index(c)), pred_seed=seed + 10 * AQA7_CLASSES.index(c))
    # one class of another head, with 2 seeds of different rho
    write_run(root / "aqa7" / "diving" / "mlp" / "seed0", head="mlp", seed=0, rho=0.6, tree=False)
    write_run(root / "aqa7" / "diving" / "mlp" / "seed1", head="mlp", seed=1, rho=0.8, tree=False, pred_seed=1)
    # JIGSAWS: 2 tasks x 2 folds, one seed each
    for t, task in enumerate(("Suturing", "Knot_Tying")):
        for f in (0, 1):
            write_run(root / "jigsaws" / f"{task}_fold{f}" / "core" / "seed0", dataset="jigsaws", cls=task,
                      fold=str(f), rho=0.3 + 0.2 * t + 0.1 * f, n_test=8, pred_seed=100 + 2 * t + f)
    # incomplete ones
    (root / "aqa7" / "diving" / "contrastive_mlp" / "seed0").mkdir(parents=True)
    (root / "aqa7" / "diving" / "contrastive_mlp" / "seed0" / "config.json").write_text("{}")
    write_run(root / "aqa7" / "gym_vault" / "mlp" / "seed0", cls="gym_vault", head="mlp", complete=False)
    return root


def _row(df, label, head="core", proto=SEL, dataset=None):
    m = (df["class/fold"] == label) & (df["head"] == head) & (df["protocol"] == proto)
    if dataset:
        m &= df["dataset"] == dataset
    assert m.sum() == 1, df[["dataset", "class/fold", "head", "protocol"]]
    return df[m].iloc[0]


def test_find_runs_lists_incomplete_as_skipped(runs):
    found, skipped = find_runs([runs])
    assert len(found) == 12 + 2 + 4
    reasons = dict(skipped)
    assert any("contrastive_mlp" in p and "no summary.json" in why for p, why in reasons.items())
    assert any("gym_vault/mlp" in p and "complete" in why for p, why in reasons.items())


def test_table_rows_protocols_and_fisher_average(runs):
    assert set(results_table([runs], n_boot=10)[0]["protocol"]) == {SEL, FIN}     # best-on-test on request
    df, _ = results_table([runs], n_boot=50, best_on_test=True)
    # a row per class x head x protocol, plus averages
    assert set(df["protocol"]) == {SEL, FIN, BEST}
    assert set(df[df["head"] == "core"]["method"]) == {"CoRe"} and set(df[df["head"] == "mlp"]["method"]) == {"I3D+MLP"}
    assert (df["backbone"] == "frozen").all()
    d = _row(df, "diving")
    assert d["rho"] == pytest.approx(0.8824) and d["rho_std"] == pytest.approx(0.0)
    assert d["n_runs"] == 2 and d["n_test"] == 12
    assert d["RL2x100"] == pytest.approx(1.0) and d["L2"] == pytest.approx(10.0)
    assert _row(df, "diving", proto=FIN)["rho"] == pytest.approx(0.4)
    assert _row(df, "diving", proto=BEST)["rho"] == pytest.approx(0.9)
    assert math.isnan(_row(df, "diving", proto=BEST)["rho_ci_lo"])     # no predictions for it
    mlp = _row(df, "diving", head="mlp")
    assert mlp["rho"] == pytest.approx(0.7) and mlp["rho_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    # docs/METHOD.md §5: CoRe's six published per-class values give 0.8433 under the Fisher-z mean
    avg = _row(df, "avg (Fisher z, 6/6 classes)")
    assert avg["rho"] == pytest.approx(0.8433, abs=6e-5)
    assert avg["RL2x100"] == pytest.approx(np.mean([1, 2, 3, 4, 5, 6]))     # arithmetic mean
    assert avg["n_runs"] == 12 and avg["n_test"] == 72
    assert avg["rho_std"] == pytest.approx(0.0, abs=1e-12)
    assert avg["rho_ci_lo"] < avg["rho_ci_hi"]
    # mlp has one class only: no average row
    assert not ((df["head"] == "mlp") & df["class/fold"].str.startswith("avg")).any()


def test_jigsaws_averages_over_folds_and_tasks(runs):
    df, _ = results_table([runs], n_boot=50)
    f0 = _row(df, "Suturing fold 0", dataset="jigsaws")
    assert f0["rho"] == pytest.approx(0.3) and math.isnan(f0["rho_std"])    # one seed: no std
    s = _row(df, "Suturing avg (Fisher z, 2 folds)", dataset="jigsaws")
    assert s["rho"] == pytest.approx(fisher_z_mean([0.3, 0.4]))
    allrow = _row(df, "avg (Fisher z, 2 tasks x 2 folds)", dataset="jigsaws")
    assert allrow["rho"] == pytest.approx(fisher_z_mean([0.3, 0.4, 0.5, 0.6]))
    assert allrow["n_test"] == 32


def test_ci_is_bootstrap_over_videos_of_the_seed_mean(runs):
    df, _ = results_table([runs], n_boot=80, seed=4)
    row = _row(df, "diving", head="mlp")
    preds = [pd.read_csv(runs / "aqa7" / "diving" / "mlp" / f"seed{k}" / "predictions.csv") for k in (0, 1)]
    expect = bootstrap_ci(preds[0]["true"], np.stack([p["pred"] for p in preds]), n_boot=80, seed=4)
    assert (row["rho_ci_lo"], row["rho_ci_hi"]) == pytest.approx(expect)
    fin = _row(df, "diving", head="mlp", proto=FIN)          # the final-epoch CI uses pred_final
    assert (fin["rho_ci_lo"], fin["rho_ci_hi"]) == pytest.approx(
        bootstrap_ci(preds[0]["true"], np.stack([p["pred_final"] for p in preds]), n_boot=80, seed=4))


def test_constant_predictions_give_nan_not_zero(tmp_path):
    write_run(tmp_path / "r" / "aqa7" / "diving" / "core" / "seed0", constant=True)
    write_run(tmp_path / "r" / "aqa7" / "diving" / "core" / "seed1", seed=1, rho=0.5)
    df, _ = results_table([tmp_path / "r"], n_boot=30)
    row = _row(df, "diving")
    assert math.isnan(row["rho"]) and "rho null or NaN in summary.json for seed 0" in row["note"]


def test_summary_rho_is_checked_against_predictions(tmp_path):
    d = write_run(tmp_path / "r" / "aqa7" / "diving" / "core" / "seed0", rho=0.5)
    p = pd.read_csv(d / "predictions.csv")
    df, _ = results_table([tmp_path / "r"], n_boot=20)
    assert "summary rho 0.5000 !=" in _row(df, "diving")["note"]
    s = json.loads((d / "summary.json").read_text())
    s["selected"]["rho"] = spearman(p["pred"], p["true"])
    s["final"]["rho"] = spearman(p["pred_final"], p["true"])
    (d / "summary.json").write_text(json.dumps(s))
    df, _ = results_table([tmp_path / "r"], n_boot=20)
    assert _row(df, "diving")["note"] == "" and _row(df, "diving", proto=FIN)["note"] == ""


def test_experiments_are_not_pooled(tmp_path):
    write_run(tmp_path / "r" / "lr1" / "aqa7" / "diving" / "core" / "seed0", rho=0.1)
    write_run(tmp_path / "r" / "lr2" / "aqa7" / "diving" / "core" / "seed0", rho=0.9)
    df, _ = results_table([tmp_path / "r"], n_boot=20)
    sel = df[df["protocol"] == SEL]
    assert sorted(sel["experiment"]) == ["lr1", "lr2"] and sorted(sel["rho"]) == [0.1, 0.9]
    # sweep tags (the trainer's <head>+<tag> folders) are different models, not more seeds
    for tag, rho in (("a", 0.2), ("b", 0.3)):
        d = write_run(tmp_path / "t" / "aqa7" / "diving" / f"core+{tag}" / "seed0", rho=rho)
        s = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**s, "tag": tag}))
    df, _ = results_table([tmp_path / "t"], n_boot=20)
    sel = df[df["protocol"] == SEL]
    assert sorted(zip(sel["head"], sel["rho"])) == [("core+a", 0.2), ("core+b", 0.3)]


def test_cli_table_writes_csv_latex_and_keeps_reference_apart(runs, tmp_path):
    csv, tex = tmp_path / "out" / "results.csv", tmp_path / "out" / "results.tex"
    md = tmp_path / "out" / "results.md"
    res = CliRunner().invoke(cli, ["table", str(runs), "--csv", str(csv), "--latex", str(tex), "--markdown", str(md),
                                   "--n-boot", "30"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "selected on test!" not in out                                # only on request
    assert "| Avg. (Fisher z, 6/6 classes)" in out and "| CoRe " in out and "| I3D+MLP " in out
    assert "[a] Yu et al., ICCV 2021 (CoRe), Tables 1-2 (published, end-to-end fine-tuned; not ours)" in out
    assert "Not in the table" in out and "contrastive_mlp" in out
    ours = pd.read_csv(csv)                                               # the tidy long table
    assert set(ours["protocol"]) == {SEL, FIN} and set(ours["head"]) == {"core", "mlp"}
    assert "USDL" not in set(ours["method"])                              # published rows stay apart
    row = ours[(ours["class/fold"] == "diving") & (ours["head"] == "core") & (ours["protocol"] == SEL)].iloc[0]
    assert row["published_rho"] == pytest.approx(0.8824) and row["published_source"].startswith("Yu et al.")
    ref = pd.read_csv(tmp_path / "out" / "results_published.csv")
    assert (ref["setting"] == "end-to-end fine-tuned").all() and ref["source"].str.len().gt(0).all()
    assert set(ref["dataset"]) == {"aqa7", "jigsaws"}
    assert "\\begin{tabular}" in tex.read_text() and "\\toprule" in tex.read_text()
    assert md.read_text().startswith("Spearman ρ on the test split")
    res = CliRunner().invoke(cli, ["table", str(runs), "--no-reference", "--n-boot", "10", "--best-on-test"])
    assert res.exit_code == 0 and "Published" not in res.output and "[a]" not in res.output
    assert "ρ best epoch on test (selected on test!)" in res.output
    res = CliRunner().invoke(cli, ["table", str(runs), "--long", "--n-boot", "10"])
    assert res.exit_code == 0 and "| val-selected " in res.output and "| final-epoch " in res.output


def _assert_png(p):
    from PIL import Image
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(p) as im:
        im.verify()


def _names(paths):
    return sorted(p.name for p in paths)


def test_plots_of_a_run(runs):
    run = runs / "aqa7" / "diving" / "core" / "seed0"
    paths = plot_run(run)
    assert _names(paths) == ["curves.pdf", "curves.png", "leaves.pdf", "leaves.png", "scatter.pdf", "scatter.png"]
    for p in paths:
        assert p.parent == run
        if p.suffix == ".png":
            _assert_png(p)
        else:
            assert p.read_bytes()[:5] == b"%PDF-"
    mlp = plot_run(runs / "aqa7" / "diving" / "mlp" / "seed0")          # not a tree head: no leaves
    assert _names(mlp) == ["curves.pdf", "curves.png", "scatter.pdf", "scatter.png"]


def test_cli_plots_and_report(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "aqa7" / "diving" / "core" / "seed0")
    write_run(root / "aqa7" / "diving" / "mlp" / "seed0", head="mlp", tree=False)
    (root / "aqa7" / "diving" / "contrastive_mlp" / "seed0").mkdir(parents=True)
    (root / "aqa7" / "diving" / "contrastive_mlp" / "seed0" / "metrics.csv").write_text("epoch\n")
    run = root / "aqa7" / "diving" / "core" / "seed0"
    res = CliRunner().invoke(cli, ["plots", str(run), "--dpi", "60"])
    assert res.exit_code == 0, res.output
    assert str(run / "scatter.png") in res.output and str(run / "scatter.pdf") in res.output
    res = CliRunner().invoke(cli, ["report", str(root), "--n-boot", "10", "--dpi", "60"])
    assert res.exit_code == 0, res.output
    for name in ("results.csv", "results.md", "results.tex", "results_published.csv", "comparison-aqa7.png",
                 "comparison-aqa7.pdf"):
        assert (root / name).is_file(), name                            # the results live with the runs
    assert not (root.parent / "results.csv").exists()
    assert "wrote 10 plot files (PNG 60 dpi + PDF) into 2 run folders" in res.output   # complete runs only
    assert "Not in the table" in res.output
    _assert_png(root / "aqa7" / "diving" / "mlp" / "seed0" / "curves.png")


def test_scatter_plot_title_shows_the_run_and_its_rho(runs, monkeypatch):
    """Reads the plot back: the PNG is a real image, and the figure's title names the run and the rho of
    predictions.csv (figures are captured when plots.py closes them)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from evaluate import plots

    closed, real_close = [], plt.close
    monkeypatch.setattr(plots.plt, "close", lambda fig=None: closed.append(fig))
    run = runs / "aqa7" / "diving" / "core" / "seed0"
    made = plots.plot_scatter(run, json.loads((run / "summary.json").read_text()))
    monkeypatch.undo()
    try:
        out = made[0]
        assert made == [run / "scatter.png", run / "scatter.pdf"] and out.stat().st_size > 0
        _assert_png(out)
        with Image.open(out) as im:
            assert im.size == (1500, 1500)                                 # 5 x 5 inches at 300 dpi
            assert len(np.unique(np.asarray(im.convert("L")))) > 2        # something was drawn
        assert len(closed) == 1                                           # PNG and PDF of one figure
        fig = closed[0]
        title = fig.axes[0].get_title()
        p = pd.read_csv(run / "predictions.csv")
        rho = spearman(p["pred"], p["true"])
        assert math.isfinite(rho)
        assert title.startswith("AQA-7 · Diving · CoRe · seed 0\n"), title
        assert f"ρ = {rho:.4f}" in title and f"(n = {len(p)} test videos)" in title, title
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert f"val-selected model (ρ {rho:.4f})" in legend
        assert f"final-epoch model (ρ {spearman(p['pred_final'], p['true']):.4f})" in legend
    finally:
        for f in closed:
            real_close(f)


def test_empty_table():
    assert build_table([], n_boot=10).empty
