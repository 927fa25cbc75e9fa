"""Attribution maps behind one interface: ``explain(model, faces, "gradcam", target=...)``,
overlays on the face crop, and saliency sanity checks."""

from fer_core.explain.base import (BASELINES, METHODS, REDUCTIONS, Attribution, explain, gaussian_blur,
                                   make_baseline, method_defaults, method_names, register_method)
from fer_core.explain import integrated_gradients, occlusion, saliency, smoothgrad  # noqa: F401  (registers)
from fer_core.explain.gradcam import layers
from fer_core.explain.overlay import class_mean_maps, colormap_names, normalize_map, overlay
from fer_core.explain.sanity import (FaithfulnessResult, RandomisationResult, deletion_insertion,
                                     randomisation_check, sanity_report)

__all__ = [
    "BASELINES", "METHODS", "REDUCTIONS", "Attribution", "explain", "gaussian_blur", "make_baseline",
    "method_defaults", "method_names", "register_method", "layers", "class_mean_maps", "colormap_names",
    "normalize_map", "overlay", "FaithfulnessResult", "RandomisationResult", "deletion_insertion",
    "randomisation_check", "sanity_report",
]
