"""What the synthetic set holds: counts by emotion, gender and intensity, rejections by reason,
layout disagreements, and contact sheets showing every cell of every grid with its verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from fer_core.errors import DataError, ImageDecodeError
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
    layout_read = {"layout_found", "layout_requested"} <= set(grids)
    disagreements = (grids[grids["layout_found"].notna() & (grids["layout_found"] != grids["layout_requested"])]
                     if layout_read else grids.iloc[:0])
    return {
        "grids": int(len(grids)), "cells": int(len(manifest)), "accepted": int(len(accepted)),
        "rejected": int(len(rejected)),
        "accepted_by": {column: _counts(accepted, column) for column in ("emotion", "gender", "intensity", "split")},
        "rejected_by_reason": {str(k): int(v) for k, v in reasons.value_counts().sort_index().items()},
        "layouts": {f"{int(r)}x{int(c)}": int(n) for (r, c), n in layouts.items()},
        "layout_disagreements": [{"grid_file": str(g.grid_file), "found": str(g.layout_found),
                                  "requested": str(g.layout_requested), "kept": str(g.layout_source)}
                                 for g in disagreements.itertuples()],
    }


#: Verdict colours (RGB) of tile borders and face boxes.
ACCEPTED_COLOUR, REJECTED_COLOUR = (0, 150, 0), (200, 0, 0)
_FONT, _FONT_SCALE, _LINE = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 13
#: Contact sheet pages (``contact_sheet.png``, ``contact_sheet_2.png``, ...) and the index of every tile.
SHEET_STEM, SHEET_INDEX = "contact_sheet", "contact_sheet.json"


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0][0]


def _wrapped(text: str, width: int, lines: int) -> list[str]:
    """``text`` in at most ``lines`` lines of at most ``width`` pixels (``...`` where it is cut)."""
    out = [""]
    for word in text.split():
        candidate = f"{out[-1]} {word}".strip()
        if _text_width(candidate) <= width or not out[-1]:
            out[-1] = candidate
        else:
            out.append(word)
    cut = len(out) > lines
    out = out[:lines]
    while _text_width(out[-1] + "..." * cut) > width:
        out[-1], cut = out[-1][:-1], True
    out[-1] += "..." * cut
    return out


def _put(image: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int] = (0, 0, 0)) -> None:
    cv2.putText(image, text, (x, y), _FONT, _FONT_SCALE, colour, 1, cv2.LINE_AA)


def _fit(image: np.ndarray, side: int) -> tuple[np.ndarray, float, int, int]:
    """``image`` scaled into a white ``side`` square (letterboxed), with the scale and the offset."""
    scale = side / max(image.shape[:2])
    width, height = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
    tile = np.full((side, side, 3), 255, np.uint8)
    x, y = (side - width) // 2, (side - height) // 2
    tile[y:y + height, x:x + width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return tile, scale, x, y


def _values(cell: pd.Series, keys: tuple[str, ...]) -> list[float] | None:
    values = [cell.get(k) for k in keys]
    return None if any(v is None or pd.isna(v) for v in values) else [float(v) for v in values]


def _tile(cell: pd.Series, grid: np.ndarray | None, face: np.ndarray | None, thumb: int,
          caption_lines: int) -> np.ndarray:
    """One cell: its picture cut from the grid (face box drawn; the saved crop inset when accepted),
    framed in the verdict's colour, over a caption with its position and verdict or reason."""
    accepted = bool(cell["accepted"])
    colour = ACCEPTED_COLOUR if accepted else REJECTED_COLOUR
    box = _values(cell, ("cell_x0", "cell_y0", "cell_x1", "cell_y1"))
    picture = np.full((thumb, thumb, 3), 200, np.uint8)
    if grid is not None and box is not None and box[2] > box[0] and box[3] > box[1]:
        x0, y0, x1, y1 = (int(v) for v in box)
        picture, scale, dx, dy = _fit(grid[y0:y1, x0:x1], thumb)
        face_box = _values(cell, ("face_x0", "face_y0", "face_x1", "face_y1"))
        if face_box is not None:
            corners = [round((v - origin) * scale + offset)
                       for v, origin, offset in zip(face_box, (x0, y0) * 2, (dx, dy) * 2, strict=True)]
            cv2.rectangle(picture, tuple(corners[:2]), tuple(corners[2:]), colour, 1)
        if face is not None:
            inset = thumb // 3
            picture[-inset - 3:-3, -inset - 3:-3] = cv2.resize(face, (inset, inset), interpolation=cv2.INTER_AREA)
    elif face is not None:  # the grid image is gone: the saved crop stands in
        picture = _fit(face, thumb)[0]
    cv2.rectangle(picture, (0, 0), (thumb - 1, thumb - 1), colour, 3)
    caption = np.full((caption_lines * _LINE + 6, thumb, 3), 255, np.uint8)
    row, column = int(cell["row"]), int(cell["column"])
    _put(caption, f"r{row} c{column}" if row >= 0 else "whole grid", 2, _LINE)
    verdict = f"accepted ({cell.get('split')})" if accepted else str(cell["reject_reason"])
    for k, line in enumerate(_wrapped(verdict, thumb - 4, caption_lines - 1)):
        _put(caption, line, 2, _LINE * (k + 2), colour)
    return np.vstack([picture, caption])


def _grid_header(cells: pd.DataFrame, width: int) -> np.ndarray:
    """The grid's file, emotion, gender, count accepted and layout (and a disagreement, if any), at
    least ``width`` pixels wide."""
    first = cells.iloc[0]
    rows, columns = first.get("grid_rows"), first.get("grid_columns")
    shape = f"{int(rows)}x{int(columns)}" if rows is not None and pd.notna(rows) else "-"
    found, requested = first.get("layout_found"), first.get("layout_requested")
    disagreement = (f"; the image reads as {found}, {requested} was asked"
                    if isinstance(found, str) and found != requested else "")
    gender = first.get("gender")
    lines = [str(first["grid_file"]),
             f"{first['emotion']}, {gender if isinstance(gender, str) else 'gender unstated'}: "
             f"{int(cells['accepted'].sum())} of {len(cells)} cells accepted; layout {shape} "
             f"({first.get('layout_source', '-')}){disagreement}"]
    header = np.full((2 * _LINE + 8, max(width, *(_text_width(line) + 8 for line in lines)), 3), 235, np.uint8)
    for k, line in enumerate(lines):
        _put(header, line, 4, (k + 1) * _LINE + 1 + 2 * k)
    return header


def _grid_block(cells: pd.DataFrame, grids_dir: Path, faces: dict[Any, Path], thumb: int,
                caption_lines: int) -> tuple[np.ndarray, list[tuple[pd.Series, tuple[int, int, int, int]]]]:
    """One grid's block (header over its cells at their rows and columns) and each cell's box in it."""
    try:
        grid = load_rgb(contained_path(grids_dir, cells["grid_file"].iloc[0], "manifest grid_file"))
    except ImageDecodeError:
        grid = None  # reverted or moved: accepted cells show their saved crop
    tiles = [(cell, _tile(cell, grid, load_rgb(faces[i]) if i in faces else None, thumb, caption_lines))
             for i, cell in cells.iterrows()]
    rows = sorted({int(cell["row"]) for cell, _ in tiles})
    columns = max(max(int(cell["column"]) for cell, _ in tiles) + 1, 1)
    tile_height, tile_width, pad = tiles[0][1].shape[0], thumb, 4
    header = _grid_header(cells, columns * (tile_width + pad) + pad)
    body = np.full((len(rows) * (tile_height + pad) + pad, header.shape[1], 3), 255, np.uint8)
    boxes = []
    for cell, tile in tiles:
        y = header.shape[0] + pad + rows.index(int(cell["row"])) * (tile_height + pad)
        x = pad + max(int(cell["column"]), 0) * (tile_width + pad)
        body[y - header.shape[0]:y - header.shape[0] + tile_height, x:x + tile_width] = tile
        boxes.append((cell, (x, y, x + tile_width, y + tile_height)))
    return np.vstack([header, body]), boxes


def contact_sheet(manifest: pd.DataFrame, faces_dir: str | Path, path: str | Path,
                  grids_dir: str | Path | None = None, thumb: int = 160, grids_per_page: int = 4,
                  caption_lines: int = 3) -> list[Path]:
    """Contact sheet pages of every cell of every grid, accepted and rejected, for a person to audit.

    Each grid is a block headed by its file, emotion, count accepted and layout; each cell a
    ``thumb`` px tile cut from the grid image in ``grids_dir`` (default: the folder above
    ``faces_dir``, the ledger's) with the face box drawn and, when accepted, the saved crop inset,
    framed green (accepted) or red (rejected) over a caption of its row, column and verdict or
    reason. ``path`` is the first page; the next are ``<stem>_2.png``, ... (``grids_per_page``
    grids each). :data:`SHEET_INDEX` beside them lists every tile: page, grid, row, column,
    verdict, full reason and pixel box. Returns the pages.
    """
    faces_dir, path = Path(faces_dir), Path(path)
    grids_dir = Path(grids_dir) if grids_dir is not None else faces_dir.parent
    if manifest.empty:
        raise DataError("no cells to show in a contact sheet: the manifest is empty")
    accepted = manifest["accepted"].astype(bool)
    faces = ({i: contained_path(faces_dir, file, "manifest face_file")
              for i, file in manifest.loc[accepted, "face_file"].items()} if "face_file" in manifest else {})
    missing = [c for c in ("row", "column", "grid_file", "emotion", "reject_reason") if c not in manifest]
    if missing:
        raise DataError(f"not an extraction manifest: it has no {missing} columns; run 'fer-core synth extract' again")
    blocks = [_grid_block(cells, grids_dir, faces, thumb, caption_lines)
              for _, cells in manifest.groupby("grid_file", sort=False)]
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{path.stem}_*{path.suffix}"):
        stale.unlink()
    pages, index, gap = [], [], 12
    for number, start in enumerate(range(0, len(blocks), grids_per_page), start=1):
        page_path = path if number == 1 else path.with_name(f"{path.stem}_{number}{path.suffix}")
        chunk = blocks[start:start + grids_per_page]
        page = np.full((sum(block.shape[0] + gap for block, _ in chunk), max(b.shape[1] for b, _ in chunk), 3), 255,
                       np.uint8)
        top = 0
        for block, boxes in chunk:
            page[top:top + block.shape[0], :block.shape[1]] = block
            index += [{"sheet": page_path.name, "grid_file": str(cell["grid_file"]), "row": int(cell["row"]),
                       "column": int(cell["column"]), "accepted": bool(cell["accepted"]),
                       "reason": None if cell["accepted"] else str(cell["reject_reason"]),
                       "box": [x0, top + y0, x1, top + y1]} for cell, (x0, y0, x1, y1) in boxes]
            top += block.shape[0] + gap
        if not cv2.imwrite(str(page_path), cv2.cvtColor(page, cv2.COLOR_RGB2BGR)):
            raise DataError(f"cannot write {page_path}")
        pages.append(page_path)
    write_json_atomic(path.with_name(SHEET_INDEX), index)
    return pages


def write_report(manifest_path: str | Path, faces_dir: str | Path, out_dir: str | Path,
                 grids_dir: str | Path | None = None) -> dict[str, Any]:
    """``report.json`` and the contact sheet pages of every cell (see :func:`contact_sheet`; grid
    images from ``grids_dir``, default the manifest's folder) in ``out_dir``; returns the summary."""
    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    if not manifest_path.is_file():
        raise DataError(f"no manifest at {manifest_path}; run 'fer-core synth extract' first")
    try:
        manifest = pd.read_parquet(manifest_path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"unreadable manifest {manifest_path}: {exc}; run 'fer-core synth extract' again") from None
    summary = summarize(manifest)
    if summary["cells"]:
        pages = contact_sheet(manifest, faces_dir, out_dir / f"{SHEET_STEM}.png",
                              manifest_path.parent if grids_dir is None else grids_dir)
        summary["contact_sheet"], summary["contact_sheets"] = str(pages[0]), [str(page) for page in pages]
    write_json_atomic(out_dir / "report.json", summary)
    return summary
