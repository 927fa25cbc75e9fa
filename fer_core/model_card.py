"""A model card (markdown + confusion-matrix PNG) from a model file and its evaluation runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from fer_core.models import load_model
from fer_core.runs import Run, faces_summary
from fer_core.scoring import scoring_summary


def confusion_png(run: Run, path: Path) -> None:
    """Row-normalized confusion matrix of ``run`` as a PNG (matplotlib, no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = run.metrics["confusion"]
    values = np.asarray(confusion["normalized"])
    labels = confusion["labels"]
    figure, axis = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    image = axis.imshow(values, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for (row, column), value in np.ndenumerate(values):
        axis.text(column, row, f"{value:.2f}", ha="center", va="center",
                  color="white" if value > 0.5 else "black", fontsize=8)
    axis.set_title(f"{run.info['dataset'].get('label', run.info['dataset']['name'])} (n={run.metrics['n']}), row-normalized")
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def _metric(m: dict, name: str) -> str:
    low, high = m["ci95"][name]
    return f"{m[name]:.4f} ({low:.4f}-{high:.4f})"


def _adjustment_lines(adjustment: dict | None) -> list[str]:
    """The post-hoc logit adjustment (``fer-core calibrate``) and the validation table it was chosen on."""
    if not adjustment:
        return []
    rows = [f"  | {r['tau']:.3f} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['min_recall']:.3f} |"
            for r in adjustment["table"]]
    return [f"- Post-hoc logit adjustment (`fer-core calibrate`): classifier bias shifted by {-adjustment['tau']:+g} x "
            f"log(class prior of `{adjustment['prior_from']}`), the strength chosen on `{adjustment['chosen_on']}` "
            f"({adjustment['rule']}; argmax over the model's classes):", "",
            "  | tau | accuracy | macro-F1 | min recall |", "  | --- | --- | --- | --- |", *rows]


def _initialisation(init: dict, described: set[str]) -> str:
    """Where training started: ``"scratch"``, or the chain of initial models back to scratch (see
    :func:`_model_description`)."""
    origin = init.get("from", "unknown")
    if not isinstance(origin, dict):
        return json.dumps(origin)
    return _model_description(origin, init.get("fingerprint"), described)


def _model_description(provenance: dict, fingerprint: str | None, described: set[str]) -> str:
    """A model by what made it: a training run (its fingerprint, recipe and validation accuracy, and
    where it started), or a weight average of models (each described the same way), either one
    calibrated or not. A fingerprint in ``described`` is named, not described again."""
    if fingerprint in described:
        return f"the model `{fingerprint}` (described above)"
    described.add(fingerprint)
    adjustment = provenance.get("logit_adjustment")
    calibrated = f", calibrated at tau {adjustment['tau']:g} on `{adjustment['chosen_on']}`" if adjustment else ""
    if "averaged_from" in provenance:
        sources = provenance["averaged_from"]
        parts = "; and ".join(_model_description(source["provenance"], source["fingerprint"], described)
                              for source in sources)
        return f"the weight average (fingerprint `{fingerprint}`{calibrated}) of {len(sources)} models: {parts}"
    stages = ", ".join(f"{s['trainable']} {s['epochs']} epochs at lr {s['lr']:g}"
                       for s in provenance.get("settings", {}).get("stages", []))
    selected = provenance.get("selected_epoch") or {}
    return (f"the model of run `{provenance.get('run')}` (fingerprint `{fingerprint}`{calibrated}; {stages}; "
            f"{provenance.get('settings', {}).get('input_size')} px; validation accuracy "
            f"{selected.get('val_accuracy', float('nan')):.4f} at its epoch {selected.get('epoch')}), itself trained "
            f"on `{provenance.get('train_data')}` from {_initialisation(provenance.get('init', {}), described)}")


def _training_lines(provenance: dict) -> list[str]:
    """How the weights were made: trained (data, selection, initialisation), or the weight average of
    trained models (``fer-core average``), each source described as an initialisation is."""
    if "averaged_from" not in provenance:
        return [f"- Trained by {provenance.get('trained_by', 'unknown')} on `{provenance.get('train_data')}`, best "
                f"epoch selected on `{provenance.get('val_data')}` (never on test).",
                f"- Initialisation: {_initialisation(provenance.get('init', {}), set())}."]
    sources = provenance["averaged_from"]
    described: set[str] = set()
    parts = "; and ".join(_model_description(source["provenance"], source["fingerprint"], described)
                          for source in sources)
    return [f"- Weight average (`fer-core average`: {provenance.get('averaging')}) of {len(sources)} models, each "
            f"trained run's best epoch selected on validation data (never on test): {parts}."]


def model_card(model_path: Path, runs: Sequence[Run], image_path: Path, image_link: str) -> str:
    """The card's markdown; writes the first run's confusion matrix to ``image_path``."""
    model = load_model(model_path)
    provenance = model.provenance
    sources = [source["provenance"] for source in provenance.get("averaged_from", [])] or [provenance]
    settings = [source.get("settings", {}) for source in sources]
    selected = [source.get("selected_epoch") for source in sources]
    lines = [
        f"# Model card: `{model_path.name}`", "",
        f"- Architecture: `{model.architecture}` (timm, built with `pretrained=False`), input {model.input_size} px, "
        f"ImageNet mean/std, classes in order: {', '.join(model.emotions)}."
        + (" Input in grey levels: trained on grey faces, it sees every face, colour photos included, in grey "
           "(ITU-R 601 luma on all three channels)." if model.grayscale else ""),
        f"- Weights: {model_path.stat().st_size / 2**20:.1f} MiB safetensors; fingerprint `{model.fingerprint}`.",
        *_training_lines(provenance),
        *_adjustment_lines(provenance.get("logit_adjustment")), "",
        "## Recipe", "", "```json", json.dumps(settings if len(sources) > 1 else settings[0], indent=2), "```", "",
        "Selected epoch: `" + json.dumps(selected if len(sources) > 1 else selected[0]) + "`", "",
        "## Test metrics (95% bootstrap CIs)", "",
        "| test set | n | accuracy | balanced accuracy | macro-F1 | valence accuracy | protocol | faces |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        m = run.metrics
        lines.append(f"| `{run.info['dataset'].get('label', run.info['dataset']['name'])}` ({', '.join(m['emotions']) if len(m['emotions']) < 8 else '8 classes'}) "
                     f"| {m['n']} | {_metric(m, 'accuracy')} | {_metric(m, 'balanced_accuracy')} | "
                     f"{_metric(m, 'macro_f1')} | {m['valence']['accuracy']:.4f} | "
                     f"{scoring_summary(run.info.get('scoring'))} | {faces_summary(run.info.get('faces') or {})} |")
    for run in runs:
        m = run.metrics
        lines += ["", f"### Per class on `{run.info['dataset'].get('label', run.info['dataset']['name'])}`", "",
                  "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {e} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
                  for e, v in m["per_class"].items()]
    if runs:
        confusion_png(runs[0], image_path)
        lines += ["", f"![Confusion matrix on {runs[0].info['dataset'].get('label', runs[0].info['dataset']['name'])}]({image_link})"]
    return "\n".join(lines) + "\n"
