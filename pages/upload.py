"""Upload: photos -> detected faces, aligned crops, emotion probabilities and attribution overlays."""

import io
import json

import streamlit as st
from PIL import Image

from dashboard import charts, compute, ui
from fer_core.errors import FerCoreError, ImageDecodeError
from fer_core.explain import method_names
from fer_core.faces import whole_image_face
from fer_core.images import load_rgb
from fer_core.views import model_files


def png_bytes(rgb) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


st.title("Upload a photo")
config = ui.get_config()
if config is not None:
    models = model_files(config)
    model = None
    if not models:
        ui.get_model(config)  # explains what is missing and how to get a model
    else:
        left, right = st.columns(2)
        choice = left.selectbox("Model", list(models), key="upload-model")
        method = right.selectbox("Attribution method", method_names(), index=method_names().index("gradcam"),
                                 key="upload-method")
        try:
            model = ui.load_model_file(config, models[choice])
        except FerCoreError as exc:
            st.error(f"Cannot load {models[choice]}: {exc}")
    crop_size = model.input_size if model else config.model.input_size
    pipeline = ui.get_face_pipeline(config, crop_size)
    st.caption(f"Face detector: {pipeline.detector.name if pipeline.detector else 'none (whole image)'}")
    trained = model is not None and ui.head_is_trained(model)
    if model is not None and not trained:
        st.warning("The loaded model's classifier head is untrained: faces are shown, predictions are withheld.")

    uploads = st.file_uploader("Photos with one or more faces", type=["jpg", "jpeg", "png", "webp", "bmp"],
                               accept_multiple_files=True)
    if not uploads:
        ui.empty_state("Upload a photo to detect its faces and predict their emotions.")
    whole_image = st.checkbox("Use the whole image when no face is found", value=True)
    for upload in uploads or []:
        st.subheader(upload.name)
        try:
            rgb = load_rgb(upload.getvalue())
        except ImageDecodeError as exc:
            st.error(f"Cannot read {upload.name}: {exc}")
            continue
        faces = pipeline.extract(rgb)
        if not faces:
            st.warning("No face found in this image.")
            if not whole_image:
                continue
            faces = [whole_image_face(rgb, crop_size)]
        st.image(charts.annotate_faces(rgb, [f.detection.box for f in faces],
                                       [f.detection.keypoints for f in faces]),
                 caption=f"{len(faces)} face(s)", width=ui.display_width(rgb.shape, 360))
        results = []
        crops = [f.image for f in faces]
        if trained:
            labels, scores = ui.get_recognizer(model, config).predict_emotions(crops)
            # the recogniser's predicted classes as targets: no second forward to find them
            heat = compute.overlays(model, crops, method, tuple(int(i) for i in scores.argmax(axis=1)))
        for number, face in enumerate(faces, start=1):
            crop, chart = st.columns([1, 2])
            crop.image(face.image, caption=f"face {number} (aligned), score {face.detection.score:.2f}: what the "
                       f"model sees at {crop_size} px", width=200)
            result = {"face": number, "box": [float(v) for v in face.detection.box],
                      "detection_score": float(face.detection.score)}
            if trained:
                probabilities = dict(zip(model.emotions, map(float, scores[number - 1])))
                crop.image(heat[number - 1], caption=f"face {number}: {method} map of {labels[number - 1]}",
                           width=200)
                crop.download_button("Overlay (PNG)", png_bytes(heat[number - 1]), mime="image/png",
                                     file_name=f"{upload.name}.face{number}.{method}.png",
                                     key=f"png-{upload.name}-{number}")
                chart.plotly_chart(charts.probability_bars(probabilities, f"face {number}: {labels[number - 1]}"),
                                   key=f"{upload.name}-{number}")
                result.update(emotion=labels[number - 1], probabilities=probabilities,
                              attribution={"method": method, "target": labels[number - 1]})
            results.append(result)
        st.download_button("Download the result (JSON)",
                           json.dumps({"image": upload.name, "model": model.fingerprint if model else None,
                                       "faces": results}, indent=2),
                           file_name=f"{upload.name}.json", mime="application/json", key=f"json-{upload.name}")
