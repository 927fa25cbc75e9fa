"""Tables the dashboard shows, shaped from run directories, the synthetic manifest and the
credit ledger: joins and selections only, no model is run here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fer_core.config import Config
from fer_core.cross_domain import DATASET_DOMAINS
from fer_core.data import FaceDataset
from fer_core.errors import DataError, InvalidArgument, ModelLoadError
from fer_core.faces import Face, FacePipeline
from fer_core.images import load_rgb
from fer_core.inference import PROB_COLUMNS, find_face
from fer_core.labels import EMOTIONS
from fer_core.runs import Run
from fer_core.scoring import scoring_summary
from fer_core.training.trainer import HISTORY
from fer_core.validation import StrOptions, validate_params
from fer_core.weights import SHIPPED_WEIGHTS, resolve_weights


def _dataset_label(run: Run) -> str:
    data = run.info.get("dataset") or {}
    return data.get("label") or data.get("name") or ""


def dataset_spec(run: Run) -> str:
    """The spec that opens the whole dataset an evaluation's faces were drawn from
    (``ferplus:test`` for a run on ``ferplus:test[stratified 150, seed 0]``): its sample keys are
    that dataset's keys. Runs recorded before ``spec`` was kept give their label less the sample."""
    data = run.info.get("dataset") or {}
    return data.get("spec") or _dataset_label(run).split("[", 1)[0]


def evaluation_sample(run: Run) -> tuple[str, bool]:
    """The faces an evaluation scored, in words (``"150 of 3,573 (stratified 150, seed 0)"``,
    ``"all 476"``), and whether they are only part of its dataset (``--limit`` / ``--per-class``)."""
    data = run.info.get("dataset") or {}
    size, faces = data.get("size"), data.get("faces", data.get("size"))
    how = _dataset_label(run).partition("[")[2].rstrip("]")
    limited = bool(how) or (size is not None and faces is not None and faces < size)
    if not limited:
        return (f"all {size:,}" if size is not None else "all"), False
    counted = f"{faces:,} of {size:,}" if size is not None and faces is not None else "part"
    return counted + (f" ({how})" if how else ""), True


def detector_name(run: Run) -> str:
    """The face detector an evaluation found faces with (``mediapipe``, ``none``); ``?`` when
    the run did not record it."""
    detector = (run.info.get("faces") or {}).get("detector")
    return str(detector).split(":", 1)[0] if detector else "?"


def runs_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: id, kind, when, model, data and (when finished) the headline scores; an
    evaluation also says which faces it scored (``sample``, ``limited`` when only part of its
    dataset), how (``scoring`` protocol) and with which face ``detector``."""
    rows = []
    for run in runs:
        info = run.info
        row: dict[str, Any] = {"run": run.id, "kind": run.kind, "created": info.get("created", "")[:19]}
        if run.kind == "evaluation":
            sample, limited = evaluation_sample(run)
            row.update(model=info.get("model", {}).get("architecture"), data=_dataset_label(run),
                       domain=info.get("dataset", {}).get("domain"), sample=sample, limited=limited,
                       scoring=scoring_protocol(run), detector=detector_name(run))
            if run.complete:
                row.update(n=run.metrics["n"], accuracy=run.metrics["accuracy"], macro_f1=run.metrics["macro_f1"])
        elif run.kind == "training":
            settings, data = info.get("settings", {}), info.get("data", {})
            row.update(model=settings.get("architecture"), data=(data.get("train") or {}).get("name"),
                       domain=(data.get("train") or {}).get("domain"))
            history = _read_history(run.path)
            if history:
                best = max(history, key=lambda r: r.get("val_accuracy", float("-inf")))
                row.update(epochs=len(history), best_val_accuracy=best.get("val_accuracy"))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table[[c for c in RUN_COLUMNS if c in table] + [c for c in table if c not in RUN_COLUMNS]]


#: The runs table's columns, headline scores first (so a narrow screen cuts the details, not them).
RUN_COLUMNS = ("run", "accuracy", "macro_f1", "best_val_accuracy", "n", "sample", "limited", "data", "domain",
               "scoring", "detector", "model", "kind", "epochs", "created")


def scoring_protocol(run: Run) -> str:
    """The protocol an evaluation was scored under (``model``, ``dataset``, ``seven``); older runs,
    which recorded a sentence, were scored over the dataset's classes."""
    record = run.info.get("scoring")
    return record.get("protocol", "?") if isinstance(record, dict) else "dataset" if record else "?"


def scoring_note(run: Run) -> tuple[str, list[str]]:
    """How an evaluation was scored, in one line to show beside its figures, and its warnings."""
    record = run.info.get("scoring")
    return scoring_summary(record), list(record.get("warnings", [])) if isinstance(record, dict) else []


def _read_history(path: Path) -> list[dict[str, Any]]:
    file = path / HISTORY
    if not file.is_file():
        return []
    try:
        return list(json.loads(file.read_text(encoding="utf-8")).get("history", []))
    except json.JSONDecodeError as exc:
        raise DataError(f"corrupt {file}: {exc}") from None


def training_history(run: Run) -> pd.DataFrame:
    """A training run's per-epoch record (loss, validation accuracy and macro-F1, learning rate);
    empty while its first epoch has not finished."""
    return pd.DataFrame(_read_history(run.path))


@validate_params({"true": [StrOptions(EMOTIONS)], "predicted": [StrOptions(EMOTIONS)]})
def confusion_cell(run: Run, true: str, predicted: str) -> pd.DataFrame:
    """The faces of an evaluation that are ``true`` and predicted ``predicted``, most confident
    first: key, source, the probability of both classes and all eight."""
    table = run.predictions
    cell = table[(table["label"] == EMOTIONS.index(true)) & (table["pred"] == EMOTIONS.index(predicted))
                 & table["error"].isna()].copy()
    cell["p_predicted"] = cell[f"prob_{predicted}"]
    cell["p_true"] = cell[f"prob_{true}"]
    return cell.sort_values("p_predicted", ascending=False)[
        ["key", "source", "p_predicted", "p_true", *PROB_COLUMNS]].reset_index(drop=True)


def per_class_deltas(a: Run, b: Run) -> pd.DataFrame:
    """Precision, recall and F1 of each class in both evaluations and their differences (b - a)."""
    first, second = a.metrics["per_class"], b.metrics["per_class"]
    rows = []
    for emotion in (e for e in first if e in second):
        row: dict[str, Any] = {"emotion": emotion, "support": first[emotion]["support"]}
        for metric in ("precision", "recall", "f1"):
            row[f"{metric}_a"] = first[emotion][metric]
            row[f"{metric}_b"] = second[emotion][metric]
            row[f"{metric}_delta"] = second[emotion][metric] - first[emotion][metric]
        rows.append(row)
    if not rows:
        raise DataError(f"runs {a.id} and {b.id} score no class in common")
    return pd.DataFrame(rows)


def comparable_runs(run: Run, runs: Sequence[Run]) -> list[Run]:
    """The other finished evaluations of the same faces (same data, limit and face count)."""
    def faces(r: Run) -> tuple:
        return _dataset_label(r), r.info.get("dataset", {}).get("limit"), r.metrics["n"]
    return [r for r in runs if r.id != run.id and r.kind == "evaluation" and r.complete and faces(r) == faces(run)]


def model_files(config: Config) -> dict[str, Path]:
    """Loadable weights by a short label: the configured model first, then the files under
    ``weights/`` and every training run's ``best.safetensors``."""
    found: dict[str, Path] = {}
    try:
        configured = resolve_weights(config)
        found[f"configured: {configured.name}"] = configured
    except ModelLoadError:
        configured = None
    for path in sorted(config.resolve(SHIPPED_WEIGHTS.parent).glob("*.safetensors")):
        if path != configured:
            found[f"weights/{path.name}"] = path
    runs_dir = config.resolve(config.paths.runs_dir)
    for path in sorted(runs_dir.glob("*/best.safetensors")) + sorted(runs_dir.glob("*/*/best.safetensors")):
        if path != configured:
            found[str(path.relative_to(runs_dir).parent)] = path
    return found


def rows_for_keys(dataset: FaceDataset, keys: Sequence[str]) -> list[int]:
    """Positions in ``dataset`` of the samples with these ``keys`` (in that order)."""
    position = {dataset[i].key: i for i in range(len(dataset))}
    missing = [k for k in keys if k not in position]
    if missing:
        raise DataError(f"{dataset.name} has no sample(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return [position[k] for k in keys]


def faces_of(dataset: FaceDataset, rows: Sequence[int], pipeline: FacePipeline | None) -> list[Face]:
    """The face the model classifies for each sample at ``rows`` (aligned crop at the pipeline's size;
    the whole image for pre-cropped data or when no face is found)."""
    faces = []
    for row in rows:
        face, _ = find_face(dataset.read(dataset[row]), dataset.pre_cropped, pipeline)
        faces.append(face)
    return faces


def synthetic_state(data_root: Path) -> dict[str, Any]:
    """What the synthetic pipeline left under ``data_root/synthetic``: the ledger, the manifest,
    the report and the contact sheet (paths, None when absent)."""
    root = data_root / "synthetic"
    files = {"ledger": root / "ledger.json", "manifest": root / "manifest.parquet",
             "report": root / "report" / "report.json", "contact_sheet": root / "report" / "contact_sheet.png"}
    return {name: (path if path.is_file() else None) for name, path in files.items()} | {"root": root}


def rejected_cells(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rejected cells of an extraction manifest: grid, row, column and the reason."""
    rejected = manifest[~manifest["accepted"].astype(bool)]
    columns = [c for c in ("grid_file", "emotion", "row", "column", "faces_found", "reject_reason") if c in rejected]
    return rejected[columns].reset_index(drop=True)


def grid_cells(manifest: pd.DataFrame, grid_file: str) -> pd.DataFrame:
    """The manifest rows of one grid (its cells with boxes and verdicts)."""
    cells = manifest[manifest["grid_file"] == grid_file]
    if cells.empty:
        raise DataError(f"no grid {grid_file!r} in the manifest")
    return cells.reset_index(drop=True)


def grid_image(ledger_dir: Path, grid_file: str) -> np.ndarray:
    """A grid's image, as the ledger recorded it (relative to the ledger's folder)."""
    return load_rgb(ledger_dir / grid_file)


#: Registered datasets whose faces are synthetic (the others are real photographs).
SYNTHETIC_DATASETS = tuple(name for name, domain in DATASET_DOMAINS.items() if domain == "synthetic")


def spec_domain(spec: str) -> str:
    """``"synthetic"`` or ``"real"`` for a registered dataset spec (``sd_faces``, ``ferplus:test``)."""
    return "synthetic" if spec.partition(":")[0] in SYNTHETIC_DATASETS else "real"


@validate_params({"emotion": [StrOptions(EMOTIONS)]})
def class_rows(dataset: FaceDataset, emotion: str, count: int) -> np.ndarray:
    """Positions of the first ``count`` faces labelled ``emotion`` in ``dataset``."""
    return np.flatnonzero(dataset.labels == EMOTIONS.index(emotion))[:count]


def per_intensity_accuracy(run: Run, manifest: pd.DataFrame) -> pd.DataFrame:
    """Accuracy of an evaluation of extracted synthetic faces by the intensity their prompt asked
    for (the manifest's ``intensity``; ``unstated`` when none), overall and per emotion:
    ``emotion`` (``all`` for every class), ``intensity``, ``accuracy``, ``support``."""
    if "intensity" not in manifest or "face_file" not in manifest:
        raise DataError("the synthetic manifest has no intensity or face_file column")
    table = run.predictions
    table = table[(table["label"] >= 0) & table["error"].isna()]
    faces = manifest.dropna(subset=["face_file"])[["face_file", "intensity"]]
    joined = table.merge(faces, left_on="key", right_on="face_file", how="inner")
    if joined.empty:
        raise DataError(f"no face of evaluation {run.id} is in the synthetic manifest")
    joined["intensity"] = joined["intensity"].fillna("unstated")
    joined["correct"] = joined["pred"] == joined["label"]
    joined["emotion"] = [EMOTIONS[label] for label in joined["label"]]
    overall = joined.groupby("intensity")["correct"].agg(["mean", "size"]).reset_index().assign(emotion="all")
    by_class = joined.groupby(["emotion", "intensity"])["correct"].agg(["mean", "size"]).reset_index()
    return pd.concat([overall, by_class], ignore_index=True).rename(columns={"mean": "accuracy", "size": "support"})[
        ["emotion", "intensity", "accuracy", "support"]]


def map_keypoints(keypoints: np.ndarray, map_size: int, pre_cropped: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 6, 2)`` keypoints (fractions of the crop, NaN where none was found) in the pixels of
    ``map_size`` maps, with the typical face's keypoints standing in where none was found
    (:data:`~fer_core.explain.regions.PRECROPPED_TEMPLATE` for pre-cropped data, else
    :data:`~fer_core.explain.regions.ALIGNED_TEMPLATE`), and which faces had their own."""
    from fer_core.explain.analysis.regions import ALIGNED_TEMPLATE, PRECROPPED_TEMPLATE
    points = np.asarray(keypoints, dtype=np.float64).reshape(-1, 6, 2)
    found = np.isfinite(points).all(axis=(1, 2))
    template = PRECROPPED_TEMPLATE if pre_cropped else ALIGNED_TEMPLATE
    return np.where(found[:, None, None], points, template[None]) * map_size, found


def stored_gap_report(folders: Sequence[Path], fingerprint: str, real: str, synthetic: str,
                      limit: int | None) -> dict[str, Any] | None:
    """The newest domain-gap report ``fer-core gap`` stored for this model and pair of datasets
    in any of ``folders`` (:func:`fer_core.precompute.gap_report_folders`) with the same face limit, or None."""
    found = []
    for file in (file for folder in folders for file in folder.glob(f"{fingerprint}-*.json")):
        try:
            report = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if (report.get("real", {}).get("dataset"), report.get("synthetic", {}).get("dataset"),
                report.get("limit")) == (real, synthetic, limit):
            found.append({**report, "path": str(file)})
    return max(found, key=lambda r: r.get("created", ""), default=None)


def thumbnail_uri(image: np.ndarray, side: int = 48, quality: int = 80) -> str:
    """A small JPEG of an RGB uint8 face as a ``data:`` URI (``side`` pixels a side), to carry
    in a chart's hover data."""
    import base64

    import cv2
    rgb = np.asarray(image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DataError(f"expected an (H, W, 3) uint8 RGB face, got {rgb.shape} {rgb.dtype}")
    small = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DataError("the face could not be encoded as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


#: The correctness filters of :func:`filter_faces`.
CORRECTNESS = ("all", "correct", "wrong")


@validate_params({"correctness": [StrOptions(CORRECTNESS)]})
def filter_faces(table: pd.DataFrame, correctness: str = "all",
                 confidence: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Positions in ``table`` (an embeddings table: ``label``, ``pred``, ``confidence``) of the
    faces whose prediction is right (``correctness="correct"``; unlabelled faces are neither),
    wrong, or either (``"all"``), with a confidence within ``confidence`` (inclusive)."""
    low, high = confidence
    if not 0 <= low <= high <= 1:
        raise InvalidArgument(f"filter_faces() argument 'confidence': expected (low, high) with "
                              f"0 <= low <= high <= 1, got {confidence}")
    labels, predicted = table["label"].to_numpy(), table["pred"].to_numpy()
    keep = (table["confidence"].to_numpy() >= low) & (table["confidence"].to_numpy() <= high)
    if correctness != "all":
        keep &= (labels >= 0) & ((labels == predicted) == (correctness == "correct"))
    return np.flatnonzero(keep)


def class_counts(datasets: dict[str, FaceDataset]) -> pd.DataFrame:
    """Faces per emotion of each dataset (``{spec: dataset}``): one row per dataset, a column
    per emotion any of them has, ``unlabelled`` when some faces have no label, and ``total``."""
    rows = []
    for spec, dataset in datasets.items():
        labels = np.asarray(dataset.labels)
        row: dict[str, Any] = {"dataset": spec, "domain": dataset.domain}
        row.update({EMOTIONS[i]: int(n) for i, n in enumerate(np.bincount(labels[labels >= 0],
                                                                           minlength=len(EMOTIONS))) if n})
        if (labels < 0).any():
            row["unlabelled"] = int((labels < 0).sum())
        row["total"] = len(labels)
        rows.append(row)
    table = pd.DataFrame(rows)
    emotions = [e for e in EMOTIONS if e in table]
    ordered = ["dataset", "domain", *emotions, *(["unlabelled"] if "unlabelled" in table else []), "total"]
    return table[ordered].fillna({e: 0 for e in emotions}).astype({e: int for e in emotions}) if rows else table


def sanity_verdicts(quality: dict[str, dict[str, Any]], methods: Sequence[str]) -> pd.DataFrame:
    """Every method's stored sanity check in one row (:func:`fer_core.explain.load_quality`):
    ``verdict`` (passed, failed, not checked), the randomisation check's last cascade step
    beside the noise-stability control, the deletion p-value against the centre prior, the faces
    it was measured on and when."""
    rows = []
    for method in methods:
        result = quality.get(method)
        if result is None:
            rows.append({"method": method, "verdict": "not checked"})
            continue
        randomisation, faithfulness = result.get("randomisation", {}), result.get("faithfulness", {})
        cascade = randomisation.get("cascade") or [{}]
        rows.append({"method": method, "verdict": "passed" if result.get("passed", True) else "failed",
                     "randomised_spearman": cascade[-1].get("decision", {}).get("mean"),
                     "noise_stability": randomisation.get("noise_stability", {}).get("decision", {}).get("mean"),
                     "deletion_p_vs_centre": faithfulness.get("centre_deletion_p_value"),
                     "faces": (result.get("faces") or {}).get("n"), "source": (result.get("faces") or {}).get("source"),
                     "measured": str(result.get("created", ""))[:19]})
    return pd.DataFrame(rows)


#: The real test sets a page opens first, in order of preference.
PREFERRED_REAL = ("fer2013:test", "ferplus:test")


def preferred_index(specs: Sequence[str], preferred: Sequence[str] = PREFERRED_REAL) -> int:
    """Position in ``specs`` of the dataset a page should open first: the first of ``preferred``
    installed, else the first test split, else the first."""
    for spec in preferred:
        if spec in specs:
            return list(specs).index(spec)
    return next((i for i, spec in enumerate(specs) if spec.endswith(":test")), 0)


def compare_models(records: pd.DataFrame, first: str, second: str, metric: str = "accuracy") -> pd.DataFrame:
    """Two models (fingerprints in :func:`fer_core.cross_domain.evaluation_records`) side by side
    on every test set both were scored on (each one's newest evaluation): ``metric`` of each, the
    difference (second - first), the faces each scored and, where both evaluations hold the same
    faces, McNemar's exact test on them (``shared``, ``p_value``; ``p_holm`` over the test sets)."""
    from fer_core.cross_domain import latest_per_model
    from fer_core.domain_gap import holm_finite
    latest = latest_per_model(records)
    a, b = (latest[latest["model"] == model].set_index("test_set") for model in (first, second))
    if a.empty or b.empty:
        raise DataError(f"no evaluation of model {first if a.empty else second}")
    rows = []
    for test_set in sorted(set(a.index) & set(b.index)):
        test = paired_mcnemar(Run.load(a.at[test_set, "path"]), Run.load(b.at[test_set, "path"]))
        rows.append({"test_set": test_set, "first": a.at[test_set, metric], "second": b.at[test_set, metric],
                     "difference": b.at[test_set, metric] - a.at[test_set, metric],
                     "n_first": a.at[test_set, "n"], "n_second": b.at[test_set, "n"],
                     "shared": test["n"] if test else 0, "p_value": test["p_value"] if test else float("nan")})
    if not rows:
        raise DataError("the two models were never scored on the same test set")
    table = pd.DataFrame(rows)
    return table.assign(p_holm=holm_finite(table["p_value"]))


def paired_mcnemar(a: Run, b: Run) -> dict[str, Any] | None:
    """McNemar's exact test (:func:`fer_core.evaluation.mcnemar`) on the labelled faces both
    evaluations scored; None when they share none."""
    from fer_core.evaluation import mcnemar
    both = a.predictions.merge(b.predictions, on="key", suffixes=("_a", "_b"))
    both = both[(both["label_a"] >= 0) & both["error_a"].isna() & both["error_b"].isna()]
    return mcnemar(both["pred_a"] == both["label_a"], both["pred_b"] == both["label_a"]) if len(both) else None


def class_gallery(dataset: FaceDataset, per_class: int = 6, side: int = 96) -> dict[str, list[tuple[str, np.ndarray]]]:
    """The first ``per_class`` images of each emotion of ``dataset``, as stored and shrunk to
    ``side`` pixels on their longer side: ``{emotion: [(key, RGB image), ...]}``."""
    import cv2
    gallery: dict[str, list[tuple[str, np.ndarray]]] = {}
    labels = np.asarray(dataset.labels)
    for index, emotion in enumerate(EMOTIONS):
        for row in np.flatnonzero(labels == index)[:per_class]:
            sample = dataset[int(row)]
            image = dataset.read(sample)
            scale = side / max(image.shape[:2])
            if scale < 1:
                size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            gallery.setdefault(emotion, []).append((sample.key, image))
    return gallery
