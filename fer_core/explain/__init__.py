"""Attribution maps behind one interface: ``explain(model, faces, "gradcam", target=...)``
(:mod:`.base`: the registry; :mod:`.methods`: one file per method), and what is done with them
(:mod:`.analysis`): overlays on the face crop (and on the aligned face template), facial-region
attribution, and saliency sanity checks stored per model for the dashboard."""

from fer_core.explain.base import (BASELINES, METHODS, REDUCTIONS, Attribution, MethodResult, centre_prior, eval_mode,
                                   explain, gaussian_blur, make_baseline, map_cell_size, method_defaults, method_names,
                                   register_method)
from fer_core.explain.methods import (integrated_gradients, lrp, occlusion, saliency,  # noqa: F401  (registers)
                                      smoothgrad)
from fer_core.explain.methods.gradcam import canonical_layer, default_layer, layers
from fer_core.explain.analysis.overlay import class_mean_maps, colormap_names, mean_face, normalize_map, overlay
from fer_core.explain.analysis.quality import load_quality, quality_path, record_quality
from fer_core.explain.analysis.regions import (REGIONS, aligned_template, compare_domains, crop_keypoints,
                                               harmonise_faces, region_areas, region_labels, region_masks,
                                               region_report, region_shares, to_template)
from fer_core.explain.analysis.sanity import (STATISTICS_METHOD, FaithfulnessResult, RandomisationResult,
                                              deletion_insertion, faithfulness_rows, most_faithful,
                                              randomisation_check, randomisation_check_both,
                                              randomisation_rows, sanity_report,
                                              statistics_method)

__all__ = [
    "BASELINES", "METHODS", "REDUCTIONS", "Attribution", "MethodResult", "centre_prior", "eval_mode", "explain",
    "gaussian_blur", "make_baseline", "map_cell_size", "STATISTICS_METHOD", "faithfulness_rows", "most_faithful",
    "randomisation_rows", "statistics_method", "compare_domains", "harmonise_faces",
    "method_defaults", "method_names", "register_method", "canonical_layer", "default_layer", "layers",
    "class_mean_maps", "colormap_names",
    "normalize_map", "overlay", "FaithfulnessResult", "RandomisationResult", "deletion_insertion",
    "randomisation_check", "randomisation_check_both", "sanity_report", "mean_face", "load_quality", "quality_path",
    "record_quality",
    "REGIONS", "aligned_template", "crop_keypoints", "region_areas", "region_labels", "region_masks",
    "region_report", "region_shares", "to_template",
]
