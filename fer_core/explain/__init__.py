"""Attribution maps behind one interface: ``explain(model, faces, "gradcam", target=...)``,
overlays on the face crop (and on the aligned face template), facial-region attribution, and
saliency sanity checks stored per model for the dashboard."""

from fer_core.explain.base import (BASELINES, METHODS, REDUCTIONS, Attribution, MethodResult, explain,
                                   gaussian_blur, make_baseline, method_defaults, method_names, register_method)
from fer_core.explain import integrated_gradients, lrp, occlusion, saliency, smoothgrad  # noqa: F401  (registers)
from fer_core.explain.gradcam import default_layer, layers
from fer_core.explain.overlay import class_mean_maps, colormap_names, mean_face, normalize_map, overlay
from fer_core.explain.quality import load_quality, quality_path, record_quality
from fer_core.explain.regions import (REGIONS, aligned_template, crop_keypoints, region_areas, region_labels,
                                      region_masks, region_report, region_shares, to_template)
from fer_core.explain.sanity import (FaithfulnessResult, RandomisationResult, deletion_insertion,
                                     randomisation_check, sanity_report)

__all__ = [
    "BASELINES", "METHODS", "REDUCTIONS", "Attribution", "MethodResult", "explain", "gaussian_blur", "make_baseline",
    "method_defaults", "method_names", "register_method", "default_layer", "layers", "class_mean_maps", "colormap_names",
    "normalize_map", "overlay", "FaithfulnessResult", "RandomisationResult", "deletion_insertion",
    "randomisation_check", "sanity_report", "mean_face", "load_quality", "quality_path", "record_quality",
    "REGIONS", "aligned_template", "crop_keypoints", "region_areas", "region_labels", "region_masks",
    "region_report", "region_shares", "to_template",
]
