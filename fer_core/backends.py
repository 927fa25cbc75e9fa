"""Inference backends: the one forward pass behind predict, embed and upload, and the device
it runs on.

A backend turns a preprocessed ``(N, 3, S, S)`` batch into the logits and the pooled
penultimate features of a :class:`~fer_core.models.FerModel` (one pass gives both). They are
chosen by name from :data:`INFERENCE_BACKENDS` (config key ``inference.backend``):

- ``torch``: the model's own eager forward (the reference);
- ``torch-channels-last``: the same weights in NHWC memory layout;
- ``onnx``: the model exported to ONNX (TensorFlow-"same" pads fixed for its input size)
  and run by ONNX Runtime with every graph optimisation (BatchNorm folded into the
  convolutions, Conv+SiLU and Pad+Conv fused, blocked NCHWc layout), with the same outputs.
  Measured speeds: ``docs/benchmarks.md`` (``benchmarks/p2_fast_path.py``).

:func:`load_backend` builds a backend once per model, name and thread count and keeps it
while the model lives (an ONNX export takes a while). :func:`set_inference_threads`
applies the config key ``inference.threads`` (done where a configured model is loaded);
:func:`resolve_device` turns ``model.device`` (``auto``, ``cpu``, ``cuda:N``) into a device and
:func:`on_device` puts a model there; :class:`InferenceOptions` carries batch size, device,
backend and progress to the dataset passes.
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import tempfile
import warnings
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers.conv2d_same import Conv2dSame
from timm.layers.padding import get_same_padding
from torch import nn

from fer_core.errors import ConfigError, InvalidArgument
from fer_core.validation import Interval, StrOptions, validate_params

if TYPE_CHECKING:
    from fer_core.models import FerModel

#: The ONNX opset of exports (supported by onnxruntime >= 1.14).
ONNX_OPSET = 17
ONNX_INPUT = "input"
ONNX_OUTPUTS = ("logits", "features")


class InferenceBackend(ABC):
    """Logits and features of preprocessed batches for one model."""

    name: ClassVar[str]

    def __init__(self, model: "FerModel", threads: int = 0) -> None:
        self.threads = threads  # no reference to ``model``: it keys the cache of loaded backends

    @abstractmethod
    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, classes)`` logits and ``(N, feature_dim)`` features of an ``(N, 3, S, S)`` batch,
        float32 on the CPU, without autograd."""

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The logits of :meth:`forward`."""
        return self.forward(batch)[0]

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """The features of :meth:`forward`."""
        return self.forward(batch)[1]


def pooled_features(module: nn.Module, batch: torch.Tensor, test_time_flip: bool = False) -> torch.Tensor:
    """A timm classifier's pooled penultimate features of ``batch``; with ``test_time_flip`` the
    mean of the batch's and its mirror image's (the classifier is linear, so its logits of these
    are the mean of both views' logits)."""
    def pooled(images: torch.Tensor) -> torch.Tensor:
        return module.forward_head(module.forward_features(images), pre_logits=True)
    return (pooled(batch) + pooled(torch.flip(batch, dims=[-1]))) / 2 if test_time_flip else pooled(batch)


class LogitsAndFeatures(nn.Module):
    """A timm classifier as one module with two outputs: its logits and the pooled
    penultimate features its classifier computes them from (what ONNX exports); with
    ``test_time_flip``, of each face averaged with its mirror image."""

    def __init__(self, module: nn.Module, test_time_flip: bool = False) -> None:
        super().__init__()
        self.module = module
        self.test_time_flip = test_time_flip

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = pooled_features(self.module, batch, self.test_time_flip)
        return self.module.get_classifier()(features), features


class StaticSamePadConv(nn.Module):
    """A TensorFlow-'same' convolution whose padding is fixed for one input size: exported,
    the pads are constants that ONNX Runtime folds into the convolution (timm's
    :class:`Conv2dSame` computes them from the input's shape at run time)."""

    def __init__(self, conv: Conv2dSame, pads: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv = conv
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        return F.conv2d(F.pad(x, self.pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


def with_static_padding(module: nn.Module, input_size: int) -> nn.Module:
    """``module`` with every :class:`Conv2dSame` replaced by a :class:`StaticSamePadConv` for
    ``input_size`` inputs (in place; the same outputs at that size): constant pads that ONNX
    Runtime folds into the convolutions."""
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [conv.register_forward_pre_hook(lambda _, args, name=name: sizes.__setitem__(name, args[0].shape[-2:]))
             for name, conv in module.named_modules() if isinstance(conv, Conv2dSame)]
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, input_size, input_size))
    finally:
        for hook in hooks:
            hook.remove()
    for name, (height, width) in sizes.items():
        conv = module.get_submodule(name)
        pad_h, pad_w = (get_same_padding(size, conv.kernel_size[i], conv.stride[i], conv.dilation[i])
                        for i, size in enumerate((height, width)))
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child,
                StaticSamePadConv(conv, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)))
    return module


class TorchBackend(InferenceBackend):
    """The model's eager PyTorch forward, in the model's own memory layout."""

    name = "torch"

    def __init__(self, model: "FerModel", threads: int = 0) -> None:
        super().__init__(model, threads)
        self.network = self._network(model)

    def _network(self, model: "FerModel") -> nn.Module:
        return LogitsAndFeatures(model.module, model.test_time_flip)

    def _input(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(next(self.network.parameters()).device)

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            logits, features = self.network(self._input(batch))
        return logits.float().cpu(), features.float().cpu()


class ChannelsLastBackend(TorchBackend):
    """Eager PyTorch on a channels-last (NHWC) copy of the weights."""

    name = "torch-channels-last"

    def _network(self, model: "FerModel") -> nn.Module:
        return LogitsAndFeatures(copy.deepcopy(model.module).to(memory_format=torch.channels_last),
                                 model.test_time_flip).eval()

    def _input(self, batch: torch.Tensor) -> torch.Tensor:
        return super()._input(batch).contiguous(memory_format=torch.channels_last)


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise ConfigError("the 'onnx' inference backend needs ONNX Runtime: pip install onnxruntime onnx "
                          "(or set inference.backend: torch)") from None


def onnx_bytes(model: "FerModel", opset: int = ONNX_OPSET) -> bytes:
    """``model`` as an ONNX graph (float32, batch size free, input size fixed at the model's)
    with input ``input``, outputs ``logits`` and ``features``, and its class order and
    preprocessing as metadata."""
    try:
        onnx = importlib.import_module("onnx")
    except ImportError:
        raise ConfigError("exporting to ONNX needs the onnx package: pip install onnx onnxruntime") from None
    module = copy.deepcopy(model.module).float().cpu().eval()
    network = LogitsAndFeatures(with_static_padding(module, model.input_size), model.test_time_flip).eval()
    example = torch.zeros(1, 3, model.input_size, model.input_size)
    buffer = io.BytesIO()
    # The TorchScript exporter: fast and no onnxscript; the dynamo exporter is compared in docs/benchmarks.md.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (example,), buffer, input_names=[ONNX_INPUT], output_names=list(ONNX_OUTPUTS),
                          dynamic_axes={ONNX_INPUT: {0: "batch"}, **{n: {0: "batch"} for n in ONNX_OUTPUTS}},
                          opset_version=opset, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue())
    metadata = {"architecture": model.architecture, "emotions": json.dumps(list(model.emotions)),
                "input_size": str(model.input_size), "mean": json.dumps(list(model.mean)),
                "std": json.dumps(list(model.std)), "grayscale": json.dumps(model.grayscale),
                "test_time_flip": json.dumps(model.test_time_flip),
                "fingerprint": model.fingerprint}
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    return graph.SerializeToString()


def export_onnx(model: "FerModel", path: Path | str, opset: int = ONNX_OPSET) -> Path:
    """Write :func:`onnx_bytes` to ``path`` (``.onnx`` added when missing), atomically."""
    path = Path(path)
    path = path if path.suffix == ".onnx" else path.with_name(path.name + ".onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(onnx_bytes(model, opset))
    partial.replace(path)
    return path


def onnx_session(graph: bytes | Path, threads: int = 0, device: torch.device | None = None) -> Any:
    """An ONNX Runtime session with every graph optimisation, ``threads`` intra-op threads
    (0: as many as torch uses) and one inter-op thread; on CUDA when ``device`` is CUDA and
    ONNX Runtime offers it."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = ["CPUExecutionProvider"]
    if device is not None and device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    source = str(graph) if isinstance(graph, Path) else graph
    return ort.InferenceSession(source, options, providers=providers)


def fold_pads_into_convs(graph: bytes) -> bytes:
    """``graph`` after ONNX Runtime's basic (portable) optimisations, with every constant
    zero spatial ``Pad`` that feeds only a ``Conv`` moved into that convolution's own
    (possibly asymmetric) ``pads``. The outputs are the same; ONNX Runtime then keeps the
    whole network in its blocked layout."""
    ort = import_onnxruntime()
    onnx = importlib.import_module("onnx")
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # folds the pad arithmetic
        options.optimized_model_filepath = str(Path(folder) / "basic.onnx")
        ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        model = onnx.load(options.optimized_model_filepath)
    constants = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    folded = []
    for pad in (node for node in model.graph.node if node.op_type == "Pad"):
        pads = constants.get(pad.input[1]) if len(pad.input) > 1 else None
        fill = constants.get(pad.input[2], np.zeros(1)) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        users = consumers.get(pad.output[0], [])
        if (pads is None or pads.shape != (8,) or np.any(pads[[0, 1, 4, 5]] != 0) or mode != b"constant"
                or np.any(fill != 0) or len(users) != 1 or users[0].op_type != "Conv"):
            continue
        conv = users[0]
        own = {a.name: a for a in conv.attribute}
        if own.get("auto_pad") is not None and own["auto_pad"].s not in (b"", b"NOTSET"):
            continue
        if own.get("pads") is not None:
            if any(own["pads"].ints):
                continue
            conv.attribute.remove(own["pads"])
        conv.attribute.append(onnx.helper.make_attribute("pads", [int(v) for v in pads[[2, 3, 6, 7]]]))
        conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        model.graph.node.remove(pad)
    return model.SerializeToString()


class OnnxRuntimeBackend(InferenceBackend):
    """The model exported to ONNX (:func:`onnx_bytes`, pads folded by
    :func:`fold_pads_into_convs`) and run by ONNX Runtime."""

    name = "onnx"

    def __init__(self, model: "FerModel", threads: int = 0) -> None:
        super().__init__(model, threads)
        import_onnxruntime()  # the clear error before a costly export
        self.session = onnx_session(fold_pads_into_convs(onnx_bytes(model)), threads, model.device)

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = np.ascontiguousarray(batch.detach().cpu().float().numpy())
        logits, features = self.session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: pixels})
        return torch.from_numpy(logits), torch.from_numpy(features)


#: Every inference backend by its ``inference.backend`` name.
INFERENCE_BACKENDS: Mapping[str, Callable[["FerModel", int], InferenceBackend]] = MappingProxyType({
    backend.name: backend for backend in (TorchBackend, ChannelsLastBackend, OnnxRuntimeBackend)})
DEFAULT_BACKEND = TorchBackend.name


def __getattr__(name: str) -> Any:
    """``BACKENDS``, the registry's old name (``fer_core.synthetic.backends`` has its own
    ``BACKENDS``), still works with a :class:`DeprecationWarning`."""
    if name == "BACKENDS":
        warnings.warn("fer_core.backends.BACKENDS was renamed INFERENCE_BACKENDS", DeprecationWarning, stacklevel=2)
        return INFERENCE_BACKENDS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_LOADED: "weakref.WeakKeyDictionary[FerModel, dict[tuple, InferenceBackend]]" = weakref.WeakKeyDictionary()


#: The check of an argument naming an inference backend (:func:`fer_core.validation.validate_params`).
BACKEND_NAME = [StrOptions(INFERENCE_BACKENDS)]
#: ``inference.threads``: 0 keeps the library default.
_THREADS = Interval(Integral, 0, None)


def resolve_device(device: str | torch.device) -> torch.device:
    """The device ``model.device`` names: ``auto`` is CUDA when available, else the CPU; any
    other name is taken as torch names it (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgument(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None


def on_device(model: "FerModel", device: str | torch.device | None) -> "FerModel":
    """``model`` in eval mode, moved to :func:`resolve_device` of ``device`` when one is given
    (None leaves it where it is). Returns the model."""
    if device is not None:
        model.to(resolve_device(device))
    model.module.eval()
    return model


@dataclass(frozen=True)
class InferenceOptions:
    """How the library's dataset passes (:func:`fer_core.inference.predict_dataset` and its kin)
    run a model: ``batch_size`` faces at a time, on ``device`` (None: where the model is;
    :func:`on_device`), through ``backend`` (:data:`INFERENCE_BACKENDS`), with progress bars
    when ``progress``. None of them enters a cache key or a job's resume signature. The job
    level resolves them from the config once (:class:`fer_core.jobs.options.JobOptions`)."""

    batch_size: int = 32
    device: str | None = None
    backend: str = DEFAULT_BACKEND
    progress: bool = True


def set_inference_threads(threads: int) -> None:
    """Apply ``inference.threads``: torch's intra-op threads, which ONNX Runtime sessions built
    afterwards use too (:func:`onnx_session`); 0 keeps torch's own default (one per core, or
    ``OMP_NUM_THREADS``)."""
    if not _THREADS.is_satisfied_by(threads):  # it comes from the config alone
        raise ConfigError(f"config key 'inference.threads': expected {_THREADS} (0: the library default), "
                          f"got {threads!r}")
    if threads:
        torch.set_num_threads(threads)


@validate_params({"name": BACKEND_NAME})
def load_backend(model: "FerModel", name: str = DEFAULT_BACKEND, threads: int = 0) -> InferenceBackend:
    """The ``name`` backend of ``model`` with ``threads`` intra-op threads (0: as many as torch
    uses now), built on first use and kept while the model lives (rebuilt when its weights,
    device or thread count change)."""
    factory = INFERENCE_BACKENDS[name]
    threads = threads or torch.get_num_threads()
    key = (name, threads, model.fingerprint, str(model.device))
    loaded = _LOADED.setdefault(model, {})
    if key not in loaded:
        loaded[key] = factory(model, threads)
    return loaded[key]
