"""What a report reads and how it names it: the options (:class:`ReportOptions`), the
research questions' registry (:func:`register_question`, timm-style), and the context each
question's builder reads from (:class:`ReportContext`: evaluation runs, the model, the
result cache, datasets), with the protocol and command lines printed beside every figure."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from fer_core.cache import RESULTS_FILE, ResultCache
from fer_core.config import Config
from fer_core.cross_domain import evaluation_records
from fer_core.data import FaceDataset, dataset_names
from fer_core.errors import ConfigError, DataError, ModelLoadError
from fer_core.faces import FacePipeline
from fer_core.models import FerModel
from fer_core.precompute import DEFAULT_MAP_SIZE, select
from fer_core.report.base import Section
from fer_core.runs import Run, faces_summary
from fer_core.scoring import scoring_summary

#: Shared archives by the dataset they install (``fer-core data install ../shared/data/<archive>``).
ARCHIVES = {"fer2013": "fer2013.zip", "ferplus": "ferplus.zip", "sd_faces": "synthetic_sd_faces.zip"}


@dataclass(frozen=True)
class ReportOptions:
    """What a report reads (defaults: the project's runs, model and the shared data).

    ``runs_dirs``: folders of runs, read with their sub-folders (default ``paths.runs_dir``).
    ``model``: the weights whose stored maps and features RQ3 / RQ4 read (default: the
    configured model). ``real`` / ``synthetic``: the datasets compared, sampled by ``limit`` /
    ``per_class`` / ``sample_seed`` as ``fer-core explain`` and ``embed`` sampled them.
    ``method`` (default: the most faithful method that passed the model's stored sanity checks,
    else SmoothGrad), ``target``, ``layer``, ``map_size`` and ``params``: which stored maps.
    ``projections``: which stored 2-D projections of the features. ``metric``: the score of the
    cross-domain tables. ``n_resamples`` / ``n_permutations``: bootstrap and permutation sizes of
    the region statistics. ``config_file``: named in the commands the report suggests.
    """

    runs_dirs: tuple[Path, ...] = ()
    model: Path | None = None
    real: str = "fer2013:test"
    synthetic: str = "sd_faces"
    limit: int | None = None
    per_class: int | None = None
    sample_seed: int = 0
    method: str | None = None
    target: str = "true"
    layer: str | None = None
    map_size: int = DEFAULT_MAP_SIZE
    params: Mapping[str, Any] = field(default_factory=dict)
    projections: tuple[str, ...] = ("pca",)
    metric: str = "accuracy"
    n_resamples: int = 1000
    n_permutations: int = 9999
    config_file: Path | None = None


@dataclass(frozen=True)
class Question:
    """A research question a report answers: its code, its wording and the function that
    writes its section from a :class:`ReportContext`."""

    code: str
    title: str
    build: Callable[["ReportContext", Section], None]


#: The research questions, by code (``rq1`` ... ``rq4``), in the order they are reported.
QUESTIONS: dict[str, Question] = {}


def register_question(code: str, title: str) -> Callable[[Callable], Callable]:
    """Decorator that adds a section builder to :data:`QUESTIONS` under ``code``."""
    def add(build: Callable[["ReportContext", Section], None]) -> Callable:
        QUESTIONS[code] = Question(code, title, build)
        return build
    return add


def run_command(run: Run) -> str:
    """The command that made ``run`` (its recorded ``fer-core`` command line, or library call)."""
    command = (run.info.get("provenance") or {}).get("command") or {}
    if command.get("via") == "cli":
        return shlex.join(command.get("argv", []))
    return command.get("call") or "not recorded (made before runs recorded their command)"


def evaluation_protocol(run: Run) -> str:
    """One line on how an evaluation was made: data (and sample), scoring protocol, face
    detector, and the model with what it was trained on."""
    dataset, model = run.info.get("dataset", {}), run.info.get("model", {})
    sampling = (dataset.get("sampling") or {}).get("description") or "all faces"
    faces = run.metrics.get("n") if run.complete else dataset.get("faces")
    trained = (model.get("provenance") or {}).get("train_data") or "training data not recorded"
    return (f"Evaluation {run.id}: {dataset.get('label') or dataset.get('name')} ({dataset.get('domain')} faces; "
            f"{faces} of {dataset.get('size')} scored, {sampling}); {scoring_summary(run.info.get('scoring'))}; "
            f"face detector: {faces_summary(run.info.get('faces') or {})}; model "
            f"{model.get('architecture')} at {model.get('input_size')} px, fingerprint {model.get('fingerprint')}, "
            f"trained on {trained}.")


class ReportContext:
    """What the question builders read: ``config``, ``options``, the evaluation runs, the model,
    the result cache (never written to by a report) and sampled datasets."""

    def __init__(self, config: Config, options: ReportOptions = ReportOptions()) -> None:
        self.config = config
        self.options = options

    @cached_property
    def runs_dirs(self) -> list[Path]:
        """The folders of runs to read (those that exist)."""
        folders = self.options.runs_dirs or (self.config.paths.runs_dir,)
        return [path for path in (self.config.resolve(folder) for folder in folders) if path.is_dir()]

    @cached_property
    def records(self) -> pd.DataFrame:
        """:func:`~fer_core.cross_domain.evaluation_records` of every finished evaluation."""
        return evaluation_records(self.runs_dirs) if self.runs_dirs else evaluation_records([])

    def command(self, *args: object) -> str:
        """A ``fer-core`` command line (naming the config file the report was given)."""
        config = ["--config", str(self.options.config_file)] if self.options.config_file else []
        return shlex.join(["fer-core", *config, *map(str, args)])

    def sample_args(self, seed_flag: str = "--sample-seed") -> list[str]:
        """The options that draw this report's sample (``--limit N`` / ``--per-class N`` and the seed)."""
        options = self.options
        if options.limit is None and options.per_class is None:
            return []
        count = ["--limit", str(options.limit)] if options.limit is not None else ["--per-class", str(options.per_class)]
        return count + ([seed_flag, str(options.sample_seed)] if options.sample_seed else [])

    def model_args(self) -> list[str]:
        return ["--model", str(self.options.model)] if self.options.model else []

    def model(self, section: Section) -> FerModel | None:
        """The report's model, or None with the missing input recorded in ``section``."""
        try:
            return self._model
        except ModelLoadError as exc:
            section.lack(f"no model to read stored results of ({exc})",
                         self.command("train", "--train", "ferplus:train", "--val", "ferplus:valid"))
            return None

    @cached_property
    def _model(self) -> FerModel:
        from fer_core.jobs.workflows import load_configured_model
        return load_configured_model(self.config, self.options.model)

    def face_pipeline(self, model: FerModel) -> FacePipeline | None:
        from fer_core.jobs.workflows import face_pipeline_for
        return face_pipeline_for(self.config, model)

    def cache(self) -> ResultCache | None:
        """The project's result cache, or None when it has no file yet (a report creates none)."""
        path = self.config.resolve(self.config.paths.cache_dir) / RESULTS_FILE
        return ResultCache(path) if path.is_file() else None

    def dataset(self, spec: str, section: Section) -> FaceDataset | None:
        """``spec``'s faces as sampled by the options, or None with the missing dataset recorded."""
        from fer_core.jobs.workflows import dataset_for
        try:
            dataset = dataset_for(self.config, spec)
        except (DataError, ConfigError) as exc:
            name = spec.partition(":")[0]
            archive = ARCHIVES.get(name)
            section.lack(f"dataset {spec} cannot be opened ({exc})",
                         self.command("data", "install", f"../shared/data/{archive}") if archive else
                         self.command("data", "list") + "  # install it, or name one of "
                         + ", ".join(dataset_names()))
            return None
        return select(dataset, self.options.limit, per_class=self.options.per_class, seed=self.options.sample_seed)
