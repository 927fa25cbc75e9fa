"""A report folder: tables (CSV + LaTeX) and figures (PNG + PDF + SVG), each recorded with the
protocol it was made under and the runs and commands behind it, tied together by
``report.md`` (and ``report.json``, the same as data).

A :class:`Report` holds :class:`Section` s, one per research question (or one per dashboard
page). :meth:`Section.table` and :meth:`Section.figure` write their files at once;
:meth:`Section.lack` records an input that is not there with the command that makes it;
:meth:`Section.source` records a run or stored result with the command that made it.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from fer_core.errors import DataError, InvalidArgument
from fer_core.report.figures import FORMATS, save_figure
from fer_core.report.tables import markdown_table, write_table
from fer_core.runs import utc_now, write_json_atomic

REPORT_FILE = "report.md"
RECORD_FILE = "report.json"


def slug(text: str) -> str:
    """``text`` as part of a file name: letters, digits, ``.``, ``-`` and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-.") or "x"


@dataclass(frozen=True)
class Artifact:
    """A table or figure written into the report folder: its ``files`` (names in the folder),
    what it shows (``title``, ``caption``) and how it was made (``protocol``)."""

    kind: str
    stem: str
    title: str
    caption: str
    protocol: str
    files: tuple[str, ...]
    markdown: str = ""


@dataclass(frozen=True)
class Missing:
    """An input a section needed and did not find, and the ``command`` that makes it."""

    what: str
    command: str


@dataclass
class Section:
    """One research question's (or one page's) part of a report."""

    code: str
    title: str
    folder: Path
    artifacts: list[Artifact] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Each run or stored result the section read, and the command that made it.
    sources: dict[str, str] = field(default_factory=dict)

    def _stem(self, name: str, kind: str) -> str:
        """``<code>-<name>`` as a file stem, numbered when the section has a ``kind`` of it already."""
        stem = candidate = slug(f"{self.code}-{name}")
        taken = {artifact.stem for artifact in self.artifacts if artifact.kind == kind}
        number = 2
        while candidate in taken:
            candidate, number = f"{stem}-{number}", number + 1
        return candidate

    def table(self, frame: pd.DataFrame, name: str, title: str, protocol: str, caption: str = "",
              digits: int = 3) -> Artifact:
        """Write ``frame`` as ``<code>-<name>.csv`` and ``.tex`` (its LaTeX caption: the title and
        the protocol) and record it."""
        stem = self._stem(name, "table")
        paths = write_table(frame, self.folder, stem, f"{title}. {protocol}", digits)
        artifact = Artifact("table", stem, title, caption, protocol, tuple(p.name for p in paths.values()),
                            markdown_table(frame, digits))
        self.artifacts.append(artifact)
        return artifact

    def figure(self, figure: Figure, name: str, title: str, protocol: str, caption: str = "") -> Artifact:
        """Save ``figure`` as ``<code>-<name>.png``, ``.pdf`` and ``.svg`` with ``protocol`` printed
        beneath it, and record it."""
        stem = self._stem(name, "figure")
        paths = save_figure(figure, self.folder, stem, protocol)
        artifact = Artifact("figure", stem, title, caption, protocol, tuple(p.name for p in paths.values()))
        self.artifacts.append(artifact)
        return artifact

    def lack(self, what: str, command: str) -> None:
        """Record an input that is missing and the command that makes it."""
        self.missing.append(Missing(what, command))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def source(self, name: str, command: str) -> None:
        """Record a run (by id) or stored result this section read, and the command that made it."""
        self.sources.setdefault(name, command)


def _clear_folder(folder: Path) -> None:
    """Make ``folder`` ready for a report: new, empty, or holding an earlier report, whose files
    (those its report.json lists, and nothing else) are removed; any other folder is refused."""
    record = folder / RECORD_FILE
    if record.is_file():
        try:
            previous = json.loads(record.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{record} is not a report record ({exc}); give another output folder") from None
        names = [name for section in previous.get("sections", []) for artifact in section.get("artifacts", [])
                 for name in artifact.get("files", [])]
        for name in [*names, REPORT_FILE, RECORD_FILE]:
            (folder / Path(name).name).unlink(missing_ok=True)  # a name only: never a path out of the folder
    elif folder.is_dir() and any(folder.iterdir()):
        raise InvalidArgument(f"{folder} holds other files: write the report into a new or empty folder (or into "
                              "one an earlier report wrote, which is replaced)")
    folder.mkdir(parents=True, exist_ok=True)


class Report:
    """Sections written into one folder, then :meth:`write` (report.md and report.json). The
    folder must be new, empty, or an earlier report's (which is replaced)."""

    def __init__(self, folder: Path | str, title: str, command: str = "") -> None:
        self.folder = Path(folder)
        self.title = title
        self.command = command
        self.sections: list[Section] = []
        _clear_folder(self.folder)

    def section(self, code: str, title: str) -> Section:
        """A new section whose files go into this report's folder."""
        section = Section(code, title, self.folder)
        self.sections.append(section)
        return section

    @property
    def missing(self) -> list[tuple[str, Missing]]:
        """Every missing input, with the code of the section that needed it."""
        return [(section.code, item) for section in self.sections for item in section.missing]

    def files(self) -> list[Path]:
        """Every file written so far, report.md and report.json included once written."""
        names = [name for section in self.sections for artifact in section.artifacts for name in artifact.files]
        names += [name for name in (REPORT_FILE, RECORD_FILE) if (self.folder / name).is_file()]
        return [self.folder / name for name in names]

    def markdown(self, provenance: dict[str, Any] | None = None) -> str:
        """report.md: how it was made, what is missing, then each section's figures and tables
        with their protocol and files, and the runs and commands behind them."""
        lines = [f"# {self.title}", ""]
        if self.command:
            lines += [f"Made by `{self.command}` on {utc_now()}."]
        if provenance:
            git = provenance.get("git", {})
            commit = str(git.get("commit", "?"))[:12] + (" (with uncommitted changes)" if git.get("dirty") else "")
            versions = ", ".join(f"{k} {v}" for k, v in provenance.get("versions", {}).items())
            lines += [f"Code at commit {commit}; {versions}."]
        counts = {kind: sum(a.kind == kind for s in self.sections for a in s.artifacts) for kind in ("figure", "table")}
        lines += [f"{counts['figure']} figures (PNG, PDF, SVG) and {counts['table']} tables (CSV, LaTeX booktabs: "
                  "`\\usepackage{booktabs}`, then `\\input{<file>.tex}`).", ""]
        if self.missing:
            lines += ["## Missing inputs", "", "What was not found, and the command that makes it (then run this "
                      "report again):", ""]
            lines += [f"- **{code.upper()}**: {item.what}  \n  `{item.command}`" for code, item in self.missing]
            lines.append("")
        for section in self.sections:
            lines += [f"## {section.code.upper()}. {section.title}", ""]
            lines += [f"> {note}  " for note in section.notes] + ([""] if section.notes else [])
            if not section.artifacts:
                lines += ["Nothing to show yet: see the missing inputs above.", ""]
            for artifact in section.artifacts:
                lines += [f"### {artifact.title}", ""]
                if artifact.kind == "figure":
                    lines += [f"![{artifact.title}]({artifact.stem}.png)", ""]
                else:
                    lines += [artifact.markdown]
                lines += [f"*Protocol:* {artifact.protocol}  "]
                if artifact.caption:
                    lines += [f"{artifact.caption}  "]
                lines += ["Files: " + " · ".join(f"[{Path(name).suffix[1:].upper()}]({name})"
                                                for name in artifact.files), ""]
            if section.sources:
                lines += ["**Made from** (each run or stored result, and the command that made it):", "",
                          "| run or result | command |", "| --- | --- |"]
                lines += [f"| `{name}` | `{command}` |" for name, command in section.sources.items()]
                lines.append("")
        return "\n".join(lines)

    def record(self, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
        """report.json: the same as data."""
        return {"kind": "report", "title": self.title, "command": self.command, "created": utc_now(),
                "formats": {"figure": list(FORMATS), "table": ["csv", "tex"]},
                "sections": [{"code": s.code, "title": s.title, "artifacts": [asdict(a) for a in s.artifacts],
                              "missing": [asdict(m) for m in s.missing], "notes": s.notes, "sources": s.sources}
                             for s in self.sections],
                "provenance": provenance}

    def write(self, provenance: dict[str, Any] | None = None) -> Path:
        """Write report.md and report.json into the folder; returns report.md's path."""
        path = self.folder / REPORT_FILE
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(self.markdown(provenance), encoding="utf-8")
        temporary.replace(path)
        write_json_atomic(self.folder / RECORD_FILE, self.record(provenance))
        return path

    def zip_bytes(self) -> bytes:
        """Every file of the report in one zip archive (what the dashboard's downloads hand out)."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in self.files():
                archive.write(path, path.name)
        return buffer.getvalue()
