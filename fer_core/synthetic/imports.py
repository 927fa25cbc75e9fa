"""Grids made elsewhere: import a batch (one emotion per file, from an import manifest), and
revert an import (its grid files, faces, manifest rows and ledger entries).

An import manifest is a CSV file with a header row, or a YAML file holding a list of mappings
(or ``{grids: [...]}``), one grid per row with the fields of :data:`IMPORT_FIELDS`::

    file,emotion,gender,intensity,prompt
    grids/fear_01.png,fear,women,extreme,
    grids/happy_01.png,Happiness,mixed,,"A photo grid of a 6x6 ..."

``file`` and ``emotion`` are required; relative files are read from the manifest's folder; an
empty field takes the command's value (``--gender``, ``--intensity``, ...).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fer_core.errors import DataError, FerCoreError
from fer_core.labels import parse_emotion
from fer_core.runs import contained_path, write_parquet_atomic
from fer_core.synthetic.backends import create_backend, generate_grids
from fer_core.synthetic.ledger import CreditLedger, revertible
from fer_core.synthetic.prompts import PromptSpec, build_prompt, custom_prompt, parse_gender
from fer_core.synthetic.report import SHEET_INDEX, SHEET_STEM, write_report

#: The fields of an import manifest row (``file`` and ``emotion`` required).
IMPORT_FIELDS = ("file", "emotion", "gender", "intensity", "age_range", "prompt", "seed")


@dataclass(frozen=True)
class ImportItem:
    """One grid image to import: the file, what its prompt asked for, the exact prompt text if
    known (else the template renders one) and its seed if known."""

    file: Path
    spec: PromptSpec
    prompt: str | None = None
    seed: int | None = None


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _item(row: Mapping[str, Any], folder: Path, defaults: Mapping[str, Any], layout: int) -> ImportItem:
    """One manifest row (empty fields from ``defaults``) as an :class:`ImportItem`."""
    values = {key: defaults.get(key) if _blank(row.get(key)) else row[key] for key in IMPORT_FIELDS}
    if _blank(values["file"]) or _blank(values["emotion"]):
        raise DataError("file and emotion are required")
    file = Path(str(values["file"]).strip()).expanduser()
    file = file if file.is_absolute() else folder / file
    if not file.is_file():
        raise DataError(f"no image file {file}")
    seed = values["seed"]
    if seed is not None and not str(seed).strip().lstrip("-").isdigit():
        raise DataError(f"seed: expected an integer, got {seed!r}")
    spec = PromptSpec(parse_emotion(str(values["emotion"])),
                      parse_gender(None if values["gender"] is None else str(values["gender"])),
                      None if _blank(values["intensity"]) else str(values["intensity"]).strip().lower(),
                      None if _blank(values["age_range"]) else str(values["age_range"]).strip(), layout)
    return ImportItem(file, spec, None if _blank(values["prompt"]) else str(values["prompt"]),
                      None if seed is None else int(seed))


def read_import_manifest(path: str | Path, layout: int = 6,
                         defaults: Mapping[str, Any] | None = None) -> list[ImportItem]:
    """The grids an import manifest lists (CSV or YAML, see the module's doc), every row checked
    first: one :class:`DataError` names each bad row, and nothing is imported."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".yaml", ".yml"):
        raise DataError(f"import manifest {path}: expected a .csv, .yaml or .yml file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"import manifest {path}: cannot read it ({exc})") from None
    if path.suffix.lower() == ".csv":
        rows: Any = list(csv.DictReader(text.splitlines()))
    else:
        try:
            rows = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DataError(f"import manifest {path}: invalid YAML ({exc})") from None
        rows = rows.get("grids") if isinstance(rows, dict) else rows
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"import manifest {path}: expected one or more rows with the fields {list(IMPORT_FIELDS)}")
    unknown = sorted(set().union(*rows) - set(IMPORT_FIELDS))
    if unknown:
        raise DataError(f"import manifest {path}: unknown fields {unknown}; expected some of {list(IMPORT_FIELDS)}")
    items, problems = [], []
    for number, row in enumerate(rows, start=1):
        try:
            items.append(_item(row, path.parent, defaults or {}, layout))
        except FerCoreError as exc:
            problems.append(f"row {number}: {exc}")
    if problems:
        raise DataError(f"import manifest {path}: " + "; ".join(problems) + "; nothing was imported")
    return items


def import_grids(ledger: CreditLedger, items: Sequence[ImportItem], model_name: str = "imported",
                 credits_per_grid: int = 1, template: str = "current", seed_start: int = 0,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Record ``items`` in ``ledger`` as one batch (each under its exact prompt, or the one
    ``template`` renders for its fields); an image imported before is refused with nothing
    recorded. Returns the settled ledger entries."""
    if not items:
        raise DataError("nothing to import: no grid image given")
    prompts = [custom_prompt(item.prompt, item.spec) if item.prompt else build_prompt(item.spec, template)
               for item in items]
    backend = create_backend("import", files=[item.file for item in items], model_name=model_name,
                             credits_per_grid=credits_per_grid)
    jobs = [(prompt, seed_start + k if item.seed is None else item.seed)
            for k, (prompt, item) in enumerate(zip(prompts, items, strict=True))]
    return generate_grids(backend, ledger, jobs, progress=progress)


def _matching(entries: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    """Entries whose id or batch is ``target``, or whose image is the file ``target``."""
    found = [e for e in entries if target in (e["id"], e.get("batch"))]
    if not found and Path(target).is_file():
        digest = hashlib.sha256(Path(target).read_bytes()).hexdigest()
        found = [e for e in entries if e.get("sha256") == digest]
    return found


def _remove_files(files: Iterable[Path], stop: Path) -> None:
    """Delete ``files`` and the folders they leave empty, up to ``stop``."""
    for file in files:
        file.unlink(missing_ok=True)
        folder = file.parent
        while folder != stop and folder.is_relative_to(stop) and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def revert_imports(ledger: CreditLedger, targets: Sequence[str], manifest_path: str | Path,
                   faces_dir: str | Path, report_dir: str | Path | None = None) -> dict[str, Any]:
    """Undo imports: each target is a ledger entry id, a batch id (every grid of one import
    command) or an image file that was imported. Their extracted faces and manifest rows, grid
    files and ledger entries are removed (credits come back) and an existing report is written
    again. Generated grids are refused (their credits were spent with the provider).

    Safe to run again after an interruption: the ledger entries go last. Returns what was removed,
    with ``stale_duplicates``: faces of other grids rejected as duplicates of the removed ones
    (``fer-core synth extract`` checks them again).
    """
    manifest_path, faces_dir = Path(manifest_path), Path(faces_dir)
    entries = ledger.entries()
    chosen: dict[str, dict[str, Any]] = {}
    for target in targets:
        found = _matching(entries, str(target))
        if not found:
            batches = sorted({e.get("batch") or e["id"] for e in entries if revertible(e)})
            raise DataError(f"nothing in {ledger.path} matches {str(target)!r} (an entry id, a batch id or an "
                            f"imported file); imported batches: {batches or 'none'}")
        chosen.update((e["id"], e) for e in found)
    refused = [f"{e['id']} ({e.get('backend')}, {e['status']})" for e in chosen.values() if not revertible(e)]
    if refused:
        raise DataError(f"only settled imports can be reverted, not {refused}: a generated grid's credit was spent "
                        f"with the provider; nothing was changed")
    grid_files = {e["file"] for e in chosen.values() if e.get("file")}
    faces, rows_removed, stale = [], 0, 0
    if manifest_path.is_file():
        manifest = pd.read_parquet(manifest_path)
        gone = (manifest["grid_id"].isin(list(chosen)) if "grid_id" in manifest
                else manifest["grid_file"].isin(grid_files))
        faces = [contained_path(faces_dir, f, "manifest face_file")
                 for f in manifest.loc[gone & manifest["accepted"].astype(bool), "face_file"]]
        reasons = manifest.loc[~gone, "reject_reason"].dropna().astype(str)
        stale = int(sum(reasons.str.startswith(f"duplicate of {file} ").sum() for file in grid_files))
        rows_removed = int(gone.sum())
        if gone.all():
            manifest_path.unlink()
        elif rows_removed:
            write_parquet_atomic(manifest.loc[~gone].reset_index(drop=True), manifest_path)
    _remove_files(faces, faces_dir)
    folder = ledger.path.parent
    _remove_files([contained_path(folder, f, f"{ledger.path} file") for f in grid_files], folder)
    ledger.remove(chosen)
    report_dir = Path(report_dir) if report_dir is not None else None
    if report_dir is not None and (report_dir / "report.json").is_file():
        if manifest_path.is_file():
            write_report(manifest_path, faces_dir, report_dir, folder)
        else:  # nothing left to report on
            _remove_files([report_dir / "report.json", report_dir / SHEET_INDEX,
                           *report_dir.glob(f"{SHEET_STEM}*.png")], report_dir)
    return {"entries": sorted(chosen), "batches": sorted({e.get("batch") or e["id"] for e in chosen.values()}),
            "grids": len(chosen), "credits_returned": sum(e["credits"] for e in chosen.values()),
            "files": sorted(grid_files), "faces_removed": len(faces), "manifest_rows_removed": rows_removed,
            "stale_duplicates": stale}
