"""``fer-core synth ...``: the actions behind the command line, on the project's data folder.

Layout under ``<data.root>/synthetic/``: ``ledger.json`` (credits and grids), ``raw/`` (grid
images), ``processed/{split}/{class}/`` (faces), ``manifest.parquet``, ``report/``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fer_core.config import Config
from fer_core.errors import ConfigError, DataError
from fer_core.faces.detectors import MediaPipeDetector
from fer_core.faces.pipeline import FacePipeline
from fer_core.labels import EMOTIONS
from fer_core.synthetic.backends import create_backend, generate_grids
from fer_core.synthetic.extract import MANIFEST_FILE, ExtractSettings, committed_grids, extract_faces
from fer_core.synthetic.ledger import CreditLedger
from fer_core.synthetic.prompts import GENDERS, PromptSpec, build_prompt, custom_prompt, prompt_matrix
from fer_core.synthetic.quality import QualityThresholds
from fer_core.synthetic.report import write_report


def synthetic_dir(config: Config) -> Path:
    return config.resolve(config.data.root) / "synthetic"


def _ledger(args: argparse.Namespace, config: Config) -> CreditLedger:
    return CreditLedger(synthetic_dir(config) / "ledger.json", budget=args.budget)


def _prompts_of(args: argparse.Namespace, config: Config) -> list:
    return prompt_matrix(tuple(args.emotion or EMOTIONS), tuple(args.gender or GENDERS),
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
            print(f"{prompt.id}  {spec.emotion}/{spec.gender}/{spec.intensity or '-'}\n  {prompt.text}")
    return 0


def _generate(args: argparse.Namespace, config: Config) -> int:
    if args.backend == "import":
        raise ConfigError("use 'fer-core synth import FILES ...' for grids made elsewhere")
    backend = create_backend(args.backend, **_read_json(args.backend_config, "--backend-config"))
    ledger = _ledger(args, config)
    jobs = [(p, args.seed_start + k) for p in _prompts_of(args, config) for k in range(args.grids)]
    settled = generate_grids(backend, ledger, jobs)
    print(f"{sum(e['status'] == 'committed' for e in settled)} of {len(jobs)} grids made; ledger: {ledger.summary()}")
    return 0


def _import(args: argparse.Namespace, config: Config) -> int:
    if not args.files:
        raise ConfigError("fer-core synth import needs one or more grid image files")
    if not args.emotion or len(args.emotion) != 1:
        raise ConfigError("fer-core synth import needs exactly one --emotion (the emotion the grids were asked for)")
    spec = PromptSpec(args.emotion[0], (args.gender or ["women"])[0], (args.intensity or [None])[0], args.age_range,
                      config.data.grid_layout)
    prompt = custom_prompt(args.prompt, spec) if args.prompt else build_prompt(spec, args.template)
    backend = create_backend("import", files=args.files, model_name=args.model_name, credits_per_grid=args.credits)
    ledger = _ledger(args, config)
    settled = generate_grids(backend, ledger, [(prompt, args.seed_start + k) for k in range(len(args.files))])
    print(f"{sum(e['status'] == 'committed' for e in settled)} grids imported; ledger: {ledger.summary()}")
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
    print(json.dumps({**ledger.summary(), "pending": ledger.pending()}, indent=2))
    return 0


ACTIONS: dict[str, Callable[[argparse.Namespace, Config], int]] = {
    "prompts": _prompts, "generate": _generate, "import": _import, "extract": _extract, "report": _report,
    "ledger": _ledger_action,
}


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``args.action``."""
    return ACTIONS[args.action](args, config)


__all__ = ["ACTIONS", "run", "synthetic_dir"]
