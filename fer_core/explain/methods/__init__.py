"""Attribution methods, one file each, registered by name in :mod:`fer_core.explain.base`
(``explain(model, faces, "gradcam", ...)``): saliency, integrated_gradients, smoothgrad,
occlusion, gradcam, lrp (with its canonizers). They never import :mod:`fer_core.explain.analysis`."""
