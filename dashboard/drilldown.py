"""The per-face drill-down that the Saliency, Confusion and Embeddings pages open: the photo
with its detection, the aligned crop, every attribution method for the predicted and the true
class with the map's region shares, the probabilities and the nearest real and synthetic faces.

A page puts :func:`details_button` under a face and calls :func:`show` once per run; the button
remembers the face in the session and :func:`show` opens the dialog on the page it was asked
on, until the dialog is closed."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from dashboard import charts, compute, ui
from fer_core.config import Config
from fer_core.errors import FerCoreError
from fer_core.explain import method_names, overlay
from fer_core.explain.regions import REGIONS
from fer_core.face_detail import nearest_faces
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
    crop.image(view.face.image, width=192, caption=f"aligned crop at {model.input_size} px: what the model saw")
    verdict = "" if not view.label else (" (right)" if view.label == view.predicted else " (wrong)")
    chart.plotly_chart(charts.probability_bars(view.probabilities, f"true {view.label or '?'}, predicted "
                                               f"{view.predicted} {view.confidence:.0%}{verdict}"),
                       key="drill-probabilities", config={"displayModeBar": False})
    if st.toggle("Every attribution method's map", value=True, key="drill-maps"):
        _maps(config, model, face, view.face.image, view.label)
    if len(face.pool) >= 1 and st.toggle("Nearest faces in the model's feature space", value=True,
                                         key="drill-neighbours"):
        _neighbours(config, model, face, view.features)


def _maps(config: Config, model: FerModel, face: Opened, crop, label: str) -> None:
    """Every method's map of the face for its predicted and (when known and different) true class."""
    targets = ["predicted"] + (["true"] if label else [])
    methods = method_names()
    progress = st.progress(0.0, text="Attribution maps...")
    found: dict[tuple[str, str], object] = {}
    for number, (method, target) in enumerate((m, t) for m in methods for t in targets):
        progress.progress(number / (len(methods) * len(targets)),
                          text=f"Attribution maps: {number}/{len(methods) * len(targets)} ({method}, {target} class)")
        try:
            found[method, target] = compute.face_map(model, model.fingerprint, config, face.spec, face.key, method,
                                                     target)
        except FerCoreError as exc:
            st.warning(f"{method}: {exc}")
    progress.empty()
    shown = [t for t in targets if t == "predicted" or any(
        found.get((m, t)) is not None and found[m, "predicted"] is not None
        and found[m, t].target != found[m, "predicted"].target for m in methods)]
    st.markdown("**Every method, " + " and ".join(
        f"{t} class ({next((f.target for (m, tt), f in found.items() if tt == t and f is not None), '?')})"
        for t in shown) + "**" + ("" if len(shown) == len(targets) else " (the true class is the predicted one)"))
    columns = st.columns(len(methods))
    rows = []
    for column, method in zip(columns, methods):
        column.caption(method)
        for target in shown:
            result = found.get((method, target))
            if result is None:
                continue
            top = max((r for r in REGIONS if r != "background"), key=lambda r: result.shares.get(r, 0) or 0)
            column.image(overlay(crop, result.map), width="stretch",
                         caption=f"{target}: {top} {result.shares.get(top, float('nan')):.0%}")
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
