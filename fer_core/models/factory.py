"""The architecture registry, the one factory over it (in the style of ``timm.create_model``),
and :class:`FerModel`: a network together with its class order and preprocessing.

Networks are always built with ``pretrained=False``: weights come only from files that
:func:`fer_core.models.load_model` reads, never from a model hub.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from numbers import Integral
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import timm
import torch
from torch import nn

from fer_core.backends import pooled_features
from fer_core.errors import ModelLoadError
from fer_core.labels import EMOTION_INDEX, EMOTIONS
from fer_core.preprocess import Preprocessing
from fer_core.validation import Interval, validate_params

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArchitectureSpec:
    """A registered network.

    ``name`` is ours (and HSEmotion's); ``timm_name`` is what ``timm.create_model`` is
    given; ``feature_dim`` is the width of the pooled penultimate features; ``input_size``
    is the square side the network is trained and run at.
    """

    name: str
    timm_name: str
    feature_dim: int
    input_size: int


#: The small network for tests and CPU experiments (0.4 M parameters, fast at 64 px).
TINY_ARCHITECTURE = "mobilenetv3_small_050"

#: Every architecture :func:`create_model` builds, by name. The HSEmotion names are timm
#: 0.4's; timm 1.x calls the same networks ``tf_efficientnet_bN.ns_jft_in1k``.
ARCHITECTURES: Mapping[str, ArchitectureSpec] = MappingProxyType({spec.name: spec for spec in (
    ArchitectureSpec("tf_efficientnet_b0_ns", "tf_efficientnet_b0.ns_jft_in1k", feature_dim=1280, input_size=224),
    ArchitectureSpec("tf_efficientnet_b2_ns", "tf_efficientnet_b2.ns_jft_in1k", feature_dim=1408, input_size=260),
    ArchitectureSpec(TINY_ARCHITECTURE, "mobilenetv3_small_050", feature_dim=1024, input_size=64),
)})


def architecture_spec(architecture: str) -> ArchitectureSpec:
    """The registered spec of ``architecture``; :class:`ModelLoadError` listing the names if unknown."""
    spec = ARCHITECTURES.get(architecture)
    if spec is None:
        raise ModelLoadError(
            f"unknown architecture {architecture!r}; registered architectures: {sorted(ARCHITECTURES)}"
        )
    return spec


@validate_params({"num_classes": [Interval(Integral, 1, None)]})
def create_model(architecture: str, num_classes: int = 8, **timm_kwargs: Any) -> nn.Module:
    """A randomly initialised ``architecture`` whose ``num_classes``-way classifier is at chance.

    The classifier's weight and bias are zero, so every class starts with the same logit
    and the starting cross-entropy is ``ln(num_classes)``. ``timm_kwargs`` (``drop_rate``,
    ``drop_path_rate``, ...) go to ``timm.create_model``.
    """
    spec = architecture_spec(architecture)
    module = timm.create_model(spec.timm_name, pretrained=False, num_classes=int(num_classes), **timm_kwargs)
    head = module.get_classifier()
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return module


@lru_cache(maxsize=None)
def classifier_name(architecture: str) -> str:
    """The attribute path of ``architecture``'s classifier (``classifier`` for EfficientNet)."""
    return timm.get_pretrained_cfg(architecture_spec(architecture).timm_name).classifier


@lru_cache(maxsize=None)
def expected_shapes(architecture: str, num_classes: int) -> Mapping[str, tuple[int, ...]]:
    """Every state-dict key of ``architecture`` and its shape (built on the meta device: no memory)."""
    with torch.device("meta"):
        module = timm.create_model(architecture_spec(architecture).timm_name, pretrained=False,
                                   num_classes=num_classes)
    return MappingProxyType({key: tuple(value.shape) for key, value in module.state_dict().items()})


@dataclass(eq=False)
class FerModel:
    """A network and what it takes to use it: the emotion of each output, the input size,
    normalisation and colour (``grayscale``), and where the weights came from (``provenance``).

    ``provenance["head_trained"]`` is False when the classifier was never trained (a fresh
    chance-level head), so its outputs mean nothing yet. The module is put in eval mode.
    """

    module: nn.Module
    architecture: str
    emotions: tuple[str, ...] = EMOTIONS
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    provenance: dict[str, Any] = field(default_factory=dict)
    #: Trained on grey faces only: colour inputs are turned grey first (:class:`Preprocessing`).
    grayscale: bool = False
    #: Test-time flip: every face's pooled features are averaged with its mirror image's, so the
    #: logits are the mean of both views' (:meth:`with_test_time_flip`; never stored in weights).
    test_time_flip: bool = False

    def __post_init__(self) -> None:
        architecture_spec(self.architecture)
        self.emotions = tuple(self.emotions)
        unknown = [e for e in self.emotions if e not in EMOTION_INDEX]
        if unknown or len(set(self.emotions)) != len(self.emotions):
            raise ModelLoadError(f"emotions must be distinct names from {list(EMOTIONS)}, got {list(self.emotions)}")
        outputs = self.module.get_classifier().out_features
        if outputs != len(self.emotions):
            raise ModelLoadError(f"the classifier has {outputs} outputs but {len(self.emotions)} emotions were given")
        self.module.eval()

    @classmethod
    def from_architecture(cls, architecture: str, emotions: Sequence[str] = EMOTIONS,
                          **timm_kwargs: Any) -> "FerModel":
        """A new ``architecture`` with a chance-level head over ``emotions``, at its native input size."""
        module = create_model(architecture, len(emotions), **timm_kwargs)
        return cls(module, architecture, tuple(emotions), architecture_spec(architecture).input_size,
                   provenance={"head_trained": False})

    @property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing this model expects."""
        return Preprocessing(self.input_size, tuple(self.mean), tuple(self.std), grayscale=self.grayscale)

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`features`."""
        return architecture_spec(self.architecture).feature_dim

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.module.parameters()).device

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over every state-dict key and tensor's bytes, in key order (hex, 16 chars);
        computed on first use and kept."""
        digest = hashlib.sha256(b"test-time flip" if self.test_time_flip else b"")
        for key, tensor in self.module.state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def forget_fingerprint(self) -> None:
        """Drop the kept fingerprint: call after changing the weights in place."""
        self.__dict__.pop("fingerprint", None)

    def __deepcopy__(self, memo: dict) -> "FerModel":
        """A deep copy that computes its own fingerprint (a copy is made to be changed)."""
        clone = object.__new__(type(self))
        clone.__dict__.update({name: copy.deepcopy(value, memo) for name, value in self.__dict__.items()
                               if name != "fingerprint"})
        return clone

    def with_test_time_flip(self) -> "FerModel":
        """A copy that reads each face as the mean of it and its mirror image (shared weights,
        its own fingerprint, so cached results of the two never mix)."""
        clone = copy.copy(self)
        clone.__dict__.pop("fingerprint", None)
        clone.test_time_flip = True
        return clone

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, len(emotions))`` logits of a preprocessed ``(N, 3, S, S)`` batch."""
        if self.test_time_flip:
            return self.module.get_classifier()(self.features(batch))
        return self.module(batch.to(self.device))

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """``(N, feature_dim)`` pooled penultimate features (what the classifier sees)."""
        return pooled_features(self.module, batch.to(self.device), self.test_time_flip)

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax of :meth:`logits`."""
        return self.logits(batch).softmax(dim=1)

    def to(self, device: str | torch.device) -> "FerModel":
        """Move the weights to ``device``; returns self."""
        self.module.to(device)
        return self
