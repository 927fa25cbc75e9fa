"""The old path of :mod:`fer_core.explain.analysis.sanity` (issue 13 split explain/ into methods and
analysis): this name is that module, so its callers keep working; import the new path in new code."""

import sys

from fer_core.explain.analysis import sanity

sys.modules[__name__] = sanity
