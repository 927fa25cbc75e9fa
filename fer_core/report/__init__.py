"""Thesis-ready exports of the research questions (``fer-core report rq1|rq2|rq3|rq4|all``).

Each question's builder (:data:`QUESTIONS`: :mod:`~fer_core.report.rq1` ...
:mod:`~fer_core.report.rq4`) reads what is in the runs folders and the result cache, never
computing a heavy result, and writes tables (CSV + LaTeX booktabs) and figures (PNG + PDF +
SVG) with the protocol beside each; what is missing is named with the command that makes it.
``report.md`` ties them together with the commands and run ids behind every figure. The
dashboard's downloads call the same export functions on what a page shows
(:func:`export_zip`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Sequence

from fer_core.config import Config
from fer_core.errors import InvalidArgument
from fer_core.report.base import Artifact, Missing, Report, Section
from fer_core.report.context import QUESTIONS, ReportContext, ReportOptions, register_question
from fer_core.report import rq1, rq2, rq3, rq4  # noqa: F401  (registers the questions)
from fer_core.runs import provenance_record

__all__ = ["QUESTIONS", "Artifact", "Missing", "Report", "ReportContext", "ReportOptions", "Section", "build_report",
           "export_zip", "question_codes", "register_question"]


def question_codes(names: Sequence[str]) -> list[str]:
    """The question codes ``names`` stand for, in report order (``all``: every one)."""
    unknown = sorted(set(names) - set(QUESTIONS) - {"all"})
    if unknown or not names:
        raise InvalidArgument(f"report: expected some of {[*QUESTIONS, 'all']}, got {list(names)}")
    return [code for code in QUESTIONS if code in names or "all" in names]


def build_report(config: Config, questions: Sequence[str], out: Path | str,
                 options: ReportOptions = ReportOptions(), command: str = "") -> Report:
    """Write the sections of ``questions`` (codes of :data:`QUESTIONS`, or ``all``) into the
    folder ``out``, then ``report.md`` and ``report.json`` (with the provenance of
    ``config.root``: commit, versions). Missing inputs are listed in the report
    (:attr:`Report.missing`), not raised."""
    codes = question_codes(questions)
    context = ReportContext(config, options)
    report = Report(config.resolve(out), "Research questions " + ", ".join(c.upper() for c in codes), command)
    for code in codes:
        QUESTIONS[code].build(context, report.section(code, QUESTIONS[code].title))
    report.write(provenance_record(config.root))
    return report


def export_zip(code: str, title: str, fill: Callable[[Section], object]) -> bytes:
    """One section filled by ``fill`` in a temporary folder, with its report.md, as a zip
    archive: what a dashboard page hands out for what it shows."""
    with tempfile.TemporaryDirectory(prefix="fer-core-export-") as folder:
        report = Report(folder, title)
        fill(report.section(code, title))
        report.write()
        return report.zip_bytes()
