"""P3: upload latency against one bare forward, in one run.

What the upload page does for a 512x512 photo (a Stable Diffusion face from ``sd_faces``,
JPEG bytes as the browser sends them): decode, detect (MediaPipe BlazeFace), align and crop,
predict through the configured backend (``EmotionRecognizer``), Grad-CAM of the predicted
class and its overlay. The reference is one bare batch-1 eager forward of the same model on
a preprocessed face. Photos and bare forwards alternate; medians. Goal: <= 5x the bare
forward. Each stage is also shown in units of the bare forward (where the time goes).

Two variants run in the same rounds: "explain finds the class" (``explain(...,
"predicted")`` runs a forward of its own to find the predicted class, as the page did first)
and "as the page does" (the recogniser's predicted classes are Grad-CAM's targets; Grad-CAM's
default layer is probed once per architecture and input size). Their Grad-CAM maps of each
photo are compared, and so are the recogniser's probabilities with an eager forward's on
the same crops.

    OMP_NUM_THREADS=1 python benchmarks/p3_upload_latency.py --backend onnx
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from common import (add_model_argument, benchmark_model, machine_note, max_abs_difference, parse_with_smoke,
                    table)
from fer_core.backends import INFERENCE_BACKENDS, load_backend
from fer_core.config import config_from_dict
from fer_core.explain import explain
from fer_core.explain import overlay
from fer_core.faces import FacePipeline
from fer_core.images import load_rgb
from fer_core.models import EmotionRecognizer

GOAL = 5.0
STAGES = ("decode", "detect + align", "predict", "grad-cam", "overlay")
#: Each variant: does Grad-CAM take the recogniser's predicted classes as its targets?
VARIANTS = {"explain finds the class": False, "as the page does": True}
SMOKE = {"photos": 1, "rounds": 1}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    add_model_argument(parser)
    parser.add_argument("--face-model", default="short_range",
                        help="MediaPipe BlazeFace: a shipped model's name (short_range, full_range) or a .tflite path")
    parser.add_argument("--backend", default="torch", choices=sorted(INFERENCE_BACKENDS))
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    return parse_with_smoke(parser, argv, SMOKE)


@dataclass
class Upload:
    """What the page computed for one photo, and each stage's seconds."""

    seconds: dict[str, float]
    crops: list[np.ndarray]
    probabilities: np.ndarray
    maps: np.ndarray


def upload(photo: bytes, pipeline: FacePipeline, recognizer: EmotionRecognizer, reuse_prediction: bool) -> Upload:
    """The upload page's work on one photo, timed stage by stage. With ``reuse_prediction``,
    Grad-CAM's targets are the recogniser's predicted classes; otherwise Grad-CAM finds them."""
    clock = [time.perf_counter()]

    def lap() -> None:
        clock.append(time.perf_counter())
    rgb = load_rgb(photo)
    lap()
    faces = pipeline.extract(rgb)
    lap()
    crops = [face.image for face in faces]
    _, scores = recognizer.predict_emotions(crops)
    lap()
    model = recognizer.model
    target = tuple(int(i) for i in scores.argmax(axis=1)) if reuse_prediction else "predicted"
    maps = explain(model, model.preprocessing.batch(crops), "gradcam", target).maps
    lap()
    [overlay(crop, attribution) for crop, attribution in zip(crops, maps)]
    lap()
    return Upload(dict(zip(STAGES, np.diff(clock))), crops, scores, np.asarray(maps))


def measure(args: argparse.Namespace) -> dict:
    """Median seconds of each stage of each variant and of one bare batch-1 eager forward;
    the largest differences between the variants' maps and between the recogniser's and an
    eager forward's probabilities."""
    model = benchmark_model(args.model)
    config = config_from_dict({"faces": {"detector": "mediapipe", "mediapipe_model": args.face_model}})
    pipeline = FacePipeline.from_config(config, crop_size=model.input_size)
    recognizer = EmotionRecognizer(model, backend=args.backend)
    photos = [path.read_bytes() for path in sorted((args.data / "synthetic" / "sd_faces").rglob("*.jpg"))][::50]
    photos = photos[:args.photos]
    if load_rgb(photos[0]).shape[:2] != (512, 512):
        raise SystemExit("expected 512x512 photos in sd_faces")
    face = model.preprocessing.batch([pipeline.extract(load_rgb(photos[0]))[0].image])
    eager = load_backend(model, "torch")
    eager.forward(face)
    upload(photos[0], pipeline, recognizer, True)  # warm up (detector, backend)
    bare = []
    stages = {variant: {stage: [] for stage in STAGES} for variant in VARIANTS}
    map_difference = probability_difference = 0.0
    for _ in range(args.rounds):
        for photo in photos:
            start = time.perf_counter()
            eager.forward(face)
            bare.append(time.perf_counter() - start)
            done = {variant: upload(photo, pipeline, recognizer, reuse) for variant, reuse in VARIANTS.items()}
            for variant, result in done.items():
                for stage, seconds in result.seconds.items():
                    stages[variant][stage].append(seconds)
            found, page = done["explain finds the class"], done["as the page does"]
            map_difference = max(map_difference, max_abs_difference(found.maps, page.maps))
            eager_logits = eager.logits(model.preprocessing.batch(page.crops))
            probability_difference = max(probability_difference,
                                         max_abs_difference(eager_logits.double().softmax(dim=1).numpy(),
                                                            page.probabilities))
    totals = {variant: statistics.median([sum(values) for values in zip(*timings.values())])
              for variant, timings in stages.items()}
    return {"model": f"{model.architecture} at {model.input_size} px", "photos": len(photos),
            "faces": sum(len(pipeline.extract(load_rgb(photo))) for photo in photos),
            "bare_forward_s": statistics.median(bare), "total_s": totals,
            "stage_s": {variant: {stage: statistics.median(values) for stage, values in timings.items()}
                        for variant, timings in stages.items()},
            "map_difference": map_difference, "probability_difference": probability_difference,
            "machine": machine_note()}


def report(args: argparse.Namespace, result: dict) -> int:
    """Print each stage in units of the bare forward, the output checks and the goal; the exit status."""
    forward = result["bare_forward_s"]
    print(f"{result['model']}, predict backend {args.backend}, {result['photos']} photos 512x512 "
          f"({result['faces']} faces), {args.rounds} rounds; {result['machine']}")
    rows = []
    for variant, timings in result["stage_s"].items():
        rows += [{"variant": variant, "stage": stage, "ms": 1000 * seconds, "x bare forward": seconds / forward}
                 for stage, seconds in timings.items()]
        total = result["total_s"][variant]
        rows.append({"variant": variant, "stage": "upload total", "ms": 1000 * total, "x bare forward": total / forward})
    rows.append({"variant": "", "stage": "bare batch-1 forward (eager)", "ms": 1000 * forward, "x bare forward": 1.0})
    print(table(rows))
    print(f"max |difference|: Grad-CAM maps of the two variants {result['map_difference']:.2e}; recogniser "
          f"({args.backend}) vs eager probabilities {result['probability_difference']:.2e}")
    ratios = {variant: total / forward for variant, total in result["total_s"].items()}
    for variant, ratio in ratios.items():
        print(f"P3 ({variant}): upload {ratio:.2f}x one bare forward (goal <= {GOAL}x): "
              f"{'met' if ratio <= GOAL else 'NOT met'}")
    return 0 if ratios["as the page does"] <= GOAL or args.smoke else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return report(args, measure(args))


if __name__ == "__main__":
    raise SystemExit(main())
