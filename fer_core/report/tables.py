"""Tables as a thesis takes them: CSV with every digit, a LaTeX ``table`` float with a booktabs
``tabular`` (numbers rounded, text escaped; ``\\usepackage{booktabs}``), and markdown for
``report.md``."""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

#: LaTeX's special characters in text and what stands for each.
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
#: What an empty cell (None, NaN) shows.
EMPTY = "--"


def latex_escape(text: object) -> str:
    """``text`` with LaTeX's special characters escaped (so ``eval_b0 & 50%`` prints as is)."""
    return "".join(_LATEX_SPECIALS.get(character, character) for character in str(text))


def format_value(value: object, digits: int = 3) -> str:
    """One cell as text: floats to ``digits`` places, integers as they are, booleans as yes/no,
    None and NaN as :data:`EMPTY`."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return EMPTY if math.isnan(float(value)) else f"{float(value):.{digits}f}"
    if value is None or value is pd.NA:
        return EMPTY
    return str(value)


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def latex_table(frame: pd.DataFrame, caption: str, label: str, digits: int = 3) -> str:
    """``frame`` as a LaTeX ``table`` float: a booktabs ``tabular`` (text columns left, number
    columns right), ``caption`` above it and ``\\label{label}``."""
    columns = list(frame.columns)
    spec = "".join("r" if _numeric(frame[c]) else "l" for c in columns)
    lines = [r"\begin{table}[htbp]", r"\centering", r"\small", rf"\caption{{{latex_escape(caption)}}}",
             rf"\label{{{label}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in columns) + r" \\", r"\midrule"]
    for row in frame.itertuples(index=False):
        lines.append(" & ".join(latex_escape(format_value(v, digits)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """``frame`` as a GitHub markdown table (``|`` in cells escaped)."""
    def cell(value: object) -> str:
        return format_value(value, digits).replace("|", r"\|").replace("\n", " ")
    rows = ["| " + " | ".join(cell(c) for c in frame.columns) + " |",
            "| " + " | ".join("---:" if _numeric(frame[c]) else "---" for c in frame.columns) + " |"]
    rows += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(rows) + "\n"


def write_table(frame: pd.DataFrame, folder: Path, stem: str, caption: str, digits: int = 3) -> dict[str, Path]:
    """``folder/stem.csv`` (every digit) and ``folder/stem.tex`` (:func:`latex_table`, labelled
    ``tab:<stem>``), each written to a temporary name and renamed; returns both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"csv": folder / f"{stem}.csv", "tex": folder / f"{stem}.tex"}
    texts = {"csv": frame.to_csv(index=False), "tex": latex_table(frame, caption, f"tab:{stem}", digits)}
    for kind, path in paths.items():
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(texts[kind], encoding="utf-8")
        temporary.replace(path)
    return paths
