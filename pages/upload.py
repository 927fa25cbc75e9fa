"""Upload: a photo -> detected faces, aligned crops and emotion probabilities."""

import json

import streamlit as st

from dashboard import charts, ui
from fer_core.errors import ImageDecodeError
from fer_core.faces import whole_image_face
from fer_core.images import load_rgb
from fer_core.labels import EMOTIONS

st.title("Upload a photo")
config = ui.get_config()
if config is not None:
    model = ui.get_model(config)
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
                 caption=f"{len(faces)} face(s)", width=360)
        results = []
        if trained:
            labels, scores = ui.get_recognizer(model).predict_emotions([f.image for f in faces])
        for number, face in enumerate(faces, start=1):
            crop, chart = st.columns([1, 2])
            crop.image(face.image, caption=f"face {number} (aligned), score {face.detection.score:.2f}: what the "
                       f"model sees at {crop_size} px", width=200)
            result = {"face": number, "box": [float(v) for v in face.detection.box],
                      "detection_score": float(face.detection.score)}
            if trained:
                probabilities = dict(zip(EMOTIONS, map(float, scores[number - 1])))
                chart.plotly_chart(charts.probability_bars(probabilities, f"face {number}: {labels[number - 1]}"),
                                   key=f"{upload.name}-{number}")
                result.update(emotion=labels[number - 1], probabilities=probabilities)
            results.append(result)
        st.download_button("Download the result (JSON)", json.dumps({"image": upload.name, "faces": results}, indent=2),
                           file_name=f"{upload.name}.json", mime="application/json", key=f"json-{upload.name}")
