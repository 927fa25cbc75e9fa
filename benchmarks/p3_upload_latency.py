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
default layer is probed once per architecture and input size).

    OMP_NUM_THREADS=1 python benchmarks/p3_upload_latency.py --backend onnx
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from common import machine_note, shipped_model, table
from fer_core.backends import BACKENDS, load_backend
from fer_core.config import config_from_dict
from fer_core.explain import explain
from fer_core.explain.overlay import overlay
from fer_core.faces import FacePipeline
from fer_core.images import load_rgb
from fer_core.models import EmotionRecognizer

GOAL = 5.0
STAGES = ("decode", "detect + align", "predict", "grad-cam", "overlay")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--face-model", type=Path, default=Path("../shared/models/face_detection_short_range.tflite"),
                        help="MediaPipe BlazeFace .tflite")
    parser.add_argument("--backend", default="torch", choices=sorted(BACKENDS))
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args()


def upload(photo: bytes, pipeline: FacePipeline, recognizer: EmotionRecognizer, reuse_prediction: bool,
           layer: str | None) -> dict[str, float]:
    """The upload page's work on one photo, timed stage by stage (seconds). With
    ``reuse_prediction``, Grad-CAM's targets are the recogniser's predicted classes; ``layer``
    None lets Grad-CAM find its default layer."""
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
    maps = explain(model, model.preprocessing.batch(crops), "gradcam", target, layer=layer).maps
    lap()
    [overlay(crop, attribution) for crop, attribution in zip(crops, maps)]
    lap()
    return dict(zip(STAGES, np.diff(clock)))


def main() -> int:
    args = parse_args()
    model = shipped_model()
    config = config_from_dict({"faces": {"detector": "mediapipe", "mediapipe_model": str(args.face_model.resolve())}})
    pipeline = FacePipeline.from_config(config, crop_size=model.input_size)
    recognizer = EmotionRecognizer(model, backend=args.backend)
    photos = [path.read_bytes() for path in sorted((args.data / "synthetic" / "sd_faces").rglob("*.jpg"))][::50]
    photos = photos[:args.photos]
    if load_rgb(photos[0]).shape[:2] != (512, 512):
        raise SystemExit("expected 512x512 photos in sd_faces")
    face = model.preprocessing.batch([pipeline.extract(load_rgb(photos[0]))[0].image])
    eager = load_backend(model, "torch")
    eager.forward(face)
    upload(photos[0], pipeline, recognizer, True, None)  # warm up (detector, backend)
    variants = {"explain finds the class": (False, None), "as the page does": (True, None)}
    bare = []
    stages = {variant: {stage: [] for stage in STAGES} for variant in variants}
    for _ in range(args.rounds):
        for photo in photos:
            start = time.perf_counter()
            eager.forward(face)
            bare.append(time.perf_counter() - start)
            for variant, (reuse, layer) in variants.items():
                for stage, seconds in upload(photo, pipeline, recognizer, reuse, layer).items():
                    stages[variant][stage].append(seconds)
    found = sum(len(pipeline.extract(load_rgb(photo))) for photo in photos)
    forward = statistics.median(bare)
    print(f"{model.architecture} at {model.input_size} px, predict backend {args.backend}, {len(photos)} photos "
          f"512x512 ({found} faces), {args.rounds} rounds; {machine_note()}")
    rows, ratios = [], {}
    for variant, timings in stages.items():
        total = statistics.median([sum(values) for values in zip(*timings.values())])
        ratios[variant] = total / forward
        rows += [{"variant": variant, "stage": stage, "ms": 1000 * statistics.median(values),
                  "x bare forward": statistics.median(values) / forward} for stage, values in timings.items()]
        rows.append({"variant": variant, "stage": "upload total", "ms": 1000 * total,
                     "x bare forward": total / forward})
    rows.append({"variant": "", "stage": "bare batch-1 forward (eager)", "ms": 1000 * forward, "x bare forward": 1.0})
    print(table(rows))
    for variant, ratio in ratios.items():
        print(f"P3 ({variant}): upload {ratio:.2f}x one bare forward (goal <= {GOAL}x): "
              f"{'met' if ratio <= GOAL else 'NOT met'}")
    return 0 if ratios["as the page does"] <= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
