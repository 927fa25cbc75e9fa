"""Home: what is installed, what each research question needs, what to do next."""

import streamlit as st

from dashboard import ui
from fer_core.data import available_datasets
from fer_core.runs import list_runs

st.title("Facial emotion recognition on real and synthetic faces")
st.caption("fer_core: EfficientNet emotion models, 8 HSEmotion classes, real vs Stable Diffusion faces.")

config = ui.get_config()
if config is not None:
    model = ui.get_model(config)
    datasets = available_datasets(config.resolve(config.data.root))
    runs = list_runs(config.resolve(config.paths.runs_dir))

    left, middle, right = st.columns([2, 1, 1])
    left.metric("Model", model.architecture if model else "none")
    middle.metric("Datasets", len(datasets))
    right.metric("Evaluation runs", len([r for r in runs if r.kind == "evaluation"]))

    st.subheader("Installed")
    if model is not None:
        st.write(f"**Model** `{model.architecture}` at {model.input_size}px, fingerprint `{model.fingerprint}`")
        if not ui.head_is_trained(model):
            st.warning("This model's classifier head is untrained (a backbone-only file): its predictions "
                       "are withheld until it is fine-tuned.")
    if datasets:
        st.write("**Datasets** " + ", ".join(f"`{d}`" for d in datasets))
    else:
        ui.empty_state("No datasets in the data folder yet. Unpack the shared archives:",
                       "fer-core data install ../shared/data/fer2013.zip\n"
                       "fer-core data install ../shared/data/ferplus.zip\n"
                       "fer-core data install ../shared/data/synthetic_sd_faces.zip")
    if not runs:
        ui.empty_state("No evaluation runs yet. Evaluate the model on a dataset:",
                       "fer-core evaluate --dataset ferplus:test")

    st.subheader("Research questions")
    st.markdown(
        "1. **How do EfficientNet-B0/B2 trained on real faces perform on synthetic faces?** "
        "Evaluate on `sd_faces` and compare with a real test set on *Baseline metrics*.\n"
        "2. **How does fine-tuning on synthetic faces change accuracy on real faces?** "
        "Compare runs (McNemar's test) on *Baseline metrics*.\n"
        "3. **Which facial regions drive the decisions, on real vs synthetic faces?** "
        "Saliency maps (Grad-CAM, Grad-CAM++, Integrated Gradients, SmoothGrad, occlusion) with sanity "
        "checks: `fer_core.explain.explain(model, faces, method)`.\n"
        "4. **How do real and synthetic faces differ inside the model?** "
        "Penultimate embeddings: `fer_core.models.EmotionRecognizer.extract_features`.")
    ui.page_link("baseline_metrics.py")
    ui.page_link("upload.py")
