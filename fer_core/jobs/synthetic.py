"""``fer-core synth ...``: the jobs behind the command line, on the project's data folder, with
typed parameters (the CLI converts its arguments; :data:`ACTIONS` names the jobs).

Layout under ``<data.root>/synthetic/``: ``ledger.json`` (credits and grids), ``raw/`` (grid
images), ``processed/{split}/{class}/`` (faces), ``manifest.parquet``, ``report/``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fer_core.config import Config

from fer_core.errors import ConfigError, DataError, InvalidArgument
from fer_core.faces.detectors import MediaPipeDetector
from fer_core.faces.pipeline import FacePipeline
from fer_core.labels import EMOTIONS
from fer_core.synthetic.backends import GenerationError, create_backend, generate_grids
from fer_core.synthetic.extract import (
    MANIFEST_FILE,
    ExtractSettings,
    accepted_per_grid,
    committed_grids,
    extract_faces,
)
from fer_core.synthetic.imports import ImportItem, import_grids, read_import_manifest, revert_imports
from fer_core.synthetic.ledger import COMMITTED, CreditLedger
from fer_core.synthetic.prompts import DEFAULT_GENDERS, PromptSpec, parse_gender, prompt_matrix
from fer_core.synthetic.quality import QualityThresholds
from fer_core.synthetic.report import summarize, write_report


def synthetic_dir(config: Config) -> Path:
    return config.resolve(config.data.root) / "synthetic"


def _ledger(config: Config, budget: int | None = None) -> CreditLedger:
    return CreditLedger(synthetic_dir(config) / "ledger.json", budget=budget)


@dataclass(frozen=True)
class PromptRequest:
    """Which prompts: ``emotions`` (empty: all 8), ``genders`` (``women``, ``men``, ``mixed``,
    ``unspecified``; empty: women and men), ``intensities`` (empty: unstated), the ``template``
    and the ``age_range`` (None: diverse)."""

    emotions: tuple[str, ...] = ()
    genders: tuple[str, ...] = ()
    intensities: tuple[str, ...] = ()
    template: str = "current"
    age_range: str | None = None


def _prompts_of(config: Config, asked: PromptRequest) -> list:
    genders = tuple(parse_gender(g) for g in asked.genders) or DEFAULT_GENDERS
    return prompt_matrix(asked.emotions or tuple(EMOTIONS), genders, asked.intensities or (None,), asked.template,
                         asked.age_range, config.data.grid_layout)


def _read_json(path: Path | None, what: str) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} {path}: expected a readable JSON object file ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} {path}: expected a JSON object")
    return value


def prompts(config: Config, asked: PromptRequest, as_json: bool = False) -> int:
    """Print the prompts ``asked`` for (as JSON with ``as_json``)."""
    prompts = _prompts_of(config, asked)
    if as_json:
        print(json.dumps([p.to_dict() for p in prompts], indent=2))
    else:
        for prompt in prompts:
            spec = prompt.spec
            print(f"{prompt.id}  {spec.emotion}/{spec.gender or 'unstated'}/{spec.intensity or '-'}\n  {prompt.text}")
    return 0


def generate(config: Config, asked: PromptRequest, backend: str = "http", backend_config: Path | None = None,
             grids: int = 1, seed_start: int = 0, budget: int | None = None) -> int:
    """Make ``grids`` grids per prompt with the generator ``backend`` (its arguments from the JSON
    file ``backend_config``), seeds from ``seed_start``, a credit each from the ledger (``budget``
    sets its budget)."""
    if backend == "import":
        raise InvalidArgument("use 'fer-core synth import FILES ...' for grids made elsewhere")
    generator = create_backend(backend, **_read_json(backend_config, "--backend-config"))
    ledger = _ledger(config, budget)
    jobs = [(p, seed_start + k) for p in _prompts_of(config, asked) for k in range(grids)]
    settled = generate_grids(generator, ledger, jobs)
    _check_made(settled, "made", "no credit was spent on them")
    print(f"{_committed(settled)} of {len(jobs)} grids made; ledger: {ledger.summary()}")
    return 0


def _committed(settled: list[dict[str, Any]]) -> int:
    return sum(e["status"] == COMMITTED for e in settled)


def _check_made(settled: list[dict[str, Any]], verb: str, released: str) -> None:
    """A :class:`GenerationError` (exit 2) when no grid was made; a warning when some failed."""
    failed = [e for e in settled if e["status"] != COMMITTED]
    reasons = "; ".join(sorted({str(e.get("note")) for e in failed}))
    if settled and len(failed) == len(settled):
        raise GenerationError(f"0 of {len(settled)} grids {verb} ({released}): {reasons}")
    if failed:
        print(f"fer-core: warning: {len(failed)} of {len(settled)} grids not {verb} ({released}): {reasons}",
              file=sys.stderr)


@dataclass(frozen=True)
class ImportRequest:
    """Grids made elsewhere: image ``files`` (all of one ``emotion``, ``gender``, ``intensity``,
    ``age_range`` and ``prompt``) or a ``manifest`` (CSV or YAML, one row per file, these as
    defaults); each cost ``credits`` on ``model_name`` with the prompt ``template``, seeds from
    ``seed_start``."""

    files: tuple[Path, ...] = ()
    manifest: Path | None = None
    emotion: str | None = None
    gender: str | None = None
    intensity: str | None = None
    age_range: str | None = None
    prompt: str | None = None
    model_name: str = "imported"
    credits: int = 1
    template: str = "current"
    seed_start: int = 0


def import_(config: Config, asked: ImportRequest, budget: int | None = None) -> int:
    """Register the grids ``asked`` for in the ledger (``budget`` sets its budget)."""
    if bool(asked.files) == bool(asked.manifest):
        raise InvalidArgument("fer-core synth import needs grid image files or --manifest FILE (a CSV or YAML list "
                              "of file, emotion, ... rows), not both")
    defaults = {"emotion": asked.emotion, "gender": asked.gender, "intensity": asked.intensity,
                "age_range": asked.age_range, "prompt": asked.prompt}
    if asked.manifest:
        items = read_import_manifest(asked.manifest, config.data.grid_layout, defaults)
    elif defaults["emotion"] is None:
        raise InvalidArgument("fer-core synth import needs --emotion (the emotion the grids were asked for), or a "
                              "--manifest giving one per file")
    else:
        spec = PromptSpec(defaults["emotion"], parse_gender(defaults["gender"]), defaults["intensity"],
                          asked.age_range, config.data.grid_layout)
        items = [ImportItem(Path(file), spec, asked.prompt) for file in asked.files]
    ledger = _ledger(config, budget)
    settled = import_grids(ledger, items, asked.model_name, asked.credits, asked.template, asked.seed_start)
    _check_made(settled, "imported", "no credit was recorded for them")
    batch = settled[0]["batch"]
    print(f"{_committed(settled)} of {len(items)} grids imported as batch {batch} (undo: fer-core synth revert "
          f"{batch}); ledger: {ledger.summary()}")
    return 0


def revert(config: Config, targets: Sequence[str]) -> int:
    """Undo imports, each target a batch id, a ledger entry id or an imported file."""
    if not targets:
        raise InvalidArgument("fer-core synth revert needs one or more batch ids, ledger entry ids or imported "
                              "files (see 'fer-core synth ledger')")
    root = synthetic_dir(config)
    done = revert_imports(CreditLedger(root / "ledger.json"), [str(t) for t in targets], root / MANIFEST_FILE,
                          root / "processed", root / "report")
    print(f"reverted {done['grids']} imported grid(s) ({', '.join(done['files']) or 'no file'}): "
          f"{done['credits_returned']} credit(s) back, {done['faces_removed']} face(s) and "
          f"{done['manifest_rows_removed']} manifest row(s) removed")
    if done["stale_duplicates"]:
        print(f"{done['stale_duplicates']} face(s) of other grids were rejected as duplicates of these: run "
              f"'fer-core synth extract' to check them again")
    return 0


def extract(config: Config, face_model: Path | None = None, thresholds: Path | None = None,
            test_fraction: float = 0.2) -> int:
    """Cut, check and save the faces of every committed grid (detector: the BlazeFace file
    ``face_model``, else the faces config; quality thresholds from the JSON file ``thresholds``;
    ``test_fraction`` of the grids in the test split)."""
    ledger = CreditLedger(synthetic_dir(config) / "ledger.json")
    grids = committed_grids(ledger)
    if not grids:
        raise DataError(f"no grids in {ledger.path}; run 'fer-core synth generate' or 'synth import' first")
    if face_model is not None:
        detector = MediaPipeDetector(face_model, config.faces.min_score)
    else:
        detector = FacePipeline.from_config(config, config.data.face_size).detector
        if detector is None:
            raise ConfigError("grid extraction needs a face detector; set faces.detector (not 'none')")
    settings = ExtractSettings(face_size=config.data.face_size, margin=config.faces.margin, align=config.faces.align,
                               layout=config.data.grid_layout, split_seed=config.data.split_seed,
                               test_fraction=test_fraction,
                               thresholds=QualityThresholds.from_dict(_read_json(thresholds, "--thresholds")))
    root = synthetic_dir(config)
    manifest = extract_faces(grids, detector, root / "processed", root / MANIFEST_FILE, settings)
    for grid in summarize(manifest)["layout_disagreements"]:
        print(f"layout: {grid['grid_file']} reads as {grid['found']}, {grid['requested']} was asked for; kept the "
              f"{grid['kept']} layout")
    print(f"{int(manifest['accepted'].sum())} faces accepted of {len(manifest)} cells -> {root / 'processed'}")
    return 0


def report(config: Config) -> int:
    """Write and print the counts and contact sheets of every cell."""
    root = synthetic_dir(config)
    summary = write_report(root / MANIFEST_FILE, root / "processed", root / "report")
    print(json.dumps(summary, indent=2))
    return 0


def ledger(config: Config, budget: int | None = None, resolve: str | None = None, spent: bool = False) -> int:
    """Print the credits, the plan's faces-per-credit arithmetic and pending reservations, after
    settling the interrupted reservation ``resolve`` (``spent``: the credit was spent, else
    released)."""
    ledger = _ledger(config, budget)
    if resolve:
        ledger.resolve(resolve, spent=spent)
    manifest_path = synthetic_dir(config) / MANIFEST_FILE
    accepted = accepted_per_grid(pd.read_parquet(manifest_path)) if manifest_path.is_file() else None
    plan = ledger.plan_arithmetic(accepted, config.data.grid_layout)
    print(json.dumps({**ledger.summary(), "plan": plan, "pending": ledger.pending()}, indent=2))
    return 0


__all__ = ["ImportRequest", "PromptRequest", "extract", "generate", "import_", "ledger", "prompts", "report",
           "revert", "synthetic_dir"]
