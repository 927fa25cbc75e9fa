"""Plotly figures shared by the pages, in the dashboard's fixed colours."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from dashboard.ui import DOMAIN_COLORS, EMOTION_COLORS

if TYPE_CHECKING:
    import pandas as pd


def probability_bars(probabilities: Mapping[str, float], title: str = "") -> go.Figure:
    """Horizontal bars of one face's class probabilities."""
    names = list(probabilities)
    figure = go.Figure(go.Bar(
        x=[probabilities[n] for n in names], y=names, orientation="h",
        marker_color=[EMOTION_COLORS.get(n, "#999") for n in names],
        text=[f"{probabilities[n]:.1%}" for n in names], textposition="auto"))
    figure.update_layout(title=title, xaxis=dict(range=[0, 1], tickformat=".0%"), yaxis=dict(autorange="reversed"),
                         height=300, margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return figure


def per_class_bars(per_class: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Grouped precision / recall / F1 bars per class."""
    emotions = list(per_class)
    figure = go.Figure([
        go.Bar(name=metric.capitalize() if metric != "f1" else "F1", x=emotions,
               y=[per_class[e][metric] for e in emotions])
        for metric in ("precision", "recall", "f1")])
    figure.update_layout(barmode="group", yaxis=dict(range=[0, 1], title="score"), height=360,
                         margin=dict(l=10, r=10, t=10, b=10))
    return figure


def confusion_heatmap(confusion: Mapping[str, Any], normalized: bool) -> go.Figure:
    """The confusion matrix (rows: true class, columns: predicted class, which may include
    classes the test set lacks)."""
    labels: Sequence[str] = confusion["labels"]
    predicted: Sequence[str] = confusion.get("predicted", labels)
    values = np.asarray(confusion["normalized" if normalized else "counts"], dtype=float)
    text = [[f"{v:.0%}" if normalized else f"{int(v)}" for v in row] for row in values]
    figure = go.Figure(go.Heatmap(z=values, x=list(predicted), y=list(labels), text=text, texttemplate="%{text}",
                                  colorscale="Blues",
                                  hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>"))
    figure.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis=dict(autorange="reversed"),
                         height=480, margin=dict(l=10, r=10, t=10, b=10))
    return figure


def annotate_faces(rgb: np.ndarray, boxes: Sequence[Sequence[float]],
                   keypoints: Sequence[np.ndarray | None]) -> np.ndarray:
    """A copy of ``rgb`` with numbered face boxes and keypoints drawn on it."""
    import cv2
    out = rgb.copy()
    thickness = max(2, round(max(rgb.shape[:2]) / 300))
    for number, (box, points) in enumerate(zip(boxes, keypoints), start=1):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 200, 255), thickness)
        cv2.putText(out, str(number), (x0, max(0, y0 - 2 * thickness)), cv2.FONT_HERSHEY_SIMPLEX,
                    thickness / 2, (0, 200, 255), thickness)
        for x, y in ([] if points is None else points):
            cv2.circle(out, (int(round(x)), int(round(y))), thickness + 1, (255, 60, 60), -1)
    return out


def training_curves(history: pd.DataFrame) -> go.Figure:
    """Loss (left axis) and validation accuracy / macro-F1 (right axis) per epoch."""
    from plotly.subplots import make_subplots
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    for column, dash in (("train_loss", "solid"), ("val_loss", "dot")):
        if column in history:
            figure.add_trace(go.Scatter(x=history["epoch"], y=history[column], name=column.replace("_", " "),
                                        line=dict(dash=dash, color="#444")), secondary_y=False)
    for column, color in (("val_accuracy", "#1f77b4"), ("val_macro_f1", "#ff7f0e")):
        if column in history:
            figure.add_trace(go.Scatter(x=history["epoch"], y=history[column], name=column.replace("_", " "),
                                        line=dict(color=color)), secondary_y=True)
    figure.update_layout(height=360, margin=dict(l=10, r=10, t=10, b=10), xaxis_title="epoch")
    figure.update_yaxes(title_text="loss", secondary_y=False)
    figure.update_yaxes(title_text="score", range=[0, 1], secondary_y=True)
    return figure


def count_bars(counts: Mapping[str, int], title: str, by_emotion: bool = False) -> go.Figure:
    """Bars of counts by category (in the emotion colours when the categories are emotions)."""
    names = list(counts)
    colors = ([EMOTION_COLORS.get(n, EMOTION_COLORS.get(n.capitalize(), "#999")) for n in names]
              if by_emotion else "#888")
    figure = go.Figure(go.Bar(x=names, y=[counts[n] for n in names], marker_color=colors,
                              text=[counts[n] for n in names], textposition="auto"))
    figure.update_layout(title=title, height=300, margin=dict(l=10, r=10, t=40, b=10))
    return figure


def grid_verdicts(rgb: np.ndarray, cells: pd.DataFrame) -> np.ndarray:
    """A grid image with each cell outlined: green when its face was accepted, red when rejected."""
    import cv2
    out = rgb.copy()
    thickness = max(2, round(max(rgb.shape[:2]) / 400))
    for cell in cells.itertuples():
        if getattr(cell, "cell_x0", None) is None or np.isnan(cell.cell_x0):
            continue
        color = (40, 200, 40) if cell.accepted else (230, 40, 40)
        x0, y0, x1, y1 = (int(v) for v in (cell.cell_x0, cell.cell_y0, cell.cell_x1, cell.cell_y1))
        cv2.rectangle(out, (x0 + thickness, y0 + thickness), (x1 - thickness, y1 - thickness), color, thickness)
        if not np.isnan(getattr(cell, "face_x0", np.nan)):
            cv2.rectangle(out, (int(cell.face_x0), int(cell.face_y0)), (int(cell.face_x1), int(cell.face_y1)),
                          (255, 255, 0), max(1, thickness // 2))
    return out


def delta_bars(deltas: pd.DataFrame) -> go.Figure:
    """Per-class precision / recall / F1 differences (second run minus first), one group per emotion."""
    figure = go.Figure([
        go.Bar(name=metric if metric != "f1" else "F1", x=deltas["emotion"], y=deltas[f"{metric}_delta"],
               marker_color=[EMOTION_COLORS.get(e, "#999") for e in deltas["emotion"]],
               marker_pattern_shape=shape, text=[f"{v:+.2f}" for v in deltas[f"{metric}_delta"]])
        for metric, shape in (("precision", "/"), ("recall", "."), ("f1", ""))])
    figure.update_layout(barmode="group", height=340, yaxis_title="second - first",
                         margin=dict(l=10, r=10, t=10, b=10))
    return figure


#: Colours of the correctness of a prediction on the Embeddings page.
CORRECTNESS_COLORS = {"correct": "#2ca02c", "wrong": "#d62728"}


def embedding_scatter(points: pd.DataFrame, color_by: str, title: str = "",
                      thumbnails: Sequence[str] | None = None) -> go.Figure:
    """A WebGL scatter of projected embeddings (columns ``x``, ``y``, ``domain``, ``emotion``,
    ``correct``, ``key``), one trace per colour group in the dashboard's colours; each point's
    ``customdata`` is its row position in ``points`` (for selections) and, when ``thumbnails``
    (one image ``data:`` URI per row) are given, its face (for :data:`HOVER_FACES_SCRIPT`)."""
    palettes = {"domain": DOMAIN_COLORS, "emotion": EMOTION_COLORS, "correctness": CORRECTNESS_COLORS}
    if color_by not in palettes:
        raise ValueError(f"color_by: expected one of {list(palettes)}, got {color_by!r}")
    groups = points["correct"].map({True: "correct", False: "wrong"}) if color_by == "correctness" \
        else points[color_by]
    figure = go.Figure()
    symbols = {"real": "circle", "synthetic": "diamond"}
    for name, color in palettes[color_by].items():
        rows = np.flatnonzero((groups == name).to_numpy())
        if not len(rows):
            continue
        part = points.iloc[rows]
        customdata = rows if thumbnails is None else [[int(row), thumbnails[row]] for row in rows]
        figure.add_trace(go.Scattergl(
            x=part["x"], y=part["y"], mode="markers", name=f"{name} ({len(rows)})", customdata=customdata,
            marker=dict(color=color, size=5, opacity=0.75,
                        symbol=[symbols.get(d, "circle") for d in part["domain"]]),
            text=part["key"] + "<br>" + part["domain"] + " " + part["emotion"],
            hovertemplate="%{text}<extra></extra>"))
    figure.update_layout(title=title, height=560,  # no dragmode: a click selects a point (lasso: the toolbar)
                         margin=dict(l=10, r=10, t=70 if title else 40, b=10),
                         legend=dict(itemsizing="constant", orientation="h", yanchor="bottom", y=1.0, x=0))
    return figure


#: Shows the face of the point under the mouse beside it, on every plotly chart of the page whose
#: points carry an image ``data:`` URI in their ``customdata`` (:func:`embedding_scatter`); run
#: once per browser page (``st.html(..., unsafe_allow_javascript=True)``), it keeps attaching to
#: the charts Streamlit draws anew.
HOVER_FACES_SCRIPT = """<script>
(() => {
  if (window.ferHoverFaces) return;
  window.ferHoverFaces = true;
  const face = document.createElement("img");
  face.id = "fer-hover-face";
  face.alt = "face under the mouse";
  face.style.cssText = "position:fixed;z-index:1000000;width:112px;height:112px;display:none;pointer-events:none;"
    + "border:2px solid #fff;border-radius:4px;box-shadow:0 2px 10px rgba(0,0,0,.45);background:#000";
  document.body.appendChild(face);
  const uriOf = (plot, point) => {
    let data = point.customdata;
    if (data === undefined && plot.data && plot.data[point.curveNumber]) {
      data = (plot.data[point.curveNumber].customdata || [])[point.pointNumber];
    }
    return Array.isArray(data) ? data.find((v) => typeof v === "string" && v.startsWith("data:image/")) : null;
  };
  const attach = () => {
    for (const plot of document.querySelectorAll(".js-plotly-plot")) {
      if (plot.ferHoverFaces || typeof plot.on !== "function") continue;
      plot.ferHoverFaces = true;
      plot.on("plotly_hover", (event) => {
        const point = event.points && event.points[0];
        const uri = point && uriOf(plot, point);
        if (!uri) return;
        const mouse = event.event || {};
        face.src = uri;
        face.style.left = Math.min((mouse.clientX || 0) + 18, window.innerWidth - 124) + "px";
        face.style.top = Math.min((mouse.clientY || 0) + 18, window.innerHeight - 124) + "px";
        face.style.display = "block";
      });
      plot.on("plotly_unhover", () => { face.style.display = "none"; });
    }
  };
  attach();
  setInterval(attach, 500);
})();
</script>"""


def map_image(values: np.ndarray, title: str, signed: bool = False) -> go.Figure:
    """One attribution map (e.g. a per-class mean over aligned faces) as a heatmap; ``signed``
    maps (differences) use a diverging scale centred on zero."""
    limit = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    limit = limit or 1.0
    figure = go.Figure(go.Heatmap(z=values, colorscale="RdBu_r" if signed else "Jet",
                                  zmin=-limit if signed else 0, zmax=limit, showscale=True))
    figure.update_layout(title=title, height=300, width=300, margin=dict(l=10, r=10, t=40, b=10),
                         yaxis=dict(autorange="reversed", scaleanchor="x", visible=False), xaxis=dict(visible=False))
    return figure


def domain_bars(table: pd.DataFrame, category: str, value: str, low: str | None = None, high: str | None = None,
                title: str = "", percent: bool = True) -> go.Figure:
    """Grouped bars of ``value`` per ``category`` for each domain (column ``domain``), with
    ``low``/``high`` confidence bounds as error bars when given."""
    figure = go.Figure()
    for domain, color in DOMAIN_COLORS.items():
        part = table[table["domain"] == domain]
        if part.empty:
            continue
        error = None
        if low and high:
            error = dict(type="data", symmetric=False, array=part[high] - part[value],
                         arrayminus=part[value] - part[low])
        figure.add_trace(go.Bar(name=domain, x=part[category], y=part[value], marker_color=color, error_y=error))
    figure.update_layout(barmode="group", title=title, height=360, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                         yaxis=dict(tickformat=".0%" if percent else None))
    return figure


def accuracy_matrix(matrix: pd.DataFrame, title: str = "", notes: pd.DataFrame | None = None) -> go.Figure:
    """Trained-on (rows) x tested-on (columns) accuracy; ``notes`` (same layout, e.g. the faces
    scored) go under each cell's score."""
    values = matrix.to_numpy(dtype=float)
    under = notes.reindex(index=matrix.index, columns=matrix.columns).to_numpy() if notes is not None else None
    text = [["" if np.isnan(v) else f"{v:.1%}" + (f"<br>{under[i][j]}" if under is not None else "")
             for j, v in enumerate(row)] for i, row in enumerate(values)]
    figure = go.Figure(go.Heatmap(z=values, x=[str(c) for c in matrix.columns], y=[str(i) for i in matrix.index],
                                  text=text, texttemplate="%{text}", colorscale="Viridis", zmin=0, zmax=1,
                                  hovertemplate="train %{y}<br>test %{x}<br>%{text}<extra></extra>"))
    figure.update_layout(title=title, xaxis_title="test set", yaxis_title="trained on",
                         yaxis=dict(autorange="reversed"),
                         height=max(380, 80 + 45 * len(matrix)), margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return figure


def fraction_lines(table: pd.DataFrame, metric: str = "accuracy") -> go.Figure:
    """RQ2: ``metric`` against the synthetic share of the training set, one line per test set
    (coloured by its domain, dashed for synthetic ones), with the accuracy's 95% CI."""
    figure = go.Figure()
    for test_set, part in table.groupby("test_set", sort=True):
        domain = part["test_domain"].iloc[0]
        error = None
        if metric == "accuracy":
            error = dict(type="data", symmetric=False, array=part["accuracy_ci_high"] - part[metric],
                         arrayminus=part[metric] - part["accuracy_ci_low"])
        figure.add_trace(go.Scatter(x=part["synthetic_fraction"], y=part[metric], mode="lines+markers",
                                    name=f"{test_set} ({domain})", error_y=error,
                                    line=dict(color=DOMAIN_COLORS.get(domain, "#444"),
                                              dash="dash" if domain == "synthetic" else "solid")))
    figure.update_layout(xaxis=dict(title="synthetic share of the training set", tickformat=".0%"),
                         yaxis=dict(title=metric.replace("_", " "), tickformat=".0%"), height=380,
                         margin=dict(l=10, r=10, t=10, b=10))
    return figure


def emotion_bars(table: pd.DataFrame, value: str, group: str | None = None, title: str = "") -> go.Figure:
    """Bars of ``value`` per emotion in the emotion colours; one bar group per ``group`` value
    (told apart by hatching) when given."""
    figure = go.Figure()
    groups = [(None, table)] if group is None else list(table.groupby(group, sort=False))
    shapes = ["", "/", ".", "x", "+", "\\", "-", "|"]
    for number, (name, part) in enumerate(groups):
        figure.add_trace(go.Bar(x=part["emotion"], y=part[value], name=str(name) if name is not None else value,
                                marker_color=[EMOTION_COLORS.get(e, "#999") for e in part["emotion"]],
                                marker_pattern_shape=shapes[number % len(shapes)],
                                text=[f"{v:.0%}" for v in part[value]], textposition="auto",
                                customdata=part["support"] if "support" in part else None,
                                hovertemplate="%{x}: %{y:.1%}" + (" of %{customdata} faces" if "support" in part
                                                                  else "") + "<extra></extra>"))
    figure.update_layout(barmode="group", title=title, height=360, yaxis=dict(range=[0, 1], tickformat=".0%"),
                         showlegend=group is not None, margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return figure
