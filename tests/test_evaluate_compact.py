"""The compact paper table: paper names, one number format, published numbers side by side with their
sources, the protocol in the caption, best-on-test only on request, and LaTeX that parses (and compiles
when pdflatex is installed).  Run: .venv/bin/python -m pytest tests/test_evaluate_compact.py -q"""
import json
import re
import shutil
import subprocess

import pytest

from evaluate.compact import compact_frame, display, to_markdown
from evaluate.latex import BEGIN, END, escape, to_latex
from evaluate.published import AQA7_CLASSES
from evaluate.tables import build_table, find_runs
from tests.test_evaluate_tables import CORE_PUBLISHED, write_run

NUM = re.compile(r"^(n/a|–|-?\d+\.\d{4}( ± \d+\.\d{4})?( \[[a-z]\])?|\[-?\d+\.\d{4}, -?\d+\.\d{4}\])$")
RL2 = re.compile(r"^(n/a|–|\d+\.\d{3})$")


def _patch(run, **fields):
    s = json.loads((run / "summary.json").read_text())
    s.update(fields)
    (run / "summary.json").write_text(json.dumps(s))
    return run


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("compact") / "runs"
    for c in AQA7_CLASSES:
        for seed in (0, 1):
            _patch(write_run(root / "aqa7" / c / "core" / f"seed{seed}", cls=c, seed=seed, rho=CORE_PUBLISHED[c],
                             pred_seed=seed), selection="best validation rho")
    for head in ("core_dd", "mlp_dd", "musdl", "usdl", "contrastive_mlp"):
        _patch(write_run(root / "mtl_aqa" / "mtl_aqa" / head / "seed0", dataset="mtl_aqa", cls="mtl_aqa", head=head,
                         rl2=0.0026, tree=False), selection="best validation rho")
    # a fine-tuned run and a sweep tag with LaTeX special characters
    _patch(write_run(root / "mtl_aqa" / "mtl_aqa" / "core+finetune" / "seed0", dataset="mtl_aqa", cls="mtl_aqa"),
           tag="finetune", mode="finetune", selection="best validation rho")
    _patch(write_run(root / "mtl_aqa" / "mtl_aqa" / "mlp+lr_1%#" / "seed0", dataset="mtl_aqa", cls="mtl_aqa",
                     head="mlp", tree=False), tag="lr_1%#", selection="best validation rho")
    runs, _ = find_runs([root])
    long = build_table(runs, n_boot=40)
    best = build_table(runs, n_boot=40, best_on_test=True)
    return long, compact_frame(long), compact_frame(best, best_on_test=True)


def _row(compact, label, method, dataset=None):
    m = (compact["class/fold"] == label) & (compact["method"] == method)
    if dataset:
        m &= compact["dataset"] == dataset
    assert m.sum() == 1, compact[["dataset", "class/fold", "method"]]
    return compact[m].iloc[0]


def test_one_row_per_class_and_method_with_paper_names(tables):
    long, compact, _ = tables
    assert len(compact) == len(long[long["protocol"] == "val-selected"])         # not a row per protocol
    assert set(compact["method"]) == {"CoRe", "CoRe w/ DD", "I3D+MLP w/ DD", "MUSDL", "USDL", "contrastive MLP",
                                      "CoRe [finetune]", "I3D+MLP [lr_1%#]"}
    diving = _row(compact, "diving", "CoRe")
    assert diving["n_seeds"] == 2 and diving["rho"] == pytest.approx(0.8824)
    fin = long[(long["class/fold"] == "diving") & (long["protocol"] == "final-epoch")].iloc[0]
    assert diving["rho_final"] == pytest.approx(fin["rho"])                 # the final epoch is a column
    avg = _row(compact, "avg (Fisher z, 6/6 classes)", "CoRe")
    assert avg["n_seeds"] == 2                                               # seeds, not seeds x classes


def test_published_side_by_side_with_sources(tables):
    _, compact, _ = tables
    avg = _row(compact, "avg (Fisher z, 6/6 classes)", "CoRe")
    assert (avg["published_rho"], avg["published_RL2x100"]) == (0.8401, 2.12)
    assert avg["published_source"] == "Yu et al., ICCV 2021 (CoRe), Tables 1-2"
    dd = _row(compact, "mtl_aqa", "CoRe w/ DD")
    assert (dd["published_rho"], dd["published_RL2x100"]) == (0.9512, 0.260)
    musdl = _row(compact, "mtl_aqa", "MUSDL")
    assert (musdl["published_rho"], musdl["published_RL2x100"]) == (0.9273, 0.451)
    assert musdl["published_source"].startswith("Tang et al., CVPR 2020")
    assert _row(compact, "mtl_aqa", "CoRe [finetune]")["published_rho"] == 0.9341   # a tag keeps the method
    assert _row(compact, "mtl_aqa", "contrastive MLP")["published_source"] == ""     # nothing published
    md = to_markdown(compact, n_boot=40)
    assert re.search(r"\|\s+Published ρ \|", md) and "0.9512 [" in md and "0.9273 [" in md
    assert "Experiment" not in md          # the class folder 'mtl_aqa' is not taken for an experiment
    for letter, src in (("a", "Yu et al., ICCV 2021 (CoRe), Tables 1-2"), ("b", "Tang et al., CVPR 2020")):
        assert re.search(rf"^\[{letter}\] {re.escape(src)}.*not ours\)$", md, re.M), md
    assert "end-to-end fine-tuned" in md.split("\n\n")[0]                    # said in the caption


def test_one_number_format_and_caption(tables):
    _, compact, _ = tables
    header, rows = display(compact)
    for name in header:
        col = [r[header.index(name)] for r in rows]
        if "ρ" in name:
            assert all(NUM.match(v) for v in col), (name, col)
        elif "RL2" in name:
            assert all(RL2.match(v) for v in col), (name, col)
    md = to_markdown(compact, n_boot=40)
    caption = md.split("\n\n")[0]
    assert "Model selection (val-selected): best validation rho" in caption and "40 draws" in caption
    assert caption.count("Model selection") == 1 and "Selection" not in header     # once, not per row
    assert "Backbone" in header and "fine-tuned" in [r[header.index("Backbone")] for r in rows]
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len({ln.count("|") for ln in lines}) == 1                          # every row has every column
    assert "best epoch on test" not in md


def test_best_on_test_only_on_request_and_labelled(tables):
    _, compact, with_best = tables
    assert "rho_best_on_test" not in compact.columns
    header, rows = display(with_best)
    col = header.index("ρ best epoch on test (selected on test!)")
    assert rows[0][col] == "0.9000"
    assert "picks the epoch on the test set itself" in to_markdown(with_best, n_boot=40)


def test_selection_column_when_rules_differ(tmp_path):
    a = _patch(write_run(tmp_path / "r" / "aqa7" / "diving" / "core" / "seed0"), selection="best validation rho")
    _patch(write_run(tmp_path / "r" / "aqa7" / "diving" / "mlp" / "seed0", head="mlp", tree=False),
           selection="no validation split (val_fraction=0): the final epoch")
    assert a.is_dir()
    compact = compact_frame(build_table(find_runs([tmp_path / "r"])[0], n_boot=10))
    header, _ = display(compact)
    assert "Selection" in header
    assert "Model selection differs between rows" in to_markdown(compact, n_boot=10)


# ------------------------------------------------------------------------------------------- LaTeX
def _environments_balanced(tex):
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{([^}]*)\}", tex):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name, f"\\end{{{name}}} does not close {stack}"
    assert not stack, f"unclosed {stack}"


def _spec_columns(spec):
    return len(re.findall(r"[lcr]|p\{[^}]*\}", spec))


def test_latex_parses(tables):
    _, compact, _ = tables
    tex = to_latex(compact, n_boot=40)
    _environments_balanced(tex)
    assert "\\usepackage{booktabs}" in tex and "\\hline" not in tex
    body = tex[tex.index(BEGIN) + len(BEGIN):tex.index(END)]
    spec = re.search(r"\\begin\{tabular\}\{((?:[^{}]|\{[^}]*\})*)\}\n", body).group(1)
    n_cols = _spec_columns(spec)
    inner = body[body.index("\\toprule") + len("\\toprule"):body.index("\\bottomrule")]
    rows = [r for r in inner.split("\n") if r.strip() and r.strip() != "\\midrule"]
    assert len(rows) == 1 + len(compact)                                     # the header and one per row
    for r in rows:
        assert r.endswith("\\\\") or r.endswith("\\tabularnewline"), r
        top = re.sub(r"\\begin\{tabular\}.*?\\end\{tabular\}", "H", r)     # stacked header cells count once
        cells = re.split(r"(?<!\\)&", top)
        assert len(cells) == n_cols, (len(cells), n_cols, r)
        for c in cells:
            text = c.replace("$\\rho$", "").replace("$\\pm$", "").replace("$\\times$", "")
            assert "$" not in text.replace("\\$", ""), c                     # no stray math
            assert not re.search(r"(?<!\\)[_%#^~]", text), c                # special characters escaped
    assert "lr\\_1\\%\\#" in tex and "$\\rho$" in tex and "$\\pm$" in tex
    assert escape("a_b & 50% ~ρ±") == "a\\_b \\& 50\\% \\textasciitilde{}$\\rho$$\\pm$"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_compiles(tables, tmp_path):
    _, compact, with_best = tables
    for name, frame in (("t.tex", compact), ("b.tex", with_best)):
        (tmp_path / name).write_text(to_latex(frame, n_boot=40), encoding="utf-8")
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", name], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-3000:]
        assert (tmp_path / name).with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


def test_finediving_rows_pair_with_the_published_w_o_dn_numbers(tmp_path):
    root = tmp_path / "runs"
    for head in ("core", "core_dd", "usdl", "musdl", "mlp"):
        _patch(write_run(root / "finediving" / "all" / head / "seed0", dataset="finediving", cls="all", head=head,
                         rl2=0.005, tree=head.startswith("core")), selection="best validation rho")
    runs, _ = find_runs([root])
    compact = compact_frame(build_table(runs, n_boot=20))
    got = {m: (r["published_rho"], r["published_RL2x100"]) for m, r in
           zip(compact["method"], compact.to_dict("records"))}
    assert got["CoRe"] == (0.8631, 0.5565) and got["MUSDL"] == (0.8427, 0.5733) and got["USDL"] == (0.8302, 0.5927)
    # core_dd picks exemplars by difficulty, the published "w/ DN" rows by dive number: not paired; no I3D+MLP row
    for m in ("CoRe w/ DD", "I3D+MLP"):
        r = compact[compact["method"] == m].iloc[0]
        assert r["published_source"] == "" and r["published_rho"] != r["published_rho"], m   # NaN
    src = compact.loc[compact["method"] == "CoRe", "published_source"].item()
    assert src.startswith("Xu et al., CVPR 2022 (FineDiving)") and "not checked" in src
    md = to_markdown(compact, n_boot=20)
    assert "0.8631" in md and "FineDiving" in md
