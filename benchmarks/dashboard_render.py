"""Server time to render the Embeddings page with ~10k cached points and the Saliency browser
with 48 cached overlays (Streamlit's AppTest runs the page script as the server does).

    OMP_NUM_THREADS=1 python benchmarks/dashboard_render.py [--config configs/config.yaml]

Each page is first rendered once cold (results computed and stored in the project's result cache
if missing), then timed: ``warm`` reruns the page in a new session (model loaded, page memo
warm: what a user switching pages or widgets gets); ``restart`` clears every Streamlit memo and
resource first (as a fresh server: the model and datasets are opened again, every result is read
back from the SQLite result cache, faces are found again in the photos). Goal: warm <= 1 s for
both pages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent
HOME = str(REPO / "dashboard" / "Home.py")


def open_page(page: str, widgets: dict[str, object]) -> AppTest:
    app = AppTest.from_file(HOME, default_timeout=3600)
    app.run()
    app.switch_page(str(REPO / "pages" / page)).run()
    for key, value in widgets.items():
        for kind in ("selectbox", "radio", "number_input", "slider"):
            found = [w for w in getattr(app, kind) if w.key == key]
            if found:
                found[0].set_value(value)
                break
        else:
            raise SystemExit(f"{page} has no widget {key!r}")
    return app


def timed_run(app: AppTest) -> float:
    started = time.perf_counter()
    app.run()
    seconds = time.perf_counter() - started
    if app.exception:
        raise SystemExit(f"the page failed: {[e.value for e in app.exception]}")
    return seconds


def measure(page: str, widgets: dict[str, object], repeats: int) -> dict[str, float]:
    import streamlit as st
    cold = timed_run(open_page(page, widgets))
    warm = [timed_run(open_page(page, widgets)) for _ in range(repeats)]
    restart = []
    for _ in range(repeats):
        app = open_page(page, widgets)
        st.cache_data.clear()
        st.cache_resource.clear()
        restart.append(timed_run(app))
    timed_run(open_page(page, widgets))  # leave the memo warm again
    return {"cold_s": round(cold, 3), "warm_s": round(statistics.median(warm), 3),
            "restart_s": round(statistics.median(restart), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="config file (default: $FER_CORE_CONFIG or configs/config.yaml)")
    parser.add_argument("--real", default="ferplus:train", help="real dataset of the Embeddings page")
    parser.add_argument("--points", type=int, default=10000, help="real faces on the Embeddings page")
    parser.add_argument("--projection", default="pca", choices=("pca", "umap", "tsne"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.config:
        os.environ["FER_CORE_CONFIG"] = str(args.config.resolve())
    results = {
        "embeddings": measure("embeddings.py", {"emb-real": args.real, "emb-synthetic": "sd_faces",
                                                "emb-projection": args.projection, "emb-limit": args.points},
                              args.repeats),
        "saliency": measure("saliency.py", {"sal-method": "gradcam", "sal-emotion": "Happiness",
                                            "sal-real": "fer2013:test", "sal-synthetic": "sd_faces",
                                            "sal-count": 24, "sal-shown": 24}, args.repeats),
    }
    results["embeddings"]["points"] = f"{args.points} {args.real} + sd_faces ({args.projection})"
    results["saliency"]["overlays"] = "24 real + 24 synthetic (gradcam)"
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
