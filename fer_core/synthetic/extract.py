"""Grid images -> validated, aligned face crops in class folders, with a manifest row per cell.

For each grid: find its layout (:func:`~fer_core.synthetic.grid.find_layout`), cut the cells,
detect faces in each cell (the short-range detector needs the face to fill a good part of the
image, so detection runs per cell, never on the whole grid), reject cells with no face, several
faces, a face cut by the cell border, or a face failing :class:`QualityThresholds`, align and
crop the rest to ``face_size`` and write them to ``processed/{split}/{class folder}/`` (a grid's
faces all go to one split, stratified by emotion: :func:`~fer_core.data.splits.sequential_group_splits`).

The layout the prompt asked for is the prior: when the layout read from the image has another
shape (a missed seam turns a 6x6 grid without gutters into 6x5), both are judged and the found
one (or a regular square layout of its row or column count) is kept only when it confirms
clearly more faces (``prior_margin``); each disagreement is logged and recorded in the
manifest (``layout_found``, ``layout_requested``). When the shapes
agree but fewer than ``min_confirmed`` of the cells hold exactly one whole face, the regular
requested layout is tried too. A row that stays unconfirmed (shifted against the others) gets
cells centred on the faces found along it. Near-duplicates across the whole set are rejected
last. Every cell gets a manifest row, accepted or with its reason.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fer_core.data.splits import sequential_group_splits, warn_empty_sides
from fer_core.errors import DataError
from fer_core.faces.align import CROP_SIZE, MARGIN, align_face
from fer_core.faces.detectors import Detection, FaceDetector, as_rgb
from fer_core.images import load_rgb
from fer_core.labels import folder_name
from fer_core.runs import contained_path, write_parquet_atomic
from fer_core.synthetic.grid import GridLayout, GridSettings, Span, find_layout
from fer_core.synthetic.ledger import COMMITTED, CreditLedger
from fer_core.synthetic.quality import QualityThresholds, hash_distance, measure_face, perceptual_hash
from fer_core.validation import Interval, validate_params

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.parquet"
SPLITS = ("train", "test")
#: Manifest fields copied from each grid's ledger entry.
GRID_FIELDS = ("prompt_id", "emotion", "gender", "intensity", "age_range", "template", "backend", "model", "seed")


_FRACTION = Interval(Real, 0, 1)


@validate_params({"face_size": [CROP_SIZE], "margin": [MARGIN], "align": [bool],
                  "layout": [Interval(Integral, 1, None)], "min_confirmed": [_FRACTION], "prior_margin": [_FRACTION],
                  "test_fraction": [_FRACTION]})
@dataclass(frozen=True)
class ExtractSettings:
    """How faces are cut from grids.

    Args:
        face_size: side of the saved crops (config ``data.face_size``).
        margin: border around the face box, as a fraction of its side.
        align: level the eyes.
        layout: faces per row and column the prompts asked for (config ``data.grid_layout``),
            the prior layout (a grid's own ledger ``layout`` wins).
        min_confirmed: a found layout of the requested shape with fewer cells holding exactly one
            face than this fraction is compared with the regular requested one.
        prior_margin: a found layout of another shape than the requested one replaces it only when
            it confirms more faces by over this fraction of the requested cells.
        test_fraction: share of each emotion's grids (not faces) assigned to the test split; every
            emotion with two or more grids gets at least one test and one training grid, and a
            grid keeps its split when more grids are added (in ledger order).
        split_seed: seed of the grid-to-split assignment.
        grid: layout detection settings.
        thresholds: quality limits.
    """

    face_size: int = 128
    margin: float = 0.25
    align: bool = True
    layout: int = 6
    min_confirmed: float = 0.5
    prior_margin: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    grid: GridSettings = field(default_factory=GridSettings)
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)


@dataclass
class CellResult:
    """One cell: where it is, what was found and the verdict (``reason`` None when accepted)."""

    row: int
    column: int
    box: tuple[int, int, int, int]
    faces_found: int
    detection: Detection | None = None
    crop: np.ndarray | None = None
    quality: dict[str, float] = field(default_factory=dict)
    reason: str | None = None


def _overhang(detection: Detection, width: int, height: int) -> float:
    """How far the face box reaches past the cell edge, as a fraction of its side."""
    x0, y0, x1, y1 = detection.box
    return max(-x0, -y0, x1 - width, y1 - height, 0.0) / max(detection.width, detection.height)


def _judge_cell(cell: np.ndarray, row: int, column: int, box: tuple[int, int, int, int], detector: FaceDetector,
                settings: ExtractSettings) -> CellResult:
    detections = [d for d in detector.detect(cell) if d.score >= settings.thresholds.min_score]
    result = CellResult(row, column, box, len(detections))
    if not detections:
        result.reason = "no face"
        return result
    if len(detections) > 1:
        result.reason = "several faces"
        return result
    detection = detections[0]
    height, width = cell.shape[:2]
    face = align_face(cell, detection, settings.face_size, settings.margin, settings.align)
    quality = measure_face(face.image, detection, min(width, height))
    result.detection, result.crop = detection, face.image
    result.quality = {**vars(quality), "score": detection.score, "overhang": _overhang(detection, width, height)}
    problems = quality.problems(settings.thresholds)
    if result.quality["overhang"] > settings.thresholds.max_overhang:
        problems.insert(0, "cut by border")
    result.reason = problems[0] if problems else None
    return result


def _confirmed(cells: list[CellResult]) -> int:
    """Cells holding exactly one face that the cell border does not cut."""
    return sum(c.faces_found == 1 and c.reason != "cut by border" for c in cells)


def _row_spans_from_faces(rgb: np.ndarray, band: Span, cell_width: int, detector: FaceDetector) -> tuple[Span, ...]:
    """Column spans for one row band, centred on the faces found in it: square windows of the
    band's height slide along it by a quarter window (the detector needs faces that fill a good part
    of its input), faces cut by a window's side are left to the next window, and each face gets
    a cell ``cell_width`` wide (split halfway where two would overlap)."""
    y0, y1 = band
    side, width = y1 - y0, rgb.shape[1]
    starts = sorted(set(range(0, max(width - side, 0) + 1, max(side // 4, 1))) | {max(width - side, 0)})
    centres: list[tuple[float, float]] = []  # (score, x centre)
    for x in starts:
        window = rgb[y0:y1, x:x + side]
        for found in detector.detect(window):
            if min(found.box[0], window.shape[1] - found.box[2]) < 1:  # cut by the window's side
                continue
            centres.append((found.score, x + found.center[0]))
    kept: list[float] = []
    for _, centre in sorted(centres, reverse=True):
        if all(abs(centre - other) > cell_width / 2 for other in kept):
            kept.append(centre)
    kept.sort()
    bounds = [max(0.0, kept[0] - cell_width / 2)] if kept else []
    for left, right in zip(kept, kept[1:], strict=False):
        bounds.append(min((left + right) / 2, left + cell_width / 2))
        bounds.append(max((left + right) / 2, right - cell_width / 2))
    if kept:
        bounds.append(min(float(width), kept[-1] + cell_width / 2))
    return tuple((int(round(a)), int(round(b))) for a, b in zip(bounds[0::2], bounds[1::2], strict=True))


class GridExtraction(NamedTuple):
    """One grid's extraction: the layout kept, where it came from (``"found"``, ``"requested"``,
    either with ``"+rows"``), its cells, and the shapes read from the image and asked for."""

    layout: GridLayout
    source: str
    cells: list[CellResult]
    found_shape: tuple[int, int] | None
    requested_shape: tuple[int, int]

    @property
    def disagrees(self) -> bool:
        """Whether the layout read from the image has another shape than the one asked for."""
        return self.found_shape is not None and self.found_shape != self.requested_shape


def extract_grid(rgb: np.ndarray, detector: FaceDetector, settings: ExtractSettings | None = None,
                 layout: int | None = None) -> GridExtraction:
    """The layout of one grid image, where it came from and its cells.

    The requested layout (``layout`` faces per side, default ``settings.layout``) is the prior.
    A layout found from the image with the requested shape is kept when at least
    ``min_confirmed`` of its cells hold one whole face (else the regular requested layout is
    tried and the one confirming more faces kept). A found layout of another shape is judged
    against the regular requested one, and so are the regular square layouts of its row and
    column counts when it is not square (``"regular"``: a 3x3 grid read as 3x2); one of them
    replaces the prior only when it confirms more faces by over ``prior_margin`` of the
    requested cells (the one confirming most; the found one on a tie). Then each row confirming
    fewer than ``min_confirmed`` of its cells (a row shifted against the others) gets cells
    centred on the faces found along it, kept when they confirm more faces (``"+rows"`` is added
    to the source).
    """
    settings = settings or ExtractSettings()
    rgb = as_rgb(rgb)
    height, width = rgb.shape[:2]
    requested = layout or settings.layout

    def judge(boxes: Iterable[tuple[int, int, tuple[int, int, int, int]]]) -> list[CellResult]:
        return [_judge_cell(rgb[y0:y1, x0:x1], i, j, (x0, y0, x1, y1), detector, settings)
                for i, j, (x0, y0, x1, y1) in boxes]

    regular = GridLayout.regular(width, height, requested, requested)
    try:
        found: GridLayout | None = find_layout(rgb, settings.grid)
    except DataError:
        found = None
    if found is not None and found.shape != regular.shape:
        source, grid, cells = "requested", regular, judge(regular.cells())
        bar = _confirmed(cells) + settings.prior_margin * requested ** 2
        squares = {n for n in found.shape if n != requested} if found.shape[0] != found.shape[1] else set()
        for name, other in [("found", found)] + [("regular", GridLayout.regular(width, height, n, n))
                                                 for n in sorted(squares)]:
            other_cells = judge(other.cells())
            if _confirmed(other_cells) > max(bar, _confirmed(cells) if source != "requested" else 0):
                source, grid, cells = name, other, other_cells
    else:
        candidates = [("found", found)] * (found is not None) + [("requested", regular)]
        best: tuple[str, GridLayout, list[CellResult]] | None = None
        for source, grid in candidates:
            cells = judge(grid.cells())
            if best is None or _confirmed(cells) > _confirmed(best[2]):
                best = (source, grid, cells)
            if _confirmed(cells) >= settings.min_confirmed * len(cells):
                break
        source, grid, cells = best
    for i, band in enumerate(grid.rows):
        row_cells = [c for c in cells if c.row == i]
        if _confirmed(row_cells) >= settings.min_confirmed * len(row_cells):
            continue
        spans = _row_spans_from_faces(rgb, band, int(np.median([b - a for a, b in grid.columns])), detector)
        if not spans:
            continue
        shifted = grid.with_row_columns(i, spans)
        new_cells = judge(cell for cell in shifted.cells() if cell[0] == i)
        if _confirmed(new_cells) > _confirmed(row_cells):
            grid, source = shifted, source.removesuffix("+rows") + "+rows"
            cells = [c for c in cells if c.row != i] + new_cells
    return GridExtraction(grid, source, sorted(cells, key=lambda c: (c.row, c.column)),
                          None if found is None else found.shape, regular.shape)


def accepted_per_grid(manifest: pd.DataFrame) -> dict[str, int]:
    """Accepted faces per ledger entry id of an extraction manifest (grids with none included)."""
    if manifest.empty or "grid_id" not in manifest:
        return {}
    return {str(k): int(v) for k, v in manifest.groupby("grid_id")["accepted"].sum().items()}


def committed_grids(ledger: CreditLedger) -> list[dict[str, Any]]:
    """The ledger's committed grids, each with ``path`` (the image file) added."""
    return [{**e, "path": contained_path(ledger.path.parent, e["file"], f"{ledger.path} entry {e['id']}")}
            for e in ledger.entries(COMMITTED)]


def extract_faces(grids: Iterable[dict[str, Any]], detector: FaceDetector, out_dir: str | Path,
                  manifest_path: str | Path, settings: ExtractSettings | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Extract every grid (ledger entries: ``path``, ``sha256``, ``id`` and :data:`GRID_FIELDS`) into
    ``out_dir/{split}/{class folder}/`` (rebuilt from scratch) and write the manifest; returns it.
    An emotion left without accepted faces in train or test draws one
    :class:`~fer_core.data.splits.SplitWarning`.
    """
    settings = settings or ExtractSettings()
    out_dir, manifest_path = Path(out_dir), Path(manifest_path)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    rows: list[dict[str, Any]] = []
    hashes: list[tuple[int, int]] = []  # (hash, manifest row index) of accepted faces
    grids = list(grids)
    splits = sequential_group_splits([str(grid.get("emotion")) for grid in grids], settings.test_fraction,
                                     settings.split_seed)
    for grid, split in zip(tqdm(grids, desc="extract grids", unit="grid", disable=not progress), splits):
        path = Path(grid["path"])
        base = {"grid_id": grid.get("id"), "grid_file": str(grid.get("file", path.name)),
                **{k: grid.get(k) for k in GRID_FIELDS}}
        try:
            rgb = load_rgb(path)
        except DataError as exc:
            rows.append({**base, "row": -1, "column": -1, "accepted": False,
                         "reject_reason": f"grid unreadable: {exc}"})
            continue
        extraction = extract_grid(rgb, detector, settings, grid.get("layout"))
        layout, source, cells = extraction.layout, extraction.source, extraction.cells
        confirmed = _confirmed(cells) / len(cells)
        found, requested = (None if s is None else f"{s[0]}x{s[1]}"
                            for s in (extraction.found_shape, extraction.requested_shape))
        if extraction.disagrees:
            log.warning("grid %s: the image reads as %s, %s was asked for; kept the %s layout (%d of %d cells hold "
                        "one whole face)", base["grid_file"], found, requested, source, _confirmed(cells), len(cells))
        for cell in cells:
            cell_box = dict(zip(("cell_x0", "cell_y0", "cell_x1", "cell_y1"), cell.box, strict=True))
            row = {**base, "split": split, "grid_rows": layout.shape[0], "grid_columns": layout.shape[1],
                   "layout_source": source, "layout_confirmed": confirmed, "layout_found": found,
                   "layout_requested": requested, "row": cell.row, "column": cell.column, **cell_box,
                   "faces_found": cell.faces_found, **cell.quality}
            if cell.detection is not None:
                x, y = cell.box[:2]
                box = cell.detection.box
                row.update(face_x0=box[0] + x, face_y0=box[1] + y, face_x1=box[2] + x, face_y1=box[3] + y,
                           keypoints=None if cell.detection.keypoints is None
                           else (cell.detection.keypoints + (x, y)).ravel().tolist())
            reason = cell.reason
            if reason is None:
                digest = perceptual_hash(cell.crop)
                limit = settings.thresholds.duplicate_distance
                twin = next((i for h, i in hashes if hash_distance(h, digest) <= limit), None)
                if twin is not None:
                    other = rows[twin]
                    reason = f"duplicate of {other['grid_file']} r{other['row']} c{other['column']}"
                else:
                    hashes.append((digest, len(rows)))
                    name = f"{Path(row['grid_file']).stem}_r{cell.row}_c{cell.column}.png"
                    relative = Path(split) / folder_name(grid["emotion"]) / name
                    target = staging / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if not cv2.imwrite(str(target), cv2.cvtColor(cell.crop, cv2.COLOR_RGB2BGR)):
                        raise DataError(f"cannot write {target}")
                    row["face_file"] = relative.as_posix()
            row.update(accepted=reason is None, reject_reason=reason)
            rows.append(row)
    manifest = pd.DataFrame(rows)
    if settings.test_fraction not in (0.0, 1.0) and "face_file" in manifest:
        accepted = manifest[manifest["face_file"].notna()]
        warn_empty_sides({emotion: accepted[accepted["emotion"] == emotion]["split"].value_counts().to_dict()
                          for emotion in manifest["emotion"].dropna().unique()}, "synthetic train/test split")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out_dir)
    write_parquet_atomic(manifest, manifest_path)
    return manifest
