"""Finding the grid a generated image really has, from the image itself.

Text-to-image models asked for a 6x6 grid return 3x3 or 5x5 ones, uneven gutters or none, so
the layout is read from projection profiles along each axis:

* a **gutter** is a run of columns (rows) that are uniform over most of the image height (width);
* a **seam** is a column where most image rows change abruptly (two pictures abut without a
  gutter): the fraction of rows with a strong edge there (within a few pixels, so that slightly
  jittered cells still line up) is high, while inside pictures it is not.

Cells are the spans between separators; spans much narrower than the others are merged into a
neighbour (a spurious separator), and margins at the image edge are dropped. Face detections
then confirm the layout (see :mod:`fer_core.synthetic.extract`).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import cv2
import numpy as np

from fer_core.errors import DataError
from fer_core.faces.detectors import as_rgb
from fer_core.validation import Interval, validate_params

#: Profiles are computed on the image shrunk to at most this side.
PROFILE_SIDE = 1024


_POSITIVE = [Interval(Real, 0, None, closed="neither")]


@validate_params({"flat_tolerance": _POSITIVE, "gutter_fraction": _POSITIVE, "edge_ratio": _POSITIVE,
                  "seam_fraction": _POSITIVE, "min_cell_ratio": _POSITIVE, "jitter": [Interval(Integral, 0, None)],
                  "max_cells": [Interval(Integral, 1, None)]})
@dataclass(frozen=True)
class GridSettings:
    """How separators are found.

    Args:
        flat_tolerance: a gutter column's pixels lie within this many grey levels of its median
            (in every channel) ...
        gutter_fraction: ... along at least this fraction of its length.
        edge_ratio: a row has an edge at a column where its gradient is this multiple of its median.
        seam_fraction: a seam has an edge in at least this fraction of the rows (within ``jitter``).
        jitter: separators may wander this many pixels (at :data:`PROFILE_SIDE`) between rows.
        min_cell_ratio: cells narrower than this fraction of the median cell are merged away.
        max_cells: most cells along one axis.
    """

    flat_tolerance: float = 6.0
    gutter_fraction: float = 0.8
    edge_ratio: float = 5.0
    seam_fraction: float = 0.8
    jitter: int = 3
    min_cell_ratio: float = 0.55
    max_cells: int = 12



Span = tuple[int, int]


@dataclass(frozen=True)
class GridLayout:
    """Cell spans in source pixels: ``rows[i] = (y0, y1)`` and ``columns[j] = (x0, x1)``, shared by
    every row except those in ``row_columns`` (``(row, spans)`` pairs: rows shifted on their own)."""

    columns: tuple[Span, ...]
    rows: tuple[Span, ...]
    row_columns: tuple[tuple[int, tuple[Span, ...]], ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)``; columns of the shared layout."""
        return len(self.rows), len(self.columns)

    def columns_of(self, row: int) -> tuple[Span, ...]:
        """The column spans of ``row``."""
        return dict(self.row_columns).get(row, self.columns)

    def with_row_columns(self, row: int, spans: tuple[Span, ...]) -> GridLayout:
        """This layout with ``row`` cut into ``spans`` instead of the shared columns."""
        overrides = dict(self.row_columns) | {row: tuple(spans)}
        return GridLayout(self.columns, self.rows, tuple(sorted(overrides.items())))

    def box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """Cell ``(x0, y0, x1, y1)``."""
        (x0, x1), (y0, y1) = self.columns_of(row)[column], self.rows[row]
        return x0, y0, x1, y1

    def cells(self) -> list[tuple[int, int, tuple[int, int, int, int]]]:
        """``(row, column, box)`` for every cell, row by row."""
        return [(i, j, self.box(i, j)) for i in range(len(self.rows)) for j in range(len(self.columns_of(i)))]

    @classmethod
    def regular(cls, width: int, height: int, rows: int, columns: int) -> GridLayout:
        """Equal cells over the whole image (the layout the prompt asked for)."""
        xs = np.linspace(0, width, columns + 1).round().astype(int)
        ys = np.linspace(0, height, rows + 1).round().astype(int)
        return cls(tuple(zip(xs[:-1].tolist(), xs[1:].tolist(), strict=True)),
                   tuple(zip(ys[:-1].tolist(), ys[1:].tolist(), strict=True)))


@dataclass(frozen=True)
class _Separator:
    start: int  # first pixel of the separator (a gutter's first column; a seam's column)
    end: int    # one past its last pixel (== start for a seam)
    strength: float


def _flat(image: np.ndarray, tolerance: float, fraction: float) -> np.ndarray:
    """Per column of ``image`` (H, W, C): whether ``fraction`` of its pixels lie within
    ``tolerance`` of its median (a gutter, possibly crossed by a row shifted over it)."""
    deviation = np.abs(image - np.median(image, axis=0, keepdims=True)).max(axis=2)
    return np.mean(deviation <= tolerance, axis=0) >= fraction


def _seam_fractions(image: np.ndarray, edge_ratio: float, jitter: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column boundary x (between columns x and x+1): the fraction of rows with a strong
    edge there (gradient over ``edge_ratio`` times the row's median), exactly and within ``jitter``."""
    gradient = np.abs(image[:, 1:] - image[:, :-1]).sum(axis=2)
    strong = (gradient > edge_ratio * (np.median(gradient, axis=1, keepdims=True) + 1.0)).astype(np.uint8)
    exact = strong.mean(axis=0)
    if jitter:
        strong = cv2.dilate(strong, np.ones((1, 2 * jitter + 1), np.uint8))
    return exact, strong.mean(axis=0)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    changes = np.flatnonzero(np.diff(padded))
    return list(zip(changes[0::2].tolist(), changes[1::2].tolist(), strict=True))


def _separators(image: np.ndarray, settings: GridSettings) -> tuple[list[_Separator], int, int]:
    """Separators along the columns of ``image``, and the content span (margins excluded)."""
    width = image.shape[1]
    flat = _flat(image, settings.flat_tolerance, settings.gutter_fraction)
    gutters = [_Separator(a, b, np.inf) for a, b in _runs(flat)]
    start, end = 0, width
    if gutters and gutters[0].start == 0:
        start = gutters.pop(0).end
    if gutters and gutters[-1].end == width:
        end = gutters.pop().start
    if end - start < 2:
        raise DataError("the image is uniform: no grid of faces in it")
    exact, dilated = _seam_fractions(image, settings.edge_ratio, settings.jitter)
    seams = []
    for a, b in _runs(dilated >= settings.seam_fraction):
        x = a + int(np.argmax(exact[a:b])) + 1  # boundary between columns x-1 and x
        clear_of_gutters = all(x < g.start - settings.jitter - 1 or x > g.end + settings.jitter + 1 for g in gutters)
        if start + settings.jitter + 1 < x < end - settings.jitter - 1 and clear_of_gutters:
            seams.append(_Separator(x, x, float(dilated[a:b].max())))
    return sorted(gutters + seams, key=lambda s: s.start), start, end


def _spans(separators: list[_Separator], start: int, end: int, settings: GridSettings) -> list[tuple[int, int]]:
    """Cell spans between separators, merging cells too narrow to be real ones."""
    separators = list(separators)
    while True:
        edges = [start] + [v for s in separators for v in (s.start, s.end)] + [end]
        spans = list(zip(edges[0::2], edges[1::2], strict=True))
        widths = np.array([b - a for a, b in spans], dtype=float)
        narrow = np.flatnonzero(widths < settings.min_cell_ratio * np.median(widths))
        if not len(narrow) or not separators:
            return spans
        cell = int(narrow[np.argmin(widths[narrow])])
        # drop the weaker separator bounding the narrowest cell (the image edges are not separators)
        candidates = [k for k in (cell - 1, cell) if 0 <= k < len(separators)]
        separators.pop(min(candidates, key=lambda k: separators[k].strength))


def _shrunk(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` as float32, shrunk to at most :data:`PROFILE_SIDE` on its longer side."""
    height, width = rgb.shape[:2]
    scale = min(1.0, PROFILE_SIDE / max(height, width))
    if scale < 1.0:
        rgb = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    return rgb.astype(np.float32)


def _axis_spans(image: np.ndarray, full: int, settings: GridSettings) -> tuple[Span, ...]:
    """Cell spans along the columns of ``image``, in pixels of a side ``full`` long."""
    separators, start, end = _separators(image, settings)
    spans = _spans(separators, start, end, settings)
    if len(spans) > settings.max_cells:
        raise DataError(f"found {len(spans)} cells along one side, more than max_cells={settings.max_cells}: "
                        f"not a grid of faces")
    factor = full / image.shape[1]
    return tuple((int(round(a * factor)), int(round(b * factor))) for a, b in spans)


def find_layout(rgb: np.ndarray, settings: GridSettings | None = None) -> GridLayout:
    """The grid of ``rgb`` read from gutters and seams (any count, uneven spacing allowed).

    A :class:`DataError` when an axis has more than ``settings.max_cells`` cells or the image is uniform.
    """
    settings = settings or GridSettings()
    rgb = as_rgb(rgb)
    height, width = rgb.shape[:2]
    image = _shrunk(rgb)
    return GridLayout(columns=_axis_spans(image, width, settings),
                      rows=_axis_spans(image.transpose(1, 0, 2), height, settings))

