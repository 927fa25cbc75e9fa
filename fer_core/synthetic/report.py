"""What the synthetic set holds: counts by emotion, gender and intensity, rejections by reason,
and a contact sheet of accepted faces (one row per emotion)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from fer_core.errors import DataError
from fer_core.images import load_rgb
from fer_core.runs import contained_path, write_json_atomic


def _counts(frame: pd.DataFrame, column: str) -> dict[str, int]:
    if frame.empty or column not in frame:
        return {}
    return {str(k): int(v) for k, v in frame[column].fillna("unstated").value_counts().sort_index().items()}


def summarize(manifest: pd.DataFrame) -> dict[str, Any]:
    """Counts of accepted faces per emotion / gender / intensity / split, and rejections by reason."""
    missing = [c for c in ("accepted", "reject_reason", "grid_file", "emotion") if c not in manifest]
    if missing:
        raise DataError(f"not an extraction manifest: it has no {missing} columns")
    accepted = manifest[manifest["accepted"]]
    rejected = manifest[~manifest["accepted"]]
    reasons = rejected["reject_reason"].str.replace(r"^duplicate of .*", "duplicate", regex=True)
    grids = manifest.drop_duplicates("grid_file")
    layout_columns = ["grid_rows", "grid_columns"]
    found = grids.dropna(subset=layout_columns) if "grid_rows" in grids else pd.DataFrame(columns=layout_columns)
    layouts = found.groupby(layout_columns).size()
    return {
        "grids": int(len(grids)), "cells": int(len(manifest)), "accepted": int(len(accepted)),
        "rejected": int(len(rejected)),
        "accepted_by": {column: _counts(accepted, column) for column in ("emotion", "gender", "intensity", "split")},
        "rejected_by_reason": {str(k): int(v) for k, v in reasons.value_counts().sort_index().items()},
        "layouts": {f"{int(r)}x{int(c)}": int(n) for (r, c), n in layouts.items()},
    }


def contact_sheet(manifest: pd.DataFrame, faces_dir: str | Path, path: str | Path, per_row: int = 12,
                  thumb: int = 64) -> Path:
    """A PNG with up to ``per_row`` accepted faces per emotion (labelled rows); returns its path."""
    faces_dir, path = Path(faces_dir), Path(path)
    accepted = manifest[manifest["accepted"]]
    if accepted.empty:
        raise DataError("no accepted faces to show in a contact sheet")
    label_width = 110
    emotions = sorted(accepted["emotion"].unique())
    sheet = np.full((thumb * len(emotions), label_width + thumb * per_row, 3), 255, np.uint8)
    for r, emotion in enumerate(emotions):
        cv2.putText(sheet, emotion, (4, r * thumb + thumb // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
        for c, file in enumerate(accepted[accepted["emotion"] == emotion]["face_file"].head(per_row)):
            source = contained_path(faces_dir, file, "manifest face_file")
            face = cv2.resize(load_rgb(source), (thumb, thumb), interpolation=cv2.INTER_AREA)
            sheet[r * thumb:(r + 1) * thumb, label_width + c * thumb:label_width + (c + 1) * thumb] = face
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise DataError(f"cannot write {path}")
    return path


def write_report(manifest_path: str | Path, faces_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """``report.json`` and ``contact_sheet.png`` in ``out_dir`` from a manifest; returns the summary."""
    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    if not manifest_path.is_file():
        raise DataError(f"no manifest at {manifest_path}; run 'fer-core synth extract' first")
    try:
        manifest = pd.read_parquet(manifest_path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"unreadable manifest {manifest_path}: {exc}; run 'fer-core synth extract' again") from None
    summary = summarize(manifest)
    if summary["accepted"]:
        summary["contact_sheet"] = str(contact_sheet(manifest, faces_dir, out_dir / "contact_sheet.png"))
    write_json_atomic(out_dir / "report.json", summary)
    return summary
