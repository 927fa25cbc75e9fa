"""Shared dashboard pieces: page registry, cached loaders, colours and empty states.

Pages call these and ``fer_core``; no ML logic lives in the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from fer_core.config import Config, load_config
from fer_core.errors import FerCoreError, ModelLoadError
from fer_core.faces import FacePipeline
from fer_core.models import EmotionRecognizer, FerModel
from fer_core.workflows import load_configured_model, resolve_weights

REPO = Path(__file__).resolve().parent.parent
PAGES_DIR = REPO / "pages"

#: One colour per emotion and per domain, on every page.
EMOTION_COLORS = {
    "Anger": "#d62728", "Contempt": "#8c564b", "Disgust": "#2ca02c", "Fear": "#9467bd",
    "Happiness": "#ffbf00", "Neutral": "#7f7f7f", "Sadness": "#1f77b4", "Surprise": "#e377c2",
}
DOMAIN_COLORS = {"real": "#17becf", "synthetic": "#ff7f0e"}


@dataclass(frozen=True)
class PageSpec:
    """A page script in the top-level ``pages/`` folder."""

    file: str
    title: str
    icon: str


PAGE_SPECS = (
    PageSpec("home.py", "Home", ":material/home:"),
    PageSpec("upload.py", "Upload", ":material/upload:"),
    PageSpec("baseline_metrics.py", "Baseline metrics", ":material/analytics:"),
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


def get_model(config: Config) -> FerModel | None:
    """The configured model, loaded once per file version; ``None`` with an explanation if absent."""
    try:
        weights = resolve_weights(config)
        return _load_model(config, str(weights), weights.stat().st_mtime)
    except ModelLoadError as exc:
        empty_state(f"No usable model: {exc}",
                    "fer-core evaluate --model path/to/weights.safetensors --dataset fer2013:test")
        return None


@st.cache_resource(show_spinner="Loading face detector...")
def get_face_pipeline(config: Config, crop_size: int) -> FacePipeline:
    """The configured face pipeline, built once."""
    return FacePipeline.from_config(config, crop_size=crop_size)


def get_recognizer(model: FerModel) -> EmotionRecognizer:
    """An HSEmotion-style recognizer around ``model``."""
    return EmotionRecognizer(model)


def head_is_trained(model: FerModel) -> bool:
    """False for backbones loaded with a fresh head: their outputs mean nothing."""
    return bool(model.provenance.get("head_trained", True))


def empty_state(message: str, command: str | None = None) -> None:
    """Say what is missing and, when there is one, the command that fills it."""
    st.info(message)
    if command:
        st.code(command, language="bash")

