"""The per-face drill-down that the Saliency, Confusion and Embeddings pages open: the photo
with its detection, the aligned crop, every attribution method for the predicted and the true
class with the map's region shares, the probabilities and the nearest real and synthetic faces.

A page puts :func:`details_button` under a face and calls :func:`show` once per run; the button
remembers the face in the session and :func:`show` opens the dialog on the page it was asked
on, until the dialog is closed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, compute, ui
from fer_core.config import Config
from fer_core.errors import FerCoreError
from fer_core.explain import method_names, overlay
from fer_core.explain.regions import REGIONS
from fer_core.face_detail import FaceMap, FaceView, nearest_faces
from fer_core.models import FerModel

STATE = "drill-face"
#: Faces per dataset among which the neighbours are looked for (a stratified sample, seed 0: the
#: Embeddings page's default, so its features are usually in memory already).
POOL = 1000
#: Neighbours shown per domain.
NEIGHBOURS = 4


@dataclass(frozen=True)
class Opened:
    """The face a drill-down shows: a sample of ``spec``, opened from ``page``; ``pool`` holds
    the datasets (one real, one synthetic) its neighbours are looked for in."""

    page: str
    spec: str
    key: str
    pool: tuple[str, ...]


def _open(face: Opened) -> None:
    st.session_state[STATE] = face


def _close() -> None:
    st.session_state.pop(STATE, None)


def details_button(container: st.delta_generator.DeltaGenerator, page: str, spec: str, key: str,
                   pool: tuple[str, ...], button_key: str) -> None:
    """A small "Details" button that opens the drill-down of face ``key`` of ``spec``."""
    container.button("Details", key=button_key, on_click=_open, args=(Opened(page, spec, key, tuple(pool)),),
                     icon=":material/zoom_in:", help=f"{spec}: {key}: every method, probabilities, neighbours")


def open_face(page: str, spec: str, key: str, pool: tuple[str, ...]) -> None:
    """Open the drill-down of face ``key`` of ``spec`` now (e.g. on a click in a chart)."""
    _open(Opened(page, spec, key, tuple(pool)))


def show(config: Config, model: FerModel | None, page: str) -> None:
    """Open the drill-down asked for on ``page``, if any (a face asked for on another page is
    forgotten: the dialog belongs to the page it was opened from)."""
    face = st.session_state.get(STATE)
    if not isinstance(face, Opened):
        return
    if face.page != page:
        _close()
        return
    _dialog(config, model, face)


@st.dialog("Face detail", width="large", on_dismiss=_close)
def _dialog(config: Config, model: FerModel | None, face: Opened) -> None:
    st.caption(f"{face.spec}: `{face.key}`")
    if model is None:
        st.info("The model is not available here: the face is shown without its probabilities and maps.")
        crop = compute.faces_for_keys(config, face.spec, (face.key,), config.model.input_size)[0]
        st.image(crop, width=192, caption="the crop the model saw")
        return
    try:
        view = compute.face_view(ui.get_recognizer(model, config), model.fingerprint, config, face.spec, face.key,
                                 model.input_size)
    except FerCoreError as exc:
        st.error(f"Cannot read this face: {exc}")
        return
    detection, size = view.face.detection, f"{view.photo.shape[1]}x{view.photo.shape[0]}"
    photo, crop, chart = st.columns([2, 2, 3])
    if view.detected:
        caption = f"the photo ({size}) and the face found in it, detection score {detection.score:.2f}"
    elif compute.dataset(config, face.spec).pre_cropped:
        caption = f"the image as stored ({size}): a face crop, classified whole"
    else:
        caption = f"the photo ({size}): no face found, classified whole"
    photo.image(charts.annotate_faces(view.photo, [detection.box] if view.detected else [],
                                      [detection.keypoints] if view.detected else []),
                width=ui.display_width(view.photo.shape, 220), caption=caption)
    crop.image(model.preprocessing.resize(view.face.image), width=192,
               caption=f"aligned crop at {model.input_size} px{' in grey levels' if model.grayscale else ''}: "
                       "what the model saw")
    verdict = "" if not view.label else (" (right)" if view.label == view.predicted else " (wrong)")
    chart.plotly_chart(charts.probability_bars(view.probabilities, f"true {view.label or '?'}, predicted "
                                               f"{view.predicted} {view.confidence:.0%}{verdict}"),
                       key="drill-probabilities", config={"displayModeBar": False})
    if st.toggle("Every attribution method's map", value=True, key="drill-maps"):
        _maps(config, model, face, view)
    if len(face.pool) >= 1 and st.toggle("Nearest faces in the model's feature space", value=True,
                                         key="drill-neighbours"):
        _neighbours(config, model, face, view.features)


def _maps(config: Config, model: FerModel, face: Opened, view: FaceView) -> None:
    """Every method's map of the face for its predicted class and, when known and other, its true class."""
    targets = {"predicted": view.predicted, **({"true": view.label} if view.label not in ("", view.predicted) else {})}
    methods = method_names()
    steps = [(method, target) for method in methods for target in targets]
    progress = st.progress(0.0, text="Attribution maps...")
    found: dict[tuple[str, str], FaceMap] = {}
    for number, (method, target) in enumerate(steps):
        progress.progress(number / len(steps), text=f"Attribution maps: {number}/{len(steps)} ({method}, "
                                                    f"{target} class)")
        try:
            result = compute.face_map(model, model.fingerprint, config, face.spec, face.key, method, target)
        except FerCoreError as exc:
            st.warning(f"{method}: {exc}")
            continue
        if result is not None:
            found[method, target] = result
    progress.empty()
    st.markdown("**Every method, " + " and ".join(f"{target} class ({emotion})" for target, emotion in targets.items())
                + "**" + ("" if "true" in targets or not view.label else " (the true class is the predicted one)"))
    rows = []
    for column, method in zip(st.columns(len(methods)), methods):
        column.caption(method)
        for target in targets:
            result = found.get((method, target))
            if result is None:
                continue
            regions = {region: share for region, share in result.shares.items() if region != "background"}
            top = max(regions, key=lambda region: np.nan_to_num(regions[region], nan=-1.0))
            column.image(overlay(view.face.image, result.map), width="stretch",
                         caption=f"{target}: {top} {regions[top]:.0%}")
            rows.append({"method": method, "class": f"{target}: {result.target}", **result.shares})
    if rows:
        st.caption("Share of each map's positive attribution per facial region (rows sum to 1):")
        st.dataframe(pd.DataFrame(rows).style.format({region: "{:.1%}" for region in REGIONS}), hide_index=True,
                     key="drill-regions")


def _neighbours(config: Config, model: FerModel, face: Opened, features) -> None:
    """The face's nearest faces of each domain in the pool."""
    limit = int(st.number_input("Among a stratified sample of N faces per dataset (seed 0)", min_value=10,
                                value=POOL, step=250, key="drill-pool"))
    with st.spinner(f"Embedding {' and '.join(face.pool)} (read from the cache where stored)..."):
        pool = compute.embeddings(model, model.fingerprint, config, face.pool, "pca", limit)
    datasets = pool.table["dataset"].str.split("[", n=1).str[0]
    near = nearest_faces(features, pool.table.assign(spec=datasets), pool.features, NEIGHBOURS,
                         exclude=((datasets == face.spec) & (pool.table["key"] == face.key)).to_numpy())
    for domain, part in near.groupby("domain", sort=False):
        spec = part["spec"].iloc[0]
        st.markdown(f"**Nearest {domain} faces** ({spec}; cosine distance d in the model's features)")
        columns = st.columns(NEIGHBOURS)
        images = compute.faces_for_keys(config, spec, tuple(part["key"]), model.input_size)
        for column, image, item in zip(columns, images, part.itertuples()):
            column.image(image, width=110, caption=f"{item.emotion or '?'} -> {item.pred_emotion} "
                                                   f"{item.confidence:.0%}, d={item.cosine_distance:.3f}")
