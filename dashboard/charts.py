"""Plotly figures shared by the pages, in the dashboard's fixed colours."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from dashboard.ui import EMOTION_COLORS


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
    """The confusion matrix (rows: true class, columns: predicted class)."""
    labels: Sequence[str] = confusion["labels"]
    values = np.asarray(confusion["normalized" if normalized else "counts"], dtype=float)
    text = [[f"{v:.0%}" if normalized else f"{int(v)}" for v in row] for row in values]
    figure = go.Figure(go.Heatmap(z=values, x=list(labels), y=list(labels), text=text, texttemplate="%{text}",
                                  colorscale="Blues", hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>"))
    figure.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis=dict(autorange="reversed"),
                         height=480, margin=dict(l=10, r=10, t=10, b=10))
    return figure


def annotate_faces(rgb: np.ndarray, boxes: Sequence[Sequence[float]], keypoints: Sequence[np.ndarray | None]) -> np.ndarray:
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
