"""Thesis figures, drawn with matplotlib's object interface (no pyplot, so they can be drawn off
the main thread, as the dashboard's downloads are) and saved as PNG (300 dpi), PDF and SVG
(vector) with the protocol they were made under printed beneath them."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fer_core.labels import DOMAIN_COLORS, EMOTION_COLORS

#: The files every figure is saved as.
FORMATS = ("png", "pdf", "svg")
#: Resolution of the PNG (the PDF and SVG are vector; images inside them keep their own pixels).
DPI = 200
#: No time stamps in the files: the same figure gives the same bytes.
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}
#: Colours of series that are neither an emotion nor a domain.
_CYCLE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
_SMALL = 6.5


def palette(names: Sequence[str]) -> dict[str, str]:
    """A colour for each name: the emotion's or the domain's own, else one of a fixed cycle."""
    fixed = {**EMOTION_COLORS, **DOMAIN_COLORS}
    free = iter(_CYCLE * (len(names) // len(_CYCLE) + 1))
    return {name: fixed.get(name) or next(free) for name in names}


def save_figure(figure: Figure, folder: Path, stem: str, protocol: str = "") -> dict[str, Path]:
    """Print ``protocol`` under ``figure`` and save it as ``folder/stem.{png,pdf,svg}`` (each to a
    temporary name, then renamed); returns the paths by format."""
    if protocol:
        width = max(40, int(figure.get_figwidth() * 20))
        figure.text(0.01, 0.0, "\n".join(textwrap.wrap(protocol, width)), fontsize=_SMALL, color="#444444",
                    ha="left", va="top")
    figure.draw_without_rendering()  # lay the figure out once, then keep that layout for every format
    figure.set_layout_engine("none")
    box = figure.get_tightbbox().padded(0.05)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in FORMATS:
        path = folder / f"{stem}.{kind}"
        temporary = path.with_name(f".{path.stem}.tmp.{kind}")
        figure.savefig(temporary, format=kind, dpi=DPI, bbox_inches=box, metadata=_METADATA[kind])
        temporary.replace(path)
        paths[kind] = path
    return paths


def confusion_figure(confusion: Mapping[str, Sequence], title: str) -> Figure:
    """A row-normalised confusion matrix (rows: true classes; columns: every class a prediction
    could be), each cell with its share and count: ``confusion`` as
    :func:`fer_core.evaluation.classification_report` stores it."""
    labels = list(confusion["labels"])
    predicted = list(confusion.get("predicted", labels))
    shares, counts = np.asarray(confusion["normalized"], dtype=float), np.asarray(confusion["counts"], dtype=int)
    figure = Figure(figsize=(1.6 + 0.62 * len(predicted), 1.4 + 0.5 * len(labels)), layout="constrained")
    axis = figure.add_subplot()
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="none")
    axis.set_xticks(range(len(predicted)), predicted, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for (row, column), share in np.ndenumerate(shares):
        axis.text(column, row, f"{share:.2f}\n({counts[row, column]})", ha="center", va="center", fontsize=_SMALL,
                  color="white" if share > 0.5 else "black")
    axis.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axis, label="share of the true class's faces")
    return figure


def interval_bars(frame: pd.DataFrame, x: str, value: str, low: str | None = None, high: str | None = None,
                  group: str | None = None, facet: str | None = None, ylabel: str = "", title: str = "",
                  ylim: tuple[float, float] | None = None, reference: float | None = None) -> Figure:
    """Grouped bars of ``value`` per ``x`` (one bar per ``group``), with error bars from ``low`` to
    ``high`` (a confidence interval; none where it is NaN), one panel per ``facet``, and a dashed
    line at ``reference`` (e.g. chance, or what a uniform map gives)."""
    facets = list(dict.fromkeys(frame[facet])) if facet else [None]
    groups = list(dict.fromkeys(frame[group])) if group else [None]
    categories = list(dict.fromkeys(frame[x]))
    colors = palette([str(g) for g in groups]) if group else {}
    columns = min(len(facets), 3)
    rows = -(-len(facets) // columns)
    figure = Figure(figsize=(max(4.5, 0.32 * len(categories) * max(len(groups), 2)) * columns / 1.3 + 1,
                             2.6 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True)
    width = 0.8 / len(groups)
    for axis, name in zip(axes.flat, facets):
        part = frame if name is None else frame[frame[facet] == name]
        for number, key in enumerate(groups):
            bars = part if key is None else part[part[group] == key]
            position = {c: i for i, c in enumerate(categories)}
            where = np.array([position[c] for c in bars[x]], dtype=float) - 0.4 + width * (number + 0.5)
            heights = bars[value].to_numpy(dtype=float)
            errors = None
            if low and high:
                errors = np.vstack([heights - bars[low].to_numpy(dtype=float),
                                    bars[high].to_numpy(dtype=float) - heights])
                errors = np.where(np.isfinite(errors), np.maximum(errors, 0), 0)
            axis.bar(where, heights, width * 0.92, yerr=errors, capsize=2, label=None if key is None else str(key),
                     color=colors.get(str(key), _CYCLE[0]), error_kw={"elinewidth": 0.8})
        if reference is not None:
            axis.axhline(reference, color="#555555", linestyle="--", linewidth=0.8)
        axis.set_xticks(range(len(categories)), categories, rotation=35, ha="right", fontsize=8)
        if name is not None:
            axis.set_title(str(name), fontsize=9)
        if ylim is not None:
            axis.set_ylim(*ylim)
        if axis in axes[:, 0]:
            axis.set_ylabel(ylabel)
    for axis in list(axes.flat)[len(facets):]:
        axis.set_visible(False)
    if group and len(groups) > 1:
        axes.flat[0].legend(fontsize=7, frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def level_figure(frame: pd.DataFrame, x: str, value: str, low: str, high: str, series: str = "test_set",
                 percent: bool = True, xlabel: str = "", ylabel: str = "accuracy", title: str = "") -> Figure:
    """``value`` against ``x`` (a synthetic share from 0 to 1, drawn in percent, or a count), one
    line per ``series`` (test set), with error bars from ``low`` to ``high`` (none where NaN)."""
    figure = Figure(figsize=(5.2, 3.4), layout="constrained")
    axis = figure.add_subplot()
    names = list(dict.fromkeys(frame[series]))
    colors = palette([str(n) for n in names])
    for name in names:
        line = frame[frame[series] == name].sort_values(x)
        values = line[value].to_numpy(dtype=float)
        errors = np.vstack([values - line[low].to_numpy(dtype=float), line[high].to_numpy(dtype=float) - values])
        axis.errorbar(line[x].to_numpy(dtype=float) * (100 if percent else 1), values,
                      yerr=np.where(np.isfinite(errors), np.maximum(errors, 0), 0), marker="o", markersize=4,
                      capsize=3, linewidth=1.2, color=colors[str(name)], label=str(name))
    axis.set_xlabel(f"{xlabel} (%)" if percent else xlabel)
    axis.set_ylabel(ylabel)
    if percent:
        axis.set_xlim(-5, 105)
    axis.legend(title="tested on", fontsize=7, title_fontsize=7, frameon=False)
    if title:
        axis.set_title(title, fontsize=9)
    return figure


def heatmap_figure(values: pd.DataFrame, notes: pd.DataFrame | None = None, title: str = "",
                   label: str = "accuracy", vmin: float = 0.0, vmax: float = 1.0) -> Figure:
    """A matrix of scores (rows down, columns across; NaN cells blank), each cell with its value
    and, beneath it, its note (e.g. the faces it was scored on)."""
    array = values.to_numpy(dtype=float)
    figure = Figure(figsize=(2.6 + 1.25 * array.shape[1], 1.2 + 0.5 * array.shape[0]), layout="constrained")
    axis = figure.add_subplot()
    image = axis.imshow(np.ma.masked_invalid(array), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto",
                        interpolation="none")
    axis.set_xticks(range(array.shape[1]), [str(c) for c in values.columns], rotation=30, ha="right")
    axis.set_yticks(range(array.shape[0]), [str(r) for r in values.index], fontsize=7)
    axis.set_xlabel("tested on")
    for (row, column), value in np.ndenumerate(array):
        if np.isfinite(value):
            note = "" if notes is None else f"\n{notes.iloc[row, column]}"
            axis.text(column, row, f"{value:.3f}{note}", ha="center", va="center", fontsize=_SMALL,
                      color="black" if value > vmin + 0.6 * (vmax - vmin) else "white")
    figure.colorbar(image, ax=axis, label=label)
    if title:
        axis.set_title(title, fontsize=9)
    return figure


def _edges(labels: np.ndarray) -> np.ndarray:
    """Pixels of an integer label image that border another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    return edge


def map_grid_figure(columns: Sequence[tuple[str, Mapping[str, np.ndarray], bool]], rows: Sequence[str],
                    outline: np.ndarray | None = None, title: str = "") -> Figure:
    """Maps in a grid: one row per name in ``rows``, one column per ``(heading, {row: map},
    signed)``. Unsigned columns share one scale from 0; signed ones a symmetric diverging scale.
    ``outline`` (an integer region image the size of the maps) is drawn as thin white borders."""
    figure = Figure(figsize=(1.9 * len(columns) + 0.8, 1.75 * len(rows) + 1.0), layout="constrained")
    axes = figure.subplots(len(rows), len(columns), squeeze=False)
    unsigned = [m for _, maps, signed in columns if not signed for m in maps.values()]
    top = max((float(np.nanmax(m)) for m in unsigned if np.isfinite(m).any()), default=1.0) or 1.0
    border = None if outline is None else np.ma.masked_where(~_edges(outline), np.ones(outline.shape))
    for column, (heading, maps, signed) in enumerate(columns):
        span = max((float(np.nanmax(np.abs(maps[r]))) for r in rows if r in maps and np.isfinite(maps[r]).any()),
                   default=1.0) or 1.0
        image = None
        for row, name in enumerate(rows):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            if name in maps:
                image = axis.imshow(maps[name], cmap="RdBu_r" if signed else "magma", interpolation="none",
                                    vmin=-span if signed else 0.0, vmax=span if signed else top)
                if border is not None:
                    axis.imshow(border, cmap="Greys", vmin=0, vmax=1, alpha=0.55, interpolation="none")
            if row == 0:
                axis.set_title(heading, fontsize=8)
            if column == 0:
                axis.set_ylabel(name, fontsize=8)
        if image is not None:
            bar = figure.colorbar(image, ax=axes[:, column], location="bottom", shrink=0.8)
            bar.set_label("difference" if signed else "attribution (normalised)", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def scatter_figure(table: pd.DataFrame, x: str, y: str, labels: tuple[str, str] | None = None,
                   title: str = "") -> Figure:
    """Faces in a 2-D projection, twice: coloured by domain, and by emotion (circles real,
    triangles synthetic). Points are rasterised inside the PDF and SVG to keep them small."""
    figure = Figure(figsize=(9.0, 4.2), layout="constrained")
    by_domain, by_emotion = figure.subplots(1, 2, sharex=True, sharey=True)
    markers = {"real": "o", "synthetic": "^"}
    domains = list(dict.fromkeys(table["domain"]))
    emotions = sorted(set(table["emotion"]) - {""})
    colors = palette([*domains, *emotions])
    size = float(np.clip(2000 / max(len(table), 1), 3, 20))  # smaller points the more faces
    labelled: set[str] = set()
    for domain in domains:
        part = table[table["domain"] == domain]
        by_domain.scatter(part[x], part[y], s=size, alpha=0.6, color=colors[domain], marker=markers.get(domain, "s"),
                          label=f"{domain} ({len(part)})", rasterized=True, linewidths=0)
        for emotion in emotions:
            faces = part[part["emotion"] == emotion]
            if len(faces):
                by_emotion.scatter(faces[x], faces[y], s=size, alpha=0.6, color=colors[emotion],
                                   marker=markers.get(domain, "s"), rasterized=True, linewidths=0,
                                   label=None if emotion in labelled else emotion)
                labelled.add(emotion)
    by_domain.legend(fontsize=7, markerscale=2, frameon=False)
    by_emotion.legend(fontsize=7, markerscale=2, frameon=False, ncol=2)
    by_domain.set_title("by domain", fontsize=9)
    by_emotion.set_title("by emotion (circles real, triangles synthetic)", fontsize=9)
    for axis in (by_domain, by_emotion):
        axis.set_xlabel((labels or (x, y))[0])
    by_domain.set_ylabel((labels or (x, y))[1])
    if title:
        figure.suptitle(title, fontsize=10)
    return figure
