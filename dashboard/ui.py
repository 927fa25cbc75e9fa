"""Shared dashboard pieces: page registry, cached loaders, colours and empty states.

Pages call these and ``fer_core``; no ML logic lives in the dashboard.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from fer_core.config import ENV_CONFIG, Config, load_config
from fer_core.errors import FerCoreError, ModelLoadError
from fer_core.faces import FacePipeline
from fer_core.jobs.options import JobOptions
from fer_core.labels import DOMAIN_COLORS, EMOTION_COLORS  # noqa: F401  (one colour per emotion and domain, every page)
from fer_core.models import EmotionRecognizer, FerModel
from fer_core.runs import Run, list_runs
from fer_core.workflows import load_configured_model, resolve_weights

REPO = Path(__file__).resolve().parent.parent
PAGES_DIR = REPO / "pages"


@dataclass(frozen=True)
class PageSpec:
    """A page script in the top-level ``pages/`` folder."""

    file: str
    title: str
    icon: str


PAGE_SPECS = (
    PageSpec("home.py", "Home", ":material/home:"),
    PageSpec("baseline_metrics.py", "Baseline metrics", ":material/analytics:"),
    PageSpec("confusion.py", "Confusion", ":material/grid_on:"),
    PageSpec("saliency.py", "Saliency browser", ":material/visibility:"),
    PageSpec("embeddings.py", "Embeddings", ":material/scatter_plot:"),
    PageSpec("cross_domain.py", "Cross-domain", ":material/compare_arrows:"),
    PageSpec("upload.py", "Upload", ":material/upload:"),
    PageSpec("synthetic.py", "Synthetic data", ":material/auto_awesome:"),
    PageSpec("runs.py", "Runs", ":material/history:"),
)


def navigation_pages() -> list:
    """``st.Page`` objects for every registered page (absolute paths)."""
    return [st.Page(PAGES_DIR / spec.file, title=spec.title, icon=spec.icon, default=i == 0)
            for i, spec in enumerate(PAGE_SPECS)]


def page_link(file: str) -> None:
    """A link to another page by its file name."""
    spec = next(s for s in PAGE_SPECS if s.file == file)
    st.page_link(str(PAGES_DIR / spec.file), label=spec.title, icon=spec.icon)


def get_config() -> Config | None:
    """The project's config, or an error box and ``None`` when it is invalid."""
    try:
        return load_config()
    except FerCoreError as exc:
        st.error(f"The configuration is invalid: {exc}")
        st.code("configs/config.yaml", language="text")
        return None


@st.cache_resource(show_spinner="Loading model...")
def _load_model(config: Config, weights: str, mtime: float) -> FerModel:
    return load_configured_model(config, weights)


def config_file() -> Path | None:
    """The config file in use when it is not the project's default (``$FER_CORE_CONFIG``)."""
    value = os.environ.get(ENV_CONFIG)
    return Path(value) if value else None


def load_model_file(config: Config, weights: Path) -> FerModel:
    """The model in ``weights``, loaded once per file version."""
    return _load_model(config, str(weights), weights.stat().st_mtime)


def get_model(config: Config) -> FerModel | None:
    """The configured model, loaded once per file version; ``None`` with an explanation if absent."""
    try:
        weights = resolve_weights(config)
        return _load_model(config, str(weights), weights.stat().st_mtime)
    except ModelLoadError as exc:
        empty_state(f"No usable model: {exc}",
                    "fer-core evaluate --model path/to/weights.safetensors --dataset fer2013:test")
        return None


@st.cache_resource(show_spinner=False)
def job_options(config: Config) -> JobOptions:
    """The config resolved once, as the jobs resolve it (:meth:`JobOptions.from_config`: the device
    ``model.device`` names, ``auto`` included), without progress bars."""
    return JobOptions.from_config(config, progress=False)


@st.cache_resource(show_spinner="Loading face detector...")
def get_face_pipeline(config: Config, crop_size: int) -> FacePipeline:
    """The configured face pipeline (:meth:`JobOptions.face_pipeline`), built once."""
    return job_options(config).face_pipeline(crop_size)


def get_recognizer(model: FerModel, config: Config) -> EmotionRecognizer:
    """An HSEmotion-style recognizer around ``model``, on the configured inference backend."""
    return EmotionRecognizer(model, backend=job_options(config).inference.backend)


def head_is_trained(model: FerModel) -> bool:
    """False for backbones loaded with a fresh head: their outputs mean nothing."""
    return bool(model.provenance.get("head_trained", True))


def empty_state(message: str, command: str | None = None) -> None:
    """Say what is missing and, when there is one, the command that fills it."""
    st.info(message)
    if command:
        st.code(command, language="bash")


def display_width(shape: tuple[int, ...], width: int) -> int | str:
    """``width`` for ``st.image``, or ``"content"`` when scaling to it would leave the image
    less than one pixel high (a 400x1 strip)."""
    height, image_width = shape[:2]
    return width if height * width >= image_width else "content"


def finished_evaluations(config: Config | None) -> list[Run]:
    """Every finished evaluation run; with a config but none, an empty state saying how to make one."""
    if config is None:
        return []
    runs = [r for r in list_runs(config.resolve(config.paths.runs_dir), kind="evaluation") if r.complete]
    if not runs:
        empty_state("No finished evaluation runs yet. Evaluate a model on a dataset:",
                    "fer-core evaluate --dataset ferplus:test")
    return runs


def contact_sheet_pages(report: Path | None) -> list[Path]:
    """The contact sheet pages that ``fer-core synth report`` listed in ``report`` (its
    ``report.json``), in order and found beside it; none without a report."""
    if report is None:
        return []
    listed = json.loads(report.read_text()).get("contact_sheets", [])
    return [page for page in (report.parent / Path(name).name for name in listed) if page.is_file()]
