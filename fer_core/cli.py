"""The ``fer-core`` command line (also ``python -m fer_core``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from fer_core import __version__
from fer_core.config import Config, load_config, parse_override
from fer_core.errors import DataError, FerCoreError, InvalidArgument

Handler = Callable[[argparse.Namespace, Config], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register a sub-command: its help line, its arguments and its handler."""
    def register(handler: Handler) -> Handler:
        COMMANDS[name] = (help, arguments, handler)
        return handler
    return register


def _model_and_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="weights file (default: model.weights_path or the shipped model)")
    parser.add_argument("--dataset", required=True,
                        help="dataset name[:split] (fer2013:test, ferplus:test, synthetic:test, sd_faces) or a folder")
    _sampling_arguments(parser)
    _dataset_arguments(parser)
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled .pt model files (they run code)")


def _dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """``--pre-cropped`` / ``--detect`` and ``--domain``: override what the registry says or a folder suggests."""
    from fer_core.data.datasets import DOMAINS
    crops = parser.add_mutually_exclusive_group()
    crops.add_argument("--pre-cropped", dest="pre_cropped", action="store_const", const=True,
                       help="the images are face crops: classify them whole (default: the dataset's own setting; "
                            "a folder counts as crops when its images are small and square)")
    crops.add_argument("--detect", dest="pre_cropped", action="store_const", const=False,
                       help="detect faces in the images even if they look like crops")
    parser.add_argument("--domain", choices=DOMAINS, help="real or synthetic faces (default: the dataset's own; "
                                                          "a folder under data/synthetic is synthetic)")


def _dataset(config: Config, args: argparse.Namespace):
    """``--dataset`` with the ``--pre-cropped/--detect`` and ``--domain`` overrides; what was
    inferred about it goes to stderr."""
    from fer_core.workflows import dataset_for
    dataset = dataset_for(config, args.dataset, pre_cropped=args.pre_cropped, domain=args.domain)
    for note in dataset.notes:
        print(f"fer-core: {note}", file=sys.stderr)
    return dataset


def _sampling_arguments(parser: argparse.ArgumentParser, sample_seed: bool = True) -> None:
    """``--limit`` / ``--per-class`` (a seeded sample stratified by class) and ``--sample-seed``."""
    faces = parser.add_mutually_exclusive_group()
    faces.add_argument("--limit", type=int, metavar="N",
                       help="a seeded sample of N faces (of each dataset) stratified by class: every class in "
                            "proportion, at least one face each")
    faces.add_argument("--per-class", type=int, metavar="N", help="a seeded sample of N faces of each class "
                                                                  "(all of a smaller class)")
    if sample_seed:
        parser.add_argument("--sample-seed", type=int, default=0, help="seed of the --limit / --per-class sample")


def _score_argument(parser: argparse.ArgumentParser) -> None:
    from fer_core.scoring import DEFAULT_PROTOCOL, PROTOCOLS
    parser.add_argument("--score-over", choices=list(PROTOCOLS), default=DEFAULT_PROTOCOL,
                        help="classes a prediction may be: " + "; ".join(f"{p.name}: {p.description}"
                                                                         for p in PROTOCOLS.values()))


def _print_scoring(scoring) -> None:
    """The scoring protocol beside a figure, and its warnings (stderr)."""
    print(scoring.summary())
    for warning in scoring.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, default=str))


def _with_trust(args: argparse.Namespace, config: Config) -> Config:
    if not getattr(args, "trust_pickle", False):
        return config
    import dataclasses
    return dataclasses.replace(config, model=dataclasses.replace(config.model, trust_pickle=True))


@command("info", "show the configuration, the model and the datasets present")
def _info(args: argparse.Namespace, config: Config) -> int:
    from fer_core.data import available_datasets
    from fer_core.errors import ModelLoadError
    from fer_core.workflows import resolve_weights
    try:
        weights: str = str(resolve_weights(config))
    except ModelLoadError as exc:
        weights = f"none ({exc})"
    _print_json({"version": __version__, "root": str(config.root), "weights": weights,
                 "datasets": available_datasets(config.resolve(config.data.root)), "config": config.to_dict()})
    return 0


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("install", "list", "pack", "unpack", "agree"),
                        help="install archives, list the datasets present, pack FER+ splits into one file "
                             "(for a GPU machine), unpack such a file into the data folder, or measure how two "
                             "labellings of the same faces agree")
    parser.add_argument("archives", type=Path, nargs="*", metavar="archive",
                        help="install: fer2013.zip, ferplus.zip or synthetic_sd_faces.zip (several at once); "
                             "unpack: the pack file; agree: two datasets, e.g. ferplus:test fer2013:test")
    parser.add_argument("--splits", default="train,valid", help="pack: the FER+ splits (default train,valid)")
    parser.add_argument("--out", type=Path, help="pack: the file to write")


@command("data", "install known dataset archives into the data folder, or list the datasets present with their "
         "faces per class", _data_arguments)
def _data(args: argparse.Namespace, config: Config) -> int:
    from fer_core.data import available_datasets, dataset_folder, install_archive, open_dataset
    data_root = config.resolve(config.data.root)
    if args.action == "list":
        names = available_datasets(data_root)
        for name in names:
            counts = open_dataset(name, data_root).class_counts()
            print(f"{name:16} {sum(counts.values()):6} faces  " + ", ".join(f"{e} {n}" for e, n in counts.items()))
        if not names:
            print(f"no datasets under {data_root}")
        return 0
    if args.action == "pack":
        from fer_core.data.packing import pack_ferplus
        if args.out is None:
            raise InvalidArgument("fer-core data pack needs --out FILE")
        counts = pack_ferplus(dataset_folder("ferplus", data_root), args.splits.split(","), args.out)
        print(f"packed FER+ {counts} -> {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
        return 0
    if args.action == "agree":
        from fer_core.data.agreement import label_agreement
        if len(args.archives) != 2:
            raise InvalidArgument("fer-core data agree needs two datasets, e.g. ferplus:test fer2013:test")
        first, second = (open_dataset(str(spec), data_root) for spec in args.archives)
        print(label_agreement(first, second).describe())
        return 0
    if not args.archives:
        raise InvalidArgument(f"fer-core data {args.action} needs the archives' paths")
    if args.action == "unpack":
        from fer_core.data.packing import unpack_ferplus
        for pack in args.archives:
            folder = dataset_folder("ferplus", data_root)
            print(f"unpacked FER+ {unpack_ferplus(pack, folder)} from {pack} into {folder}")
        return 0
    missing = [str(a) for a in args.archives if not a.is_file()]
    if missing:
        raise InvalidArgument(f"no such archive(s): {missing}; nothing installed")
    for archive in args.archives:
        print(f"installed {archive.name} into {install_archive(archive, None, data_root)}")
    return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    _model_and_data(parser)
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument("--cache", action="store_true",
                        help="reuse logits and features stored in paths.cache_dir/results.sqlite, and store new ones")
    _score_argument(parser)
    _shard_argument(parser)


def _shard_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shard", metavar="K/N",
                        help="process only block K of N (K from 0) so N processes split the data; under torchrun "
                             "the split comes from RANK/WORLD_SIZE")


@command("predict", "predict every face of a dataset into a parquet table (resumable)", _predict_arguments)
def _predict(args: argparse.Namespace, config: Config) -> int:
    from fer_core.inference import photo_files
    from fer_core.jobs.precompute import predict
    from fer_core.precompute import merge_shard_predictions, select
    from fer_core.scoring import scoring_for
    from fer_core.workflows import load_configured_model
    config = _with_trust(args, config)
    shard = _shard(args)
    model = load_configured_model(config, args.model)
    if photo_files(args.dataset) is not None:  # a plain folder of photos: every face of every photo
        return _predict_photos(args, config, model, shard)
    dataset = select(_dataset(config, args), args.limit, shard, args.per_class, args.sample_seed)
    table, out = predict(config, model, dataset, args.out, args.cache, args.score_over, shard)
    print(f"{len(table)} predictions of {dataset.label} -> {out / 'predictions.parquet'}")
    _print_scoring(scoring_for(args.score_over, model.emotions, dataset.emotions, dataset.labels))
    merged = merge_shard_predictions(args.out, shard.count) if shard is not None else None
    if merged is not None:
        print(f"all {shard.count} shards done: {len(merged)} predictions -> {args.out / 'predictions.parquet'}")
    return 0


def _predict_photos(args: argparse.Namespace, config: Config, model, shard) -> int:
    """``predict`` on a plain folder of photos: one row per detected face (no labels, no classes)."""
    from fer_core.jobs.precompute import predict_folder
    from fer_core.scoring import scoring_for
    if shard is not None or args.per_class is not None:
        raise InvalidArgument("a folder of photos has no classes and is predicted whole: leave out --shard and "
                              "--per-class")
    table = predict_folder(config, model, args.dataset, args.out, args.score_over, args.limit, args.sample_seed)
    photos = table["key"].nunique()
    without = int((~table["face_found"] & table["error"].isna()).sum())
    print(f"{int(table['face_found'].sum())} faces in {photos} photos ({without} without a face, "
          f"{int(table['error'].notna().sum())} unreadable) -> {Path(args.out) / 'predictions.parquet'}")
    _print_scoring(scoring_for(args.score_over, model.emotions, ()))
    return 0


def _shard(args: argparse.Namespace):
    """``--shard K/N``, else torchrun's rank of its world size, else None (everything)."""
    from fer_core.precompute import Shard
    from_torchrun = Shard.from_environment()
    if args.shard is None:
        return from_torchrun
    if from_torchrun is not None:
        raise InvalidArgument("--shard and torchrun both split the data; under torchrun leave --shard out")
    return Shard.parse(args.shard)


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _model_and_data(parser)
    parser.add_argument("--name", help="run name (re-use it to resume); default: generated")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    parser.add_argument("--test-time-flip", action="store_true",
                        help="read each face as the mean of it and its mirror image (twice the compute; recorded "
                             "in run.json, and the model's fingerprint changes)")
    _score_argument(parser)


@command("evaluate", "evaluate a model on a dataset into a run directory", _evaluate_arguments)
def _evaluate(args: argparse.Namespace, config: Config) -> int:
    from fer_core.workflows import evaluate_model, load_configured_model, resolve_weights
    config = _with_trust(args, config)
    weights = resolve_weights(config, args.model)
    model = load_configured_model(config, weights)
    if args.test_time_flip:
        model = model.with_test_time_flip()
    from fer_core.scoring import scoring_summary
    run = evaluate_model(config, model, _dataset(config, args), weights_path=weights, name=args.name,
                         limit=args.limit, per_class=args.per_class, sample_seed=args.sample_seed,
                         n_bootstrap=args.bootstrap, score_over=args.score_over)
    m = run.metrics
    low, high = m["ci95"]["accuracy"]
    print(f"{run.path}\n{run.info['dataset']['label']}: accuracy {m['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f}), "
          f"balanced {m['balanced_accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, n={m['n']}, "
          f"{scoring_summary(run.info['scoring'])}" + (", with test-time flip" if model.test_time_flip else ""))
    for warning in run.info["scoring"]["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _start_arguments(parser: argparse.ArgumentParser, default_epochs: int) -> None:
    """Where training starts and its stages: ``--init``, ``--recipe``, ``--epochs``, ``--lr``, ..."""
    parser.add_argument("--init", type=Path, help="start from these weights and fine-tune them (the plan's design; "
                                                  "e.g. weights/fer_b0_ferplus.safetensors)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow a pickled --init file")
    parser.add_argument("--recipe", help="scratch: one stage over all layers, --epochs at --lr; hsemotion: head 3 "
                                         "epochs at 1e-3, then all 6 at 1e-4; gradual: the plan's block-by-block "
                                         "unfreezing (head, top:2, top:4, all; 9 epochs); or the stages written out "
                                         "as TRAINABLE:EPOCHS:LR,... (e.g. head:1:1e-3,all:2:1e-4). Default: "
                                         "hsemotion with --init, else scratch")
    parser.add_argument("--architecture", help="default: model.architecture (with --init: the init model's)")
    parser.add_argument("--input-size", type=int, help="default: model.input_size (with --init: the init model's; "
                                                        "another size fine-tunes it at that size, e.g. 64 -> 96 px)")
    parser.add_argument("--epochs", type=int, help=f"epochs of the scratch recipe (default {default_epochs}); with "
                                                   "another recipe an error (write its stages out instead)")
    parser.add_argument("--lr", type=float, help="peak learning rate of the scratch recipe (default 2e-3); with "
                                                 "another recipe an error")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="training dataset spec, e.g. ferplus:train; join several with + "
                                                       "(ferplus:train+fer2013:train: the same photos under both label "
                                                       "sets, FER+ votes with --soft-labels)")
    parser.add_argument("--val", required=True, help="validation dataset spec (selects the best epoch), e.g. ferplus:valid")
    parser.add_argument("--name", help="run name under paths.runs_dir (default: generated)")
    parser.add_argument("--resume", action="store_true", help="continue the run --name from its last checkpoint")
    parser.add_argument("--synthetic", help="synthetic faces to mix into --train, e.g. sd_faces:train")
    parser.add_argument("--synthetic-fraction", type=float, metavar="F",
                        help="with --synthetic: the synthetic share of the training set (0-1); both parts drawn "
                             "without repeats, stratified by class, with --seed")
    parser.add_argument("--size", type=int, help="with --synthetic: faces in the mix (default: the most it allows)")
    _start_arguments(parser, default_epochs=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", choices=("adamw", "adam"), default="adamw")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--sam-rho", type=float, default=0.0, help="> 0: SAM (the plan's RobustOptimizer, rho 0.05)")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--soft-labels", action="store_true", help="train on FER+ vote distributions")
    parser.add_argument("--class-weights", action="store_true", help="inverse-frequency class weights")
    parser.add_argument("--logit-adjustment", type=float, default=0.0, metavar="TAU",
                        help="train on logits + TAU * log(class prior), predict with plain logits (1.0: balanced "
                             "for rare classes such as contempt and disgust; 0: off)")
    parser.add_argument("--select", choices=("accuracy", "macro_f1"), default="accuracy",
                        help="validation metric that picks the best epoch")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                        help="blend each batch with a shuffled copy of itself by Beta(ALPHA, ALPHA) (0.2-0.4 usual; "
                             "0: off)")
    parser.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                        help="validate and save an exponential moving average of the weights with this decay per "
                             "step (e.g. 0.998; 0: off)")
    parser.add_argument("--grayscale", action="store_true",
                        help="train and run on grey levels (for grey training sets such as FER+ and FER2013; colour "
                             "photos are then turned grey before the model sees them)")
    parser.add_argument("--drop-rate", type=float, default=0.2, help="dropout before the classifier")
    parser.add_argument("--max-steps", type=int, help="at most N batches per epoch (quick trials)")
    parser.add_argument("--workers", type=int, default=0,
                        help="data-loading processes for the training batches (0: none; on a GPU use several)")
    parser.add_argument("--seed", type=int, default=0)


@command("train", "train or fine-tune a model; writes a run directory (resumable)", _train_arguments)
def _train(args: argparse.Namespace, config: Config) -> int:
    import os
    from fer_core.jobs.options import JobOptions
    from fer_core.jobs.workflows import TrainingData, train_model, training_settings, training_start
    config = _with_trust(args, config)
    start = training_start(config, _start_request(args), default_epochs=30)
    options = JobOptions.from_config(config)
    settings = training_settings(
        options, start, augment=not args.no_augment, batch_size=args.batch_size, optimizer=args.optimizer,
        weight_decay=args.weight_decay, sam_rho=args.sam_rho, label_smoothing=args.label_smoothing,
        soft_targets=args.soft_labels, class_weights=args.class_weights, logit_adjustment=args.logit_adjustment,
        drop_rate=args.drop_rate, select_metric=args.select, seed=args.seed, max_steps_per_epoch=args.max_steps,
        mixup_alpha=args.mixup, ema_decay=args.ema, grayscale=args.grayscale,
        loader_workers=args.workers, mixed_precision=options.device.startswith("cuda"))
    data = TrainingData(args.train, args.val, args.synthetic, args.synthetic_fraction, args.size)
    result = train_model(config, settings, data, start, name=args.name, resume=args.resume)
    best = result["best"]
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(f"{result['run_dir']}\nbest epoch {best['epoch']}: val accuracy {best['val_accuracy']:.4f}, "
              f"macro-F1 {best['val_macro_f1']:.4f} -> {result['run_dir'] / 'best.safetensors'}")
    return 0


def _calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", type=Path, help="a trained model file")
    parser.add_argument("--train", required=True, help="the data it was trained on, for the class prior "
                                                       "(ferplus:train; joined specs as in train)")
    parser.add_argument("--val", required=True, help="validation data the strength is chosen on (never a test set)")
    parser.add_argument("--out", type=Path, required=True, help="output stem or .safetensors path")
    parser.add_argument("--fp16", action="store_true", help="store weights as float16 (half the size)")
    parser.add_argument("--trust-pickle", action="store_true")


@command("calibrate", "post-hoc logit adjustment: shift the classifier bias by -tau*log(prior), tau chosen on "
                      "validation data", _calibrate_arguments)
def _calibrate(args: argparse.Namespace, config: Config) -> int:
    from fer_core.jobs.calibration import calibrate
    done = calibrate(_with_trust(args, config), args.weights, args.train, args.val, args.out, args.fp16)
    calibration = done.calibration
    print(f"{'tau':>6} {'accuracy':>9} {'macro-F1':>9} {'min recall':>11}   (on {done.validation}, argmax over the "
          f"model's {len(done.model.emotions)} classes)")
    for row in calibration.table:
        mark = "  <- chosen" if row["tau"] == calibration.tau else ""
        print(f"{row['tau']:6.3f} {row['accuracy']:9.4f} {row['macro_f1']:9.4f} {row['min_recall']:11.3f}{mark}")
    print(f"tau {calibration.tau} -> {done.path} (fingerprint {done.model.fingerprint})")
    return 0


def _average_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", type=Path, nargs="+", help="two or more model files fine-tuned from one start")
    parser.add_argument("--out", type=Path, required=True, help="output stem or .safetensors path")
    parser.add_argument("--fp16", action="store_true", help="store weights as float16 (half the size)")
    parser.add_argument("--trust-pickle", action="store_true")


@command("average", "weight averaging (model soup): one model whose weights are the mean of the given models'",
         _average_arguments)
def _average(args: argparse.Namespace, config: Config) -> int:
    import torch

    from fer_core.jobs.workflows import load_configured_model
    from fer_core.models import save_model
    from fer_core.models.averaging import average_models
    config = _with_trust(args, config)
    averaged = average_models([load_configured_model(config, path) for path in args.weights])
    path = save_model(averaged, args.out, dtype=torch.float16 if args.fp16 else torch.float32)
    print(f"the mean of {len(args.weights)} models -> {path} (fingerprint {averaged.fingerprint}); "
          "check it on validation data (fer-core evaluate --dataset ferplus:valid)")
    return 0


def _experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (re-run to resume)")
    _start_arguments(parser, default_epochs=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sam-rho", type=float, default=0.0, help="> 0: SAM (the plan's RobustOptimizer)")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--max-steps", type=int, help="at most N batches per epoch (quick trials)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")


def _start_request(args: argparse.Namespace):
    """``--init``, ``--recipe``, ``--epochs``, ``--lr``, ``--architecture``, ``--input-size``."""
    from fer_core.jobs.workflows import StartRequest
    return StartRequest(args.init, args.recipe, args.epochs, args.lr, args.architecture, args.input_size)


def _experiment_settings(args: argparse.Namespace, config: Config):
    """Training settings of ``sweep`` and ``crossval`` (hard labels; stages from the recipe) and
    the :class:`~fer_core.jobs.workflows.TrainingStart` (the ``--init`` model and recipe)."""
    from fer_core.jobs.options import JobOptions
    from fer_core.jobs.workflows import training_settings, training_start
    start = training_start(_with_trust(args, config), _start_request(args), default_epochs=10)
    settings = training_settings(
        JobOptions.from_config(config), start, augment=not args.no_augment, batch_size=args.batch_size,
        sam_rho=args.sam_rho, label_smoothing=args.label_smoothing, soft_targets=False, seed=getattr(args, "seed", 0),
        max_steps_per_epoch=args.max_steps)
    return settings, start


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0,0.5,1, got {text!r}") from None


def _whole_numbers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 0,1,2, got {text!r}") from None


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--real", required=True, help="real training data, e.g. ferplus:train")
    parser.add_argument("--synthetic", help="synthetic training data, e.g. sd_faces:train (the shared faces) or "
                                            "synthetic:train (your extracted grids)")
    parser.add_argument("--val", required=True, help="validation data (selects each run's best epoch)")
    parser.add_argument("--test", action="append", required=True, help="a test set (repeatable; real and synthetic)")
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("--fractions", type=_fractions, default=(0.0, 0.25, 0.5, 0.75, 1.0),
                        help="design 'share': the training set's size is fixed and these synthetic shares of it are "
                             "compared, comma-separated (default 0,0.25,0.5,0.75,1)")
    levels.add_argument("--added", type=_whole_numbers, metavar="N,N,...",
                        help="design 'added': the same real faces in every run plus N synthetic faces "
                             "(nested: the 100 added are among the 200), e.g. 0,100,200,400")
    parser.add_argument("--size", type=int, help="share: training faces per run (default: the most every fraction "
                                                 "allows); added: real faces per run (default: all of --real)")
    parser.add_argument("--seeds", type=_whole_numbers, default=(0,),
                        help="repeat every mix with these seeds (a seed draws the mix and seeds training), e.g. "
                             "0,1,2: the summary gives mean, sd and 95%% CI over seeds and a test across mixes "
                             "paired by seed and face (default 0)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="select on and score a seeded (seed 0) class-stratified sample of N faces of the "
                             "validation and each test set (quick trials; the records say so)")
    _experiment_arguments(parser)


@command("sweep", "train one run per synthetic share and score each on every test set (one summary table)",
         _sweep_arguments)
def _sweep(args: argparse.Namespace, config: Config) -> int:
    from fer_core.jobs.experiments import sweep, sweep_report
    settings, start = _experiment_settings(args, config)
    design = "share" if args.added is None else "added"
    sweep(config, args.real, args.synthetic, args.val, args.test, settings, args.out, fractions=args.fractions,
          size=args.size, n_bootstrap=args.bootstrap, design=design, added=args.added or (), seeds=args.seeds,
          init=start.init, recipe=start.recipe, limit=args.limit)
    print(sweep_report(config.resolve(args.out)))
    return 0


def _crossval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset spec, e.g. synthetic:train")
    parser.add_argument("--k", type=int, default=5, help="number of stratified folds (faces of one generated grid "
                                                         "stay in one fold)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and of training")
    _experiment_arguments(parser)


@command("crossval", "stratified k-fold cross-validation (every generated grid inside one fold): per-fold metrics, "
                     "mean and std", _crossval_arguments)
def _crossval(args: argparse.Namespace, config: Config) -> int:
    from fer_core.jobs.experiments import cross_validate
    settings, start = _experiment_settings(args, config)
    summary = cross_validate(config, args.dataset, args.k, settings, args.out, n_bootstrap=args.bootstrap,
                             init=start.init, recipe=start.recipe)
    for metric in ("accuracy", "macro_f1"):
        print(f"{metric}: {summary[metric]['mean']:.4f} +- {summary[metric]['std']:.4f} over {args.k} folds")
    print(f"-> {config.resolve(args.out) / 'crossval.json'}")
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", type=Path, help="a model file (e.g. runs/<run>/best.safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="output stem or .safetensors path")
    parser.add_argument("--fp16", action="store_true", help="store weights as float16 (half the size)")
    parser.add_argument("--onnx", action="store_true",
                        help="also write a float32 ONNX graph (outputs logits and features) as <stem>.onnx")
    parser.add_argument("--trust-pickle", action="store_true")


@command("export", "re-save a model in fer_core's safetensors + JSON format (optionally fp16, optionally ONNX too)",
         _export_arguments)
def _export(args: argparse.Namespace, config: Config) -> int:
    import torch
    from fer_core.backends import export_onnx
    from fer_core.models import load_model, save_model
    model = load_model(args.weights, trust_pickle=args.trust_pickle or config.model.trust_pickle)
    path = save_model(model, args.out, dtype=torch.float16 if args.fp16 else torch.float32)
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if args.onnx:
        graph = export_onnx(model, path.with_suffix(".onnx"))
        print(f"{graph} ({graph.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", type=Path, help="the model file the card describes")
    parser.add_argument("runs", type=Path, nargs="+", help="its evaluation run directories (first: confusion matrix)")
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    parser.add_argument("--image", type=Path, required=True, help="confusion-matrix PNG to write")


@command("model-card", "write a model card (markdown + confusion PNG) from evaluation runs", _card_arguments)
def _model_card(args: argparse.Namespace, config: Config) -> int:
    import os
    from fer_core.model_card import model_card
    from fer_core.runs import Run
    link = os.path.relpath(args.image.resolve(), args.out.resolve().parent)
    text = model_card(args.weights, [Run.load(r) for r in args.runs], args.image, link)
    args.out.write_text(text, encoding="utf-8")
    print(f"{args.out} and {args.image}")
    return 0


def _weights_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "download"))
    parser.add_argument("name", nargs="?", help="which weights (see: fer-core weights list)")
    parser.add_argument("--dir", type=Path, default=Path("weights"), help="where to put them (default: weights/)")


@command("weights", "list or download published weights (HSEmotion, MediaPipe) for offline use", _weights_arguments)
def _weights(args: argparse.Namespace, config: Config) -> int:
    from fer_core.weights import SOURCES, download
    if args.action == "list":
        for source in SOURCES.values():
            print(f"{source.name:24} {source.description}{' (load with --trust-pickle)' if source.needs_trust else ''}")
        return 0
    if not args.name:
        raise InvalidArgument("fer-core weights download needs a name; see fer-core weights list")
    print(download(args.name, config.resolve(args.dir)))
    return 0


def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)


@command("compare", "McNemar's test and per-class deltas between two evaluation runs", _compare_arguments)
def _compare(args: argparse.Namespace, config: Config) -> int:
    from fer_core.runs import Run
    from fer_core.workflows import compare_runs
    _print_json(compare_runs(Run.load(args.run_a), Run.load(args.run_b)))
    return 0


def _emotion(text: str) -> str:
    from fer_core.labels import parse_emotion
    try:
        return parse_emotion(text)
    except FerCoreError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("prompts", "generate", "import", "extract", "report", "ledger", "revert"),
                        help="prompts: print them; generate: make grids (credits from the ledger); import: register "
                             "grids made elsewhere; extract: cut, check and save the faces; report: counts and "
                             "contact sheets of every cell; ledger: credits, the plan's faces-per-credit arithmetic "
                             "and pending reservations; revert: undo an import (batch id, entry id or file)")
    parser.add_argument("files", nargs="*", metavar="FILE_OR_ID",
                        help="import: grid images; revert: batch ids, ledger entry ids or imported files")
    parser.add_argument("--manifest", type=Path, help="import: a CSV or YAML list of grids, one row per file "
                                                      "(file, emotion[, gender, intensity, age_range, prompt, seed])")
    parser.add_argument("--emotion", action="append", type=_emotion,
                        help="emotion, any case (fear, Fear, happy; repeatable; default: all 8)")
    parser.add_argument("--gender", action="append", choices=("women", "men", "mixed", "unspecified"),
                        help="mixed: both in one grid; unspecified: the prompt names none (repeatable; default: women "
                             "and men for prompts and generate, unspecified for import)")
    parser.add_argument("--intensity", action="append", choices=("slight", "moderate", "extreme"), help="repeatable")
    parser.add_argument("--age-range", help="e.g. 20-35 (default: diverse age ranges)")
    parser.add_argument("--template", default="current", help="prompt template: current, plan-best, plan-professional")
    parser.add_argument("--prompt", help="import: the exact prompt text the grids were made with")
    parser.add_argument("--backend", default="http", help="generate: http or diffusers")
    parser.add_argument("--backend-config", type=Path, help="generate: JSON file of backend arguments "
                                                           "(endpoint, payload, api_key_env, model_dir, ...)")
    parser.add_argument("--grids", type=int, default=1, help="generate: grids per prompt")
    parser.add_argument("--seed-start", type=int, default=0, help="first seed")
    parser.add_argument("--budget", type=int, help="set the credit budget of the ledger")
    parser.add_argument("--credits", type=int, default=1, help="import: credits each grid cost")
    parser.add_argument("--model-name", default="imported", help="import: the model that made the grids")
    parser.add_argument("--face-model", type=Path, help="extract: BlazeFace .tflite (default: the faces config)")
    parser.add_argument("--thresholds", type=Path, help="extract: JSON file of quality thresholds")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="extract: share of grids in the test split")
    parser.add_argument("--resolve", metavar="ENTRY", help="ledger: settle an interrupted reservation")
    parser.add_argument("--spent", action="store_true", help="ledger --resolve: the credit was spent (else released)")
    parser.add_argument("--json", action="store_true", help="prompts: print JSON")


@command("synth", "synthetic faces: prompts, grid generation with a credit ledger, face extraction, report",
         _synth_arguments)
def _synth(args: argparse.Namespace, config: Config) -> int:
    from fer_core.jobs import synthetic
    asked = synthetic.PromptRequest(tuple(args.emotion or ()), tuple(args.gender or ()), tuple(args.intensity or ()),
                                    args.template, args.age_range)
    jobs: dict[str, Callable[[], int]] = {
        "prompts": lambda: synthetic.prompts(config, asked, as_json=args.json),
        "generate": lambda: synthetic.generate(config, asked, args.backend, args.backend_config, args.grids,
                                               args.seed_start, args.budget),
        "import": lambda: synthetic.import_(config, synthetic.ImportRequest(
            tuple(args.files), args.manifest, _one(args.emotion, "--emotion"), _one(args.gender, "--gender"),
            _one(args.intensity, "--intensity"), args.age_range, args.prompt, args.model_name, args.credits,
            args.template, args.seed_start), args.budget),
        "extract": lambda: synthetic.extract(config, args.face_model, args.thresholds, args.test_fraction),
        "report": lambda: synthetic.report(config),
        "ledger": lambda: synthetic.ledger(config, args.budget, args.resolve, args.spent),
        "revert": lambda: synthetic.revert(config, args.files),
    }
    return jobs[args.action]()


def _one(values: list[str] | None, flag: str) -> str | None:
    """The one value ``synth import`` takes of a repeatable flag (several: an error)."""
    if values and len(values) > 1:
        raise InvalidArgument(f"fer-core synth import takes one {flag} (per file: use --manifest)")
    return values[0] if values else None


def _cache_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("info", "prune"),
                        help="info: entries and bytes per kind and model; prune: remove entries (then compact)")
    parser.add_argument("--model", help="prune: only this model fingerprint")
    parser.add_argument("--kind", help="prune: only this kind (logits, embedding, face, keypoints, attribution, "
                                       "diagnostics, projection)")
    parser.add_argument("--older-than", type=float, metavar="DAYS", help="prune: only entries unused for DAYS days")
    parser.add_argument("--keep-models", type=int, metavar="N", help="prune: spare the N most recently used models")


@command("cache", "inspect or prune the result cache (paths.cache_dir/results.sqlite)", _cache_arguments)
def _cache(args: argparse.Namespace, config: Config) -> int:
    from fer_core.cache import ResultCache
    with ResultCache.from_config(config) as cache:
        if args.action == "info":
            _print_json(cache.info())
            return 0
        removed = cache.prune(args.model, args.kind, args.older_than, args.keep_models)
        saved = cache.vacuum()
        print(f"removed {removed} entries, {saved / 2**20:.1f} MiB freed; {len(cache)} left in {cache.path}")
    return 0


def _embed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="weights file (default: model.weights_path or the shipped model)")
    parser.add_argument("--dataset", action="append", required=True,
                        help="dataset name[:split] or folder (repeatable: projected together)")
    parser.add_argument("--projection", default="pca",
                        help="comma-separated projections of all datasets together: pca, tsne, umap ('' for none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of t-SNE and UMAP")
    _sampling_arguments(parser)
    _score_argument(parser)
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled .pt model files (they run code)")
    _shard_argument(parser)


@command("embed", "precompute penultimate features (and 2-D projections) of datasets into the result cache",
         _embed_arguments)
def _embed(args: argparse.Namespace, config: Config) -> int:
    from fer_core.jobs.precompute import embed
    projections = tuple(p.strip() for p in args.projection.split(",") if p.strip())
    _print_json(embed(_with_trust(args, config), args.dataset, args.model, projections, seed=args.seed,
                      limit=args.limit, per_class=args.per_class, sample_seed=args.sample_seed,
                      score_over=args.score_over, shard=_shard(args)))
    return 0

def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    _model_and_data(parser)
    parser.add_argument("--method", required=True, help="attribution method (gradcam, saliency, lrp, ...)")
    parser.add_argument("--target", default="predicted",
                        help="class to explain: predicted (default), true (the label) or an emotion name")
    parser.add_argument("--layer", help="layer of layer-based methods (default: the last conv stage)")
    parser.add_argument("--map-size", type=int, default=56, help="side of the stored maps (at most the input size)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a method setting, VALUE as JSON or text (repeatable), e.g. --param n_steps=16")
    parser.add_argument("--batch-size", type=int, default=16, help="faces per attribution batch")
    _shard_argument(parser)


def _method_params(pairs: Sequence[str]) -> dict[str, object]:
    params: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise InvalidArgument(f"--param: expected NAME=VALUE, got {pair!r}")
        try:
            params[name.strip()] = json.loads(text)
        except json.JSONDecodeError:
            params[name.strip()] = text
    return params


@command("explain", "precompute attribution maps of a dataset into the result cache", _explain_arguments)
def _explain(args: argparse.Namespace, config: Config) -> int:
    from fer_core.jobs.precompute import explain
    from fer_core.precompute import select
    config = _with_trust(args, config)
    shard = _shard(args)
    dataset = select(_dataset(config, args), args.limit, per_class=args.per_class, seed=args.sample_seed)
    _print_json(explain(config, dataset, args.method, args.model, target=args.target, layer=args.layer,
                        map_size=args.map_size, batch_size=args.batch_size, params=_method_params(args.param),
                        shard=shard))
    return 0

def _gap_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="weights file (default: model.weights_path or the shipped model)")
    parser.add_argument("--real", required=True, help="real faces, e.g. fer2013:test")
    parser.add_argument("--synthetic", required=True, help="synthetic faces, e.g. sd_faces")
    _sampling_arguments(parser, sample_seed=False)
    parser.add_argument("--sample", type=int, default=2000,
                        help="at most N faces per domain enter the metrics (seeded draw; 0: all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the --limit / --per-class sample and of the --sample draw")
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled .pt model files (they run code)")


@command("gap", "domain-gap report (domain classifier, MMD, KID, centroids, nearest real face) on cached features",
         _gap_arguments)
def _gap(args: argparse.Namespace, config: Config) -> int:
    from fer_core.jobs.precompute import gap
    report = gap(_with_trust(args, config), args.real, args.synthetic, args.model, sample=args.sample or None,
                 limit=args.limit, per_class=args.per_class, seed=args.seed)
    _print_json({name: report[name] for name in ("real", "synthetic", "domain_classifier", "mmd_rbf", "kid",
                                                 "nearest_real", "computed_features", "path")})
    return 0

def _sanity_arguments(parser: argparse.ArgumentParser) -> None:
    _model_and_data(parser)
    parser.add_argument("--method", action="append", dest="methods", metavar="METHOD",
                        help="attribution method to check (repeatable; default: every registered method)")
    parser.add_argument("--faces", type=int, default=32, help="faces to check on, spread over the dataset")
    parser.add_argument("--depth", type=int, default=3, help="top layers re-initialised in the randomisation check")
    parser.add_argument("--steps", type=int, default=16, help="deletion / insertion steps")
    parser.add_argument("--seed", type=int, default=0)


@command("sanity", "saliency sanity checks per method (model randomisation vs noise stability and different faces; "
                   "deletion / insertion vs a random order and the centre prior), stored for the dashboard's flags",
         _sanity_arguments)
def _sanity(args: argparse.Namespace, config: Config) -> int:
    from fer_core.jobs.precompute import sanity
    from fer_core.precompute import select
    config = _with_trust(args, config)
    dataset = select(_dataset(config, args), args.limit, per_class=args.per_class, seed=args.sample_seed)
    checked = sanity(config, dataset, args.methods or (), args.model, faces=args.faces, depth=args.depth,
                     steps=args.steps, seed=args.seed)
    _print_json(checked["methods"])
    chosen = checked["most_faithful"]
    print(f"most faithful method (default for region / faithfulness statistics): {chosen['method']} "
          f"({chosen['note']})", file=sys.stderr)
    return 0

def _cross_domain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", type=Path, action="append",
                        help="folder of evaluation runs, read with its sub-folders (repeatable; default: "
                             "paths.runs_dir)")
    parser.add_argument("--metric", default="accuracy", help="accuracy (default), balanced_accuracy or macro_f1")
    parser.add_argument("--aggregate", nargs="?", const="train_domain", metavar="GROUP",
                        help="one row per training domain (GROUP train_domain, the default) or per train_data, with "
                             "the number of models, their mean, std, min and max, instead of one row per model")
    parser.add_argument("--out", type=Path, help="CSV of the cells to write, with a .md table and a .json record "
                                                 "beside it (default: paths.runs_dir/exports/cross_domain-...csv)")


@command("cross-domain", "the trained-on x tested-on matrix, one row per model (or --aggregate): print it and export "
                         "CSV + markdown", _cross_domain_arguments)
def _cross_domain(args: argparse.Namespace, config: Config) -> int:
    from fer_core.cross_domain import cross_domain_cells, evaluation_records, export_cross_domain, matrix_markdown
    from fer_core.runs import run_id
    runs_dir = config.resolve(config.paths.runs_dir)
    sources = [config.resolve(folder) for folder in args.runs_dir or [runs_dir]]
    cells = cross_domain_cells(evaluation_records(sources), args.metric, args.aggregate)
    out = config.resolve(args.out) if args.out else \
        runs_dir / "exports" / f"{run_id('cross-domain', args.metric, args.aggregate or 'per-model')}.csv"
    paths = export_cross_domain(cells, args.metric, out, config.root, sources, args.aggregate)
    print(matrix_markdown(cells, args.metric))
    print("-> " + ", ".join(str(path) for path in paths.values()))
    return 0


def _compared_faces_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and the real and synthetic faces that RQ3 / RQ4 compare, with their sample."""
    parser.add_argument("--model", type=Path, help="weights file (default: model.weights_path or the shipped model)")
    parser.add_argument("--real", default="fer2013:test", help="real faces (default: fer2013:test)")
    parser.add_argument("--synthetic", default="sd_faces", help="synthetic faces (default: sd_faces)")
    _sampling_arguments(parser)
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled .pt model files (they run code)")


def _map_arguments(parser: argparse.ArgumentParser) -> None:
    """Which attribution maps, and the sizes of the region statistics."""
    parser.add_argument("--method", help="attribution method (default: the most faithful method that passed the "
                                         "model's stored sanity checks, else smoothgrad)")
    parser.add_argument("--target", choices=("true", "predicted"), default="true",
                        help="the class each map explains (default: the face's true class)")
    parser.add_argument("--layer", help="layer of layer-based methods (default: the method's)")
    parser.add_argument("--map-size", type=int, help="side of the stored maps (default: fer-core explain's)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a method setting, as given to fer-core explain (repeatable)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the region shares' CIs")
    parser.add_argument("--permutations", type=int, default=9999, help="permutations of each region's test")


def _report_options(args: argparse.Namespace, config: Config):
    """The :class:`~fer_core.report.ReportOptions` of ``report`` / ``regions`` arguments."""
    from fer_core.precompute import DEFAULT_MAP_SIZE
    from fer_core.report import ReportOptions
    return ReportOptions(
        runs_dirs=tuple(getattr(args, "runs_dir", None) or ()), model=args.model, real=args.real,
        synthetic=args.synthetic, limit=args.limit, per_class=args.per_class, sample_seed=args.sample_seed,
        method=args.method, target=args.target, layer=args.layer, map_size=args.map_size or DEFAULT_MAP_SIZE,
        params=_method_params(args.param),
        projections=tuple(p.strip() for p in getattr(args, "projection", "pca").split(",") if p.strip()),
        metric=getattr(args, "metric", "accuracy"), n_resamples=args.resamples, n_permutations=args.permutations,
        config_file=args.config)


def _print_missing(report) -> None:
    for code, item in report.missing:
        print(f"fer-core: missing ({code}): {item.what}\n  make it with: {item.command}", file=sys.stderr)


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    from fer_core.cross_domain import METRICS
    parser.add_argument("questions", nargs="+", metavar="QUESTION", help="rq1, rq2, rq3, rq4 or all")
    parser.add_argument("--out", type=Path, help="folder to write (default: paths.runs_dir/report-<questions>-<time>)")
    parser.add_argument("--runs-dir", type=Path, action="append",
                        help="folder of runs, read with its sub-folders (repeatable; default: paths.runs_dir)")
    _compared_faces_arguments(parser)
    _map_arguments(parser)
    parser.add_argument("--projection", default="pca", help="stored 2-D projections to plot, comma-separated")
    parser.add_argument("--metric", choices=METRICS, default="accuracy", help="score of the cross-domain tables")


@command("report", "thesis-ready tables (CSV + LaTeX) and figures (PNG + PDF + SVG) of research questions, read from "
                   "runs and the result cache, tied together in report.md (exit 3: inputs missing, each named with the "
                   "command that makes it)", _report_arguments)
def _report(args: argparse.Namespace, config: Config) -> int:
    import shlex
    from fer_core.report import build_report, question_codes
    from fer_core.runs import command_record, run_id
    config = _with_trust(args, config)
    codes = question_codes(args.questions)
    out = args.out or Path(config.paths.runs_dir) / run_id("report", *codes)
    report = build_report(config, codes, out, _report_options(args, config), shlex.join(command_record()["argv"]))
    counts = {kind: sum(a.kind == kind for s in report.sections for a in s.artifacts) for kind in ("figure", "table")}
    print(f"{counts['figure']} figures (PNG, PDF, SVG) and {counts['table']} tables (CSV, LaTeX) -> "
          f"{report.folder / 'report.md'}")
    _print_missing(report)
    return 3 if report.missing else 0


def _regions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="folder to write (default: paths.runs_dir/regions-<method>-<time>)")
    _compared_faces_arguments(parser)
    _map_arguments(parser)


@command("regions", "facial regions, real vs synthetic faces: per-class mean maps on aligned faces and region shares "
                    "against a fixed-map null with CIs and Holm-adjusted tests (computes missing maps into the cache)",
         _regions_arguments)
def _regions(args: argparse.Namespace, config: Config) -> int:
    import shlex
    from fer_core.report import Report, ReportContext
    from fer_core.report.rq3 import regions_section
    from fer_core.runs import command_record, provenance_record, run_id
    config = _with_trust(args, config)
    context = ReportContext(config, _report_options(args, config))
    out = config.resolve(args.out or Path(config.paths.runs_dir) / run_id("regions", args.method or "", args.real,
                                                                          args.synthetic))
    report = Report(out, f"Facial regions: {args.real} vs {args.synthetic}", shlex.join(command_record()["argv"]))
    section = report.section("regions", "Which facial regions drive the decisions, on real vs synthetic faces?")
    model = context.model(section)
    result = regions_section(context, section, model, compute=True) if model is not None else None
    report.write(provenance_record(config.root))
    _print_missing(report)
    if result is None:
        raise DataError(f"no region report: {'; '.join(item.what for _, item in report.missing) or 'no labelled faces'}")
    import pandas as pd
    tests = pd.DataFrame(result["differences"])
    print(tests[tests["emotion"] == "all"][["region", "mean_a", "mean_b", "null_difference", "effect", "p_holm"]]
          .rename(columns={"mean_a": f"per-area share {tests['domain_a'].iloc[0]}",
                           "mean_b": f"per-area share {tests['domain_b'].iloc[0]}"}).to_string(index=False))
    print(f"-> {report.folder / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="fer-core", description="Facial emotion recognition on real and synthetic faces: data, training, "
                                     "prediction and evaluation.")
    parser.add_argument("--version", action="version", version=f"fer-core {__version__}")
    parser.add_argument("--config", type=Path, help="config file (default: $FER_CORE_CONFIG or configs/config.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config key, e.g. --set inference.batch_size=64 (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, arguments, handler) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        arguments(child)
        child.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; a :class:`FerCoreError` becomes one clear line on stderr and exit code 2, a
    failing disk or file system (full, read-only, no permission) one line and exit code 1."""
    from fer_core.runs import cli_command
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, dict(parse_override(o) for o in args.overrides))
        with cli_command(["fer-core", *(sys.argv[1:] if argv is None else argv)]):  # named in every run record
            return args.handler(args, config)
    except FerCoreError as exc:
        print(f"fer-core: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # finished work is kept (atomic writes): the same command resumes
        print(f"fer-core: error: {exc}; free the disk or fix the permissions, then run the same command "
              "again to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fer-core: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
