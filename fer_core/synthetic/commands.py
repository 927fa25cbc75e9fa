"""``fer-core synth ...``: the actions behind the command line, on the project's data folder.

Layout under ``<data.root>/synthetic/``: ``ledger.json`` (credits and grids), ``raw/`` (grid
images), ``processed/{split}/{class}/`` (faces), ``manifest.parquet``, ``report/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fer_core.config import Config
import pandas as pd

from fer_core.errors import ConfigError, DataError
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


def _ledger(args: argparse.Namespace, config: Config) -> CreditLedger:
    return CreditLedger(synthetic_dir(config) / "ledger.json", budget=args.budget)


def _genders(args: argparse.Namespace) -> tuple[str | None, ...] | None:
    """``--gender`` values (``unspecified``: None), or None when none was given."""
    return tuple(parse_gender(g) for g in args.gender) if args.gender else None


def _prompts_of(args: argparse.Namespace, config: Config) -> list:
    return prompt_matrix(tuple(args.emotion or EMOTIONS), _genders(args) or DEFAULT_GENDERS,
                         tuple(args.intensity or [None]), args.template, args.age_range, config.data.grid_layout)


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


def _prompts(args: argparse.Namespace, config: Config) -> int:
    prompts = _prompts_of(args, config)
    if args.json:
        print(json.dumps([p.to_dict() for p in prompts], indent=2))
    else:
        for prompt in prompts:
            spec = prompt.spec
            print(f"{prompt.id}  {spec.emotion}/{spec.gender or 'unstated'}/{spec.intensity or '-'}\n  {prompt.text}")
    return 0


def _generate(args: argparse.Namespace, config: Config) -> int:
    if args.backend == "import":
        raise ConfigError("use 'fer-core synth import FILES ...' for grids made elsewhere")
    backend = create_backend(args.backend, **_read_json(args.backend_config, "--backend-config"))
    ledger = _ledger(args, config)
    jobs = [(p, args.seed_start + k) for p in _prompts_of(args, config) for k in range(args.grids)]
    settled = generate_grids(backend, ledger, jobs)
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


def _single(values: list[str] | None, what: str) -> str | None:
    if values and len(values) > 1:
        raise ConfigError(f"fer-core synth import takes one {what} (per file: use --manifest)")
    return values[0] if values else None


def _import(args: argparse.Namespace, config: Config) -> int:
    if bool(args.files) == bool(args.manifest):
        raise ConfigError("fer-core synth import needs grid image files or --manifest FILE (a CSV or YAML list of "
                          "file, emotion, ... rows), not both")
    defaults = {"emotion": _single(args.emotion, "--emotion"), "gender": _single(args.gender, "--gender"),
                "intensity": _single(args.intensity, "--intensity"), "age_range": args.age_range,
                "prompt": args.prompt}
    if args.manifest:
        items = read_import_manifest(args.manifest, config.data.grid_layout, defaults)
    elif defaults["emotion"] is None:
        raise ConfigError("fer-core synth import needs --emotion (the emotion the grids were asked for), or a "
                          "--manifest giving one per file")
    else:
        spec = PromptSpec(defaults["emotion"], parse_gender(defaults["gender"]), defaults["intensity"],
                          args.age_range, config.data.grid_layout)
        items = [ImportItem(Path(file), spec, args.prompt) for file in args.files]
    ledger = _ledger(args, config)
    settled = import_grids(ledger, items, args.model_name, args.credits, args.template, args.seed_start)
    _check_made(settled, "imported", "no credit was recorded for them")
    batch = settled[0]["batch"]
    print(f"{_committed(settled)} of {len(items)} grids imported as batch {batch} (undo: fer-core synth revert "
          f"{batch}); ledger: {ledger.summary()}")
    return 0


def _revert(args: argparse.Namespace, config: Config) -> int:
    if not args.files:
        raise ConfigError("fer-core synth revert needs one or more batch ids, ledger entry ids or imported files "
                          "(see 'fer-core synth ledger')")
    root = synthetic_dir(config)
    done = revert_imports(CreditLedger(root / "ledger.json"), [str(t) for t in args.files], root / MANIFEST_FILE,
                          root / "processed", root / "report")
    print(f"reverted {done['grids']} imported grid(s) ({', '.join(done['files']) or 'no file'}): "
          f"{done['credits_returned']} credit(s) back, {done['faces_removed']} face(s) and "
          f"{done['manifest_rows_removed']} manifest row(s) removed")
    if done["stale_duplicates"]:
        print(f"{done['stale_duplicates']} face(s) of other grids were rejected as duplicates of these: run "
              f"'fer-core synth extract' to check them again")
    return 0


def _extract(args: argparse.Namespace, config: Config) -> int:
    ledger = CreditLedger(synthetic_dir(config) / "ledger.json")
    grids = committed_grids(ledger)
    if not grids:
        raise DataError(f"no grids in {ledger.path}; run 'fer-core synth generate' or 'synth import' first")
    if args.face_model is not None:
        detector = MediaPipeDetector(args.face_model, config.faces.min_score)
    else:
        detector = FacePipeline.from_config(config, config.data.face_size).detector
        if detector is None:
            raise ConfigError("grid extraction needs a face detector; set faces.detector (not 'none')")
    settings = ExtractSettings(face_size=config.data.face_size, margin=config.faces.margin, align=config.faces.align,
                               layout=config.data.grid_layout, split_seed=config.data.split_seed,
                               test_fraction=args.test_fraction,
                               thresholds=QualityThresholds.from_dict(_read_json(args.thresholds, "--thresholds")))
    root = synthetic_dir(config)
    manifest = extract_faces(grids, detector, root / "processed", root / MANIFEST_FILE, settings)
    for grid in summarize(manifest)["layout_disagreements"]:
        print(f"layout: {grid['grid_file']} reads as {grid['found']}, {grid['requested']} was asked for; kept the "
              f"{grid['kept']} layout")
    print(f"{int(manifest['accepted'].sum())} faces accepted of {len(manifest)} cells -> {root / 'processed'}")
    return 0


def _report(args: argparse.Namespace, config: Config) -> int:
    root = synthetic_dir(config)
    summary = write_report(root / MANIFEST_FILE, root / "processed", root / "report")
    print(json.dumps(summary, indent=2))
    return 0


def _ledger_action(args: argparse.Namespace, config: Config) -> int:
    ledger = _ledger(args, config)
    if args.resolve:
        ledger.resolve(args.resolve, spent=args.spent)
    manifest_path = synthetic_dir(config) / MANIFEST_FILE
    accepted = accepted_per_grid(pd.read_parquet(manifest_path)) if manifest_path.is_file() else None
    plan = ledger.plan_arithmetic(accepted, config.data.grid_layout)
    print(json.dumps({**ledger.summary(), "plan": plan, "pending": ledger.pending()}, indent=2))
    return 0


ACTIONS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "prompts": _prompts, "generate": _generate, "import": _import, "extract": _extract, "report": _report,
    "ledger": _ledger_action, "revert": _revert,
}


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``args.action``."""
    return ACTIONS[args.action](args, config)


__all__ = ["ACTIONS", "run", "synthetic_dir"]
