"""Home: what is installed (with every dataset's faces per class) and cached, the four research
questions and where each is answered, what to do next."""

import streamlit as st

from dashboard import compute, downloads, ui
from fer_core.cache import RESULTS_FILE, ResultCache
from fer_core.data import available_datasets
from fer_core.runs import list_runs
from fer_core.views import model_files

#: The research questions (thesis plan), each with the page that answers it.
QUESTIONS = (
    ("RQ1", "How do models trained on real faces perform on synthetic faces?", "cross_domain.py",
     "per-class (and per-intensity) accuracy on synthetic faces, the train x test accuracy matrix"),
    ("RQ2", "How does fine-tuning on synthetic faces change accuracy on real faces?", "cross_domain.py",
     "accuracy by synthetic share of the training set (mean and 95% CI over seeds; Cochran's Q and pairwise "
     "McNemar across shares in the sweep's summary); McNemar's test between runs on Baseline metrics"),
    ("RQ3", "Which facial regions drive the decisions, on real vs synthetic faces?", "saliency.py",
     "Grad-CAM, IG, LRP maps side by side, per-class mean maps, region shares with CIs"),
    ("RQ4", "How do real and synthetic faces differ inside the model?", "embeddings.py",
     "UMAP / t-SNE / PCA of the embeddings, domain classifier, KID, MMD"),
)

st.title("Facial emotion recognition on real and synthetic faces")
st.caption("fer_core: EfficientNet emotion models, 8 HSEmotion classes, real vs Stable Diffusion faces.")

config = ui.get_config()
if config is not None:
    model = ui.get_model(config)
    datasets = available_datasets(config.resolve(config.data.root))
    runs = list_runs(config.resolve(config.paths.runs_dir))
    evaluations = [r for r in runs if r.kind == "evaluation"]
    trainings = [r for r in runs if r.kind == "training"]
    synthetic = [d for d in datasets if d.startswith(("sd_faces", "synthetic"))]
    cache_file = config.resolve(config.paths.cache_dir) / RESULTS_FILE
    cache_info = None
    if cache_file.is_file():
        with ResultCache(cache_file) as cache:
            cache_info = cache.info()

    columns = st.columns([3, 1, 1, 1, 1])
    columns[0].metric("Model", model.architecture if model else "none")
    columns[1].metric("Datasets", len(datasets))
    columns[2].metric("Evaluation runs", len(evaluations))
    columns[3].metric("Training runs", len(trainings))
    columns[4].metric("Cached results", cache_info["entries"] if cache_info else 0)

    st.subheader("Installed")
    if model is not None:
        st.write(f"**Model** `{model.architecture}` at {model.input_size}px"
                 f"{' (grey levels)' if model.grayscale else ''}, fingerprint `{model.fingerprint}`; "
                 f"{len(model_files(config))} weights file(s) to choose from")
        if not ui.head_is_trained(model):
            st.warning("This model's classifier head is untrained (a backbone-only file): its predictions "
                       "are withheld until it is fine-tuned.")
    if datasets:
        st.write("**Datasets** " + ", ".join(f"`{d}`" for d in datasets))
        st.write("**Synthetic sets** " + (", ".join(f"`{d}`" for d in synthetic) or "none"))
        st.markdown("**Faces per class** of every installed dataset")
        st.dataframe(compute.dataset_class_counts(config, tuple(datasets)), hide_index=True, key="class-counts")
    else:
        ui.empty_state("No datasets in the data folder yet. Unpack the shared archives:",
                       "fer-core data install ../shared/data/fer2013.zip\n"
                       "fer-core data install ../shared/data/ferplus.zip\n"
                       "fer-core data install ../shared/data/synthetic_sd_faces.zip")
    if cache_info:
        st.write("**Cache** " + ", ".join(f"{kind}: {v['entries']}" for kind, v in cache_info["kinds"].items())
                 + f" ({cache_info['file_bytes'] / 2 ** 20:.1f} MiB)")

    st.subheader("Research questions")
    for code, question, page, answer in QUESTIONS:
        with st.container(border=True):
            st.markdown(f"**{code}. {question}**  \n{answer}")
            ui.page_link(page)

    st.subheader("Next steps")
    steps = []
    if not datasets:
        steps.append(("Install the datasets", "fer-core data install ../shared/data/ferplus.zip"))
    if not evaluations:
        steps.append(("Evaluate the model on real and synthetic faces (RQ1)",
                      "fer-core evaluate --dataset ferplus:test\nfer-core evaluate --dataset sd_faces"))
    if not cache_info or "embedding" not in cache_info["kinds"]:
        steps.append(("Embed real and synthetic faces for the Embeddings page (RQ4)",
                      "fer-core embed --dataset fer2013:test --dataset sd_faces --limit 1000 --projection pca,umap\n"
                      "fer-core gap --real fer2013:test --synthetic sd_faces --limit 1000"))
    if not cache_info or "attribution" not in cache_info["kinds"]:
        steps.append(("Precompute attribution maps for the Saliency browser (RQ3)",
                      "fer-core explain --dataset sd_faces --method gradcam\n"
                      "fer-core explain --dataset fer2013:test --method gradcam --limit 500"))
    if not any(r.info.get("experiment") == "sweep" for r in trainings):
        steps.append(("Train with a growing share of synthetic faces (RQ2)",
                      "fer-core sweep --real ferplus:train --synthetic sd_faces:train --val ferplus:valid "
                      "--test ferplus:test --test sd_faces:test --init weights/fer_b0_ferplus.safetensors "
                      "--recipe gradual --seeds 0,1,2 --out runs/sweep"))
    if not steps:
        st.success("Everything the pages need is installed and cached.")
    for title, command in steps:
        ui.empty_state(title + ":", command)
    downloads.whole_report(config)
