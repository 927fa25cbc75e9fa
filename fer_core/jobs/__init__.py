"""The job level: the only code that takes a :class:`~fer_core.config.Config`, resolves it once
into :class:`~fer_core.jobs.options.JobOptions` and passes typed values to the library below.

- :mod:`fer_core.jobs.options`: the options object (device, backend, batch size, progress, faces);
- :mod:`fer_core.jobs.workflows`: model and data from the config, evaluation runs, training runs;
- :mod:`fer_core.jobs.experiments`: the RQ2 sweep over mixes and k-fold cross-validation;
- :mod:`fer_core.jobs.precompute`: dataset-level passes (predict, embed, explain, gap, sanity);
- :mod:`fer_core.jobs.calibration`: post-hoc logit adjustment of a trained model;
- :mod:`fer_core.jobs.synthetic`: ``fer-core synth`` (prompts, grids, credits, extraction).

The CLI (:mod:`fer_core.cli`) converts its arguments to typed parameters and calls these;
nothing below this package imports it (``tests/test_architecture.py``).
"""
