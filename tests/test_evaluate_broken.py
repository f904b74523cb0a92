"""`evaluate report` on broken runs and on wrong folders: a broken run is shown as broken (its row says
what is wrong), never a crash; an empty or wrong folder never replaces results with an empty table; the
results file follows RUNS.  Run: .venv/bin/python -m pytest tests/test_evaluate_broken.py -q"""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from evaluate.__main__ import cli
from evaluate.tables import find_runs
from tests.test_evaluate_tables import write_run

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--n-boot", "10", "--dpi", "50"]


def _report(*args):
    res = CliRunner().invoke(cli, ["report", *map(str, args), *FAST])
    assert "Traceback" not in res.output and not isinstance(res.exception, (KeyError, ValueError, TypeError)), \
        res.output
    return res


def _edit_summary(run, f):
    s = json.loads((run / "summary.json").read_text())
    f(s)
    (run / "summary.json").write_text(json.dumps(s))     # json writes NaN as NaN, as Python's reader accepts


def _broken_runs(root):
    """One good run and one run per kind of damage (each its own head, so that each has its own row)."""
    d = root / "aqa7" / "diving"
    write_run(d / "core" / "seed0")
    nullrho = write_run(d / "core" / "seed1", seed=1, pred_seed=1)
    _edit_summary(nullrho, lambda s: (s["selected"].update(rho=None, rl2=float("nan")), s["final"].update(rho=None)))
    nanpred = write_run(d / "mlp" / "seed0", head="mlp", tree=False)
    p = pd.read_csv(nanpred / "predictions.csv")
    p.loc[3, "pred"] = np.nan
    p.to_csv(nanpred / "predictions.csv", index=False)
    words = write_run(d / "mlp_dd" / "seed0", head="mlp_dd", tree=False)
    (words / "predictions.csv").write_text("video_id,true,pred,pred_final\na,1,oops,2\nb,x,3,4\nc,5,6,7\n")
    empty = write_run(d / "contrastive_mlp" / "seed0", head="contrastive_mlp", tree=False)
    (empty / "predictions.csv").write_text("")
    model = write_run(d / "core_dd" / "seed0", head="core_dd")
    (model / "model_selected.pt").write_bytes(b"PK\x03\x04 truncated")
    (model / "metrics.csv").write_text("epoch,train_loss,val_rho\n1,2,abc\nnot,a,row,at,all\n")
    (model / "groups.json").write_text(json.dumps({"groups": [["a", "b"]]}))
    half = d / "usdl" / "seed0"                           # a folder where training died early
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    cut = write_run(d / "musdl" / "seed0", head="musdl", tree=False)
    (cut / "summary.json").write_text((cut / "summary.json").read_text()[:80])   # half-written summary
    return root


def test_broken_runs_are_shown_as_broken(tmp_path):
    root = _broken_runs(tmp_path / "runs")
    res = _report(root)
    assert res.exit_code == 0, res.output
    out = res.output
    table = {ln.split("|")[3].strip(): ln for ln in out.splitlines() if ln.startswith("| ")}
    assert "n/a" in table["CoRe"].split("|")[5] or "rho null or NaN in summary.json for seed 1" in table["CoRe"]
    assert "rho null or NaN in summary.json for seed 1" in table["CoRe"]
    assert "NaN in predictions.csv" in table["I3D+MLP"] and "no CI" in table["I3D+MLP"]
    assert "predictions.csv 'pred' holds non-numbers" in table["I3D+MLP w/ DD"]
    assert "predictions.csv unreadable" in table["contrastive MLP"]
    assert "model_selected.pt truncated or not a torch file" in table["CoRe w/ DD"]
    assert "usdl/seed0: no summary.json" in out and "musdl/seed0: unreadable summary.json" in out
    assert "core_dd/seed0/: scatter leaves; not drawn: metrics.csv: unreadable" in out   # drew what it could
    assert (root / "results.csv").is_file() and (root / "results.tex").is_file()
    assert (root / "aqa7" / "diving" / "core_dd" / "seed0" / "leaves.png").is_file()    # without intervals


def test_broken_run_problems_are_listed_per_run(tmp_path):
    runs, skipped = find_runs([_broken_runs(tmp_path / "runs")])
    by_head = {r.head: r for r in runs}
    assert by_head["core_dd"].problems == ["model_selected.pt truncated or not a torch file"]
    assert by_head["core"].problems == []
    for r in runs:
        r.predictions()
    assert by_head["mlp"].problems == ["NaN in predictions.csv"]
    assert by_head["mlp_dd"].problems == ["predictions.csv 'true' holds non-numbers",
                                          "predictions.csv 'pred' holds non-numbers", "NaN in predictions.csv"]
    assert len(skipped) == 2


def test_empty_or_wrong_folder_keeps_the_results(tmp_path):
    good = tmp_path / "runs"
    write_run(good / "aqa7" / "diving" / "core" / "seed0")
    assert _report(good).exit_code == 0
    before = (good / "results.csv").read_bytes()
    assert len(pd.read_csv(good / "results.csv")) == 2
    # a wrong folder, with the good results as its --out: refused, file untouched
    wrong = tmp_path / "typo"
    wrong.mkdir()
    res = _report(wrong, "--out", good)
    assert res.exit_code == 1
    assert "no complete runs under" in res.output and "no run folders (summary.json) found there" in res.output
    assert f"kept {good / 'results.csv'} (2 rows) as it was" in res.output
    assert (good / "results.csv").read_bytes() == before
    # a folder of unfinished runs: the same, and the reasons are listed first
    unfinished = tmp_path / "unfinished"
    write_run(unfinished / "aqa7" / "diving" / "core" / "seed0", complete=False)
    res = _report(unfinished, "--csv", good / "results.csv")
    assert res.exit_code == 1 and "none complete" in res.output and "complete is not true" in res.output
    assert (good / "results.csv").read_bytes() == before and not (unfinished / "results.md").exists()
    # `table` with an output file refuses the same way
    res = CliRunner().invoke(cli, ["table", str(wrong), "--csv", str(good / "results.csv")])
    assert res.exit_code == 1 and (good / "results.csv").read_bytes() == before


def test_results_follow_runs(tmp_path):
    a, b = tmp_path / "runs_a", tmp_path / "runs_b"
    write_run(a / "aqa7" / "diving" / "core" / "seed0", rho=0.1)
    write_run(b / "aqa7" / "diving" / "core" / "seed0", rho=0.9)
    assert _report(a).exit_code == 0 and _report(b).exit_code == 0
    rho = {p: pd.read_csv(p / "results.csv").query("protocol == 'val-selected'")["rho"].item() for p in (a, b)}
    assert rho == {a: 0.1, b: 0.9}
    assert not (tmp_path / "results.csv").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_eval_writes_beside_runs():
    r = subprocess.run(["make", "-s", "-n", "-C", str(ROOT), "eval", "RUNS=/somewhere/my_runs"],
                       capture_output=True, text=True, timeout=60)
    line = [ln for ln in r.stdout.splitlines() if "evaluate report" in ln]
    assert line and line[0].split()[-1] == "/somewhere/my_runs", r.stdout     # no fixed artifacts/results.csv


def test_unwritable_places_are_one_line(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    write_run(root / "aqa7" / "diving" / "core" / "seed0")
    blocker = tmp_path / "file"
    blocker.write_text("x")                              # --out under a file: the folder cannot be made
    res = _report(root, "--out", blocker / "sub")
    assert res.exit_code == 1 and "choose another --out" in res.output and "Traceback" not in res.output
    from evaluate import plots

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(plots.plt.Figure, "savefig", refuse)          # a read-only run folder
    res = _report(root, "--out", tmp_path / "out")
    assert res.exit_code == 1 and "cannot write the comparison figures" in res.output
    made = plots.plot_run(root / "aqa7" / "diving" / "core" / "seed0", problems=(why := []))
    assert made == [] and len(why) == 3 and all("Permission denied" in w for w in why)
