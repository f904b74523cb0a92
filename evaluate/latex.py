"""The compact table as LaTeX (booktabs): a complete document that compiles as given
(`pdflatex results.tex`; packages: booktabs, geometry), with the table environment between two marker
comments for pasting into a paper (which then needs ``\\usepackage{booktabs}``).

    from evaluate.latex import to_latex, table_body
    text = to_latex(compact, n_boot=1000)

Every cell and the caption go through `escape`: LaTeX's special characters (& % $ # _ { } ~ ^ \\) are
escaped and the table's unicode symbols become math macros (ρ -> $\\rho$, ± -> $\\pm$, × -> $\\times$,
– -> --), so names such as ``core_dd`` or a sweep tag with ``%`` cannot break the document.
"""
from __future__ import annotations

import pandas as pd

from evaluate.compact import caption, display, no_published_line, source_lines

BEGIN, END = "% ---- table begins (needs \\usepackage{booktabs}) ----", "% ---- table ends ----"

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "ρ": r"$\rho$", "±": r"$\pm$", "×": r"$\times$", "–": "--", "→": r"$\rightarrow$",
            "<": r"\textless{}", ">": r"\textgreater{}"}


def escape(text: str) -> str:
    """Plain text -> LaTeX text (special characters escaped, the table's unicode symbols as macros;
    any other non-ASCII character is dropped to '?', so the document stays compilable by pdflatex)."""
    out = []
    for ch in str(text):
        if ch in _SPECIAL:
            out.append(_SPECIAL[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def _head(text: str, width: int = 14) -> str:
    """A header cell, wrapped onto stacked lines (a nested tabular: plain LaTeX) when it is long."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) == 1:
        return escape(text)
    return r"\begin{tabular}[b]{@{}c@{}}" + r"\\".join(escape(x) for x in lines) + r"\end{tabular}"


def _numeric(values: list[str]) -> bool:
    return all(v[:1].isdigit() or v[:1] in "-[–n" for v in values if v)


def table_body(compact: pd.DataFrame, *, n_boot: int, label: str = "tab:results", reference: bool = True) -> str:
    """The table environment (caption, booktabs tabular, source lines)."""
    header, rows = display(compact)
    wrap = {"Note": "p{4.5cm}", "Selection": "p{3.5cm}"}     # long text wraps instead of leaving the page
    spec = "".join(wrap[h] if h in wrap else "r" if _numeric([r[i] for r in rows]) else "l"
                   for i, h in enumerate(header))
    ragged = {i for i, h in enumerate(header) if h in wrap}   # rows end in \tabularnewline, so this is safe
    lines = [r"\begin{table}[ht]", r"\centering", r"\small" if len(header) <= 9 else r"\footnotesize",
             r"\setlength{\tabcolsep}{4pt}",
             rf"\caption{{{escape(caption(compact, n_boot=n_boot))}}}", rf"\label{{{label}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_head(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join((r"\raggedright " if i in ragged else "") + escape(c) for i, c in enumerate(row))
              + r" \tabularnewline" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = source_lines(compact) + [x for x in (no_published_line(compact),) if x and reference]
    if notes:
        lines += [r"\par\smallskip\footnotesize"] + [escape(n) + r"\par" for n in notes]
    lines.append(r"\end{table}")
    return "\n".join(lines)


def to_latex(compact: pd.DataFrame, *, n_boot: int, reference: bool = True) -> str:
    """A standalone document holding the table (landscape A4, small margins: the table is wide)."""
    return "\n".join([
        r"\documentclass{article}",
        r"\usepackage[a4paper,landscape,margin=1.2cm]{geometry}",
        r"\usepackage{booktabs}",
        r"\begin{document}",
        BEGIN, table_body(compact, n_boot=n_boot, reference=reference), END,
        r"\end{document}", ""])
