"""Server time to render the Embeddings page with ~10k cached points and the Saliency browser
with 48 cached overlays (Streamlit's AppTest runs the page script as the server does).

    OMP_NUM_THREADS=1 python benchmarks/dashboard_render.py [--config configs/config.yaml]

Each page is first rendered once cold (results computed and stored in the project's result cache
if missing), then timed: ``warm`` reruns the page in a new session (model loaded, page memo
warm: what a user switching pages or widgets gets); ``restart`` clears every Streamlit memo and
resource first (as a fresh server: the model and datasets are opened again, every result is read
back from the SQLite result cache, faces are found again in the photos). Goal: warm <= 1 s for
both pages. Every render must show the same charts (the cold render's traces, point for point).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from streamlit.testing.v1 import AppTest

from common import REPO, parse_with_smoke

HOME = str(REPO / "dashboard" / "Home.py")


@dataclass(frozen=True)
class Page:
    """A page script, the widget values it is measured with, and what it shows."""

    script: str
    widgets: Callable[[argparse.Namespace], dict[str, object]]
    shows: Callable[[argparse.Namespace], str]


PAGES = {
    "embeddings": Page("embeddings.py",
                       lambda args: {"emb-real": args.real, "emb-synthetic": "sd_faces",
                                     "emb-projection": args.projection, "emb-limit": args.points},
                       lambda args: f"{args.points} {args.real} + sd_faces ({args.projection})"),
    "saliency": Page("saliency.py",
                     lambda args: {"sal-method": "gradcam", "sal-emotion": "Happiness", "sal-real": "fer2013:test",
                                   "sal-synthetic": "sd_faces", "sal-count": 24, "sal-shown": 24},
                     lambda args: "24 real + 24 synthetic (gradcam)"),
}
SMOKE = {"pages": ["embeddings"], "points": 8, "repeats": 1}
WIDGET_KINDS = ("selectbox", "radio", "number_input", "slider")


def open_page(page: str, widgets: dict[str, object]) -> AppTest:
    """A new session on ``page`` (not run yet) whose widgets start at ``widgets``."""
    app = AppTest.from_file(HOME, default_timeout=3600)
    app.run()
    for key, value in widgets.items():
        app.session_state[key] = value
    return app.switch_page(str(REPO / "pages" / page))


def timed_run(app: AppTest, widgets: dict[str, object]) -> tuple[float, list[str]]:
    """Seconds to run the page, and its charts' traces (JSON)."""
    started = time.perf_counter()
    app.run()
    seconds = time.perf_counter() - started
    if app.exception:
        raise SystemExit(f"the page failed: {[e.value for e in app.exception]}")
    missing = set(widgets) - {widget.key for kind in WIDGET_KINDS for widget in getattr(app, kind)}
    if missing:
        raise SystemExit(f"the page has no widgets {sorted(missing)}")
    return seconds, [json.dumps(json.loads(chart.proto.spec)["data"], sort_keys=True)
                     for chart in app.get("plotly_chart")]


def measure_page(page: str, widgets: dict[str, object], repeats: int) -> dict[str, object]:
    """Cold, median warm and median restart seconds of ``page``; ``same_charts``: whether
    every render showed the cold render's charts."""
    import streamlit as st
    cold, charts = timed_run(open_page(page, widgets), widgets)
    runs = {"warm": [timed_run(open_page(page, widgets), widgets) for _ in range(repeats)], "restart": []}
    for _ in range(repeats):
        app = open_page(page, widgets)
        st.cache_data.clear()
        st.cache_resource.clear()
        runs["restart"].append(timed_run(app, widgets))
    timed_run(open_page(page, widgets), widgets)  # leave the memo warm again
    return {"cold_s": round(cold, 3),
            **{f"{kind}_s": round(statistics.median(s for s, _ in done), 3) for kind, done in runs.items()},
            "charts": len(charts), "same_charts": all(shown == charts for done in runs.values() for _, shown in done)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="config file (default: $FER_CORE_CONFIG or configs/config.yaml)")
    parser.add_argument("--pages", nargs="+", choices=list(PAGES), default=list(PAGES))
    parser.add_argument("--real", default="ferplus:train", help="real dataset of the Embeddings page")
    parser.add_argument("--points", type=int, default=10000, help="real faces on the Embeddings page")
    parser.add_argument("--projection", default="pca", choices=("pca", "umap", "tsne"))
    parser.add_argument("--repeats", type=int, default=3)
    return parse_with_smoke(parser, argv, SMOKE)


def measure(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """:func:`measure_page` of each page asked for, with what it shows."""
    if args.config:
        os.environ["FER_CORE_CONFIG"] = str(args.config.resolve())
    return {name: {**measure_page(PAGES[name].script, PAGES[name].widgets(args), args.repeats),
                   "shows": PAGES[name].shows(args)} for name in args.pages}


def report(args: argparse.Namespace, results: dict[str, dict[str, object]]) -> int:
    """Print the figures as JSON; the exit status (1 when a render showed other charts)."""
    print(json.dumps(results, indent=2))
    return 0 if all(page["same_charts"] for page in results.values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return report(args, measure(args))


if __name__ == "__main__":
    raise SystemExit(main())
