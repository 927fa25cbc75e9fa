"""The curve of what each training step gave: accuracy on each evaluation set and the weakest
classes' recall, step by step, beside the targets the shipped model is held to (issue 18).

    python scripts/lever_curve.py --step "96 px, 5 ep=b0-96-cont" --step "112 px, 5 ep=b0-112-cont" \
        --out docs/model_levers.png

Each ``--step`` is ``LABEL=TRAINING_RUN``. Its points are the evaluation runs under ``--runs`` of a
model trained by that run (``model.provenance.run`` in their ``run.json``; ``RUN+RUN`` for the weight
average of those runs' models, ``fer-core average``): whole sets only (no
``--limit`` or per-class sample), without test-time flip, the newest one per set. A set a step was
not evaluated on is left out of that step, never guessed; the table printed lists every run read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fer_core.cross_domain import is_limited  # noqa: E402
from fer_core.runs import Run, list_runs, trained_by  # noqa: E402

#: evaluation set -> (legend, accuracy target or None)
SETS = {"ferplus:valid": ("FER+ valid (selection)", None), "ferplus:test": ("FER+ test", 0.84),
        "fer2013:test": ("FER2013 test", 0.66), "sd_faces": ("SD faces", 0.65)}
#: (set, class, legend, recall target): the classes furthest below their target
WEAK_CLASSES = (("ferplus:test", "Contempt", "FER+ contempt", 0.35), ("ferplus:test", "Disgust", "FER+ disgust", 0.35),
                ("sd_faces", "Anger", "SD anger", 0.40), ("sd_faces", "Sadness", "SD sadness", 0.40),
                ("sd_faces", "Surprise", "SD surprise", 0.40))


def step_evaluations(evaluations: list[Run], training_run: str) -> dict[str, Run]:
    """``{set: newest whole-set evaluation}`` of the models ``training_run`` trained (``RUN+RUN``: their
    average), ``evaluations`` newest first, as :func:`list_runs` gives them."""
    found: dict[str, Run] = {}
    for run in evaluations:
        model, dataset = run.info.get("model", {}), run.info.get("dataset", {})
        if (trained_by(model.get("provenance") or {}) == training_run and not is_limited(dataset)
                and not model.get("test_time_flip") and dataset.get("spec") in SETS and run.complete):
            found.setdefault(dataset["spec"], run)
    return found


def plot(labels: list[str], steps: list[dict[str, Run]], out: Path) -> None:
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True)
    for (spec, (legend, target)), colour in zip(SETS.items(), ("0.6", "C0", "C1", "C2")):
        points = [(i, step[spec].metrics["accuracy"]) for i, step in enumerate(steps) if spec in step]
        if points:
            top.plot(*zip(*points), "o-", color=colour, label=legend)
            if target is not None:
                top.axhline(target, color=colour, linestyle=":", linewidth=1)
    top.set_ylabel("accuracy (8-way argmax)")
    top.set_title("What each training step gave (dotted: the targets)")
    top.legend(loc="center right", fontsize=8)
    for (spec, emotion, legend, _), colour in zip(WEAK_CLASSES, ("C3", "C4", "C5", "C6", "C8")):
        points = [(i, step[spec].metrics["per_class"][emotion]["recall"]) for i, step in enumerate(steps)
                  if spec in step]
        if points:
            bottom.plot(*zip(*points), "o-", color=colour, label=legend)
    bottom.axhline(0.35, color="0.3", linestyle=":", linewidth=1)
    bottom.axhline(0.40, color="0.3", linestyle="--", linewidth=1)
    bottom.set_ylabel("recall (dotted 0.35 FER+, dashed 0.40 SD)")
    bottom.set_ylim(top=0.55)
    bottom.legend(loc="upper right", fontsize=8, ncol=3)
    bottom.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", action="append", required=True, metavar="LABEL=TRAINING_RUN")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if any("=" not in step for step in args.step):
        parser.error("--step: expected LABEL=TRAINING_RUN")
    pairs = [step.split("=", 1) for step in args.step]
    evaluations = list_runs(args.runs, kind="evaluation")
    steps = [step_evaluations(evaluations, run) for _, run in pairs]
    for (label, run), found in zip(pairs, steps):
        read = ", ".join(f"{spec} {found[spec].metrics['accuracy']:.4f} ({found[spec].id})" for spec in found)
        print(f"{label} [{run}]: {read or 'no whole-set evaluation found'}")
    if not any(steps):
        parser.error(f"no evaluation under {args.runs} of a model trained by any of the runs given")
    plot([label for label, _ in pairs], steps, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
