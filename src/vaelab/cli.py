"""The `vaelab` command line (see CLI.md): train, sample, reconstruct, eval, export, data.

Each subcommand is a handler and a function that adds its arguments, registered in COMMANDS.
Bad usage or bad input ends with one line `vaelab: error: ...` and exit status 2; a failure while
running with exit status 1; a traceback only with --debug or VAELAB_DEBUG=1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from vaelab.errors import StorageError, TrainingError, VaelabError
from vaelab.precision import PRECISIONS
from vaelab.version import __version__

if TYPE_CHECKING:  # the models import torch: loaded only by the commands that need them
    from vaelab.models.base import GenerativeModel

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_TERMINATED = 128 + signal.SIGTERM  # the shell's status for a process ended by SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `kill`, a container shutting down), raised where Ctrl-C would be
    so that training saves its checkpoint the same way before the process ends."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While a command runs, SIGTERM raises Terminated, unless someone already chose what it does
    (an ignored or handled signal is left alone); afterwards the old disposition is back."""
    try:
        take = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        if take:
            signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (main() called from a thread): signals are not ours
        take = False
    try:
        yield
    finally:
        if take:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors become VaelabError (one line, exit 2) instead of a usage dump."""

    def error(self, message: str):
        raise VaelabError(f"{message} (see '{self.prog} --help')")


# -- train ---------------------------------------------------------------------------------------

def _given_values(args) -> list[dict]:
    """The config values the command line gives, as layers applied in order: --config YAML,
    KEY=VALUE overrides, then explicit flags."""
    from vaelab.config import load_yaml, parse_overrides

    flags = {"data.name": args.data, "data.data_dir": args.data_dir, "train.epochs": args.epochs,
             "train.max_steps": args.max_steps, "train.save_every": args.save_every,
             "train.seed": args.seed, "train.device": args.device, "train.precision": args.precision}
    return [load_yaml(args.config) if args.config else {}, parse_overrides(args.overrides),
            {key: value for key, value in flags.items() if value is not None}]


def _fresh_run_config(args):
    """Defaults <- the command line (_given_values); binarize=auto decided by the model."""
    from vaelab.config import DataConfig, RunConfig, TrainConfig, apply_overrides
    from vaelab.registry import get_model_class

    model_class = get_model_class(args.model)
    configs = {"model": model_class.config_class(), "data": DataConfig(), "train": TrainConfig()}
    for values in _given_values(args):
        configs = apply_overrides(configs, values)
    # binarize=auto: the published protocol (dynamic binarization) for a model of binary images
    configs["data"] = configs["data"].resolved(model_class.prefers_binary_pixels(configs["model"]))
    return RunConfig(model_name=args.model, model=configs["model"], data=configs["data"], train=configs["train"])


def _run_config(args, run_dir: Path):
    """(run config, resume?): a new run, or the saved one under --resume (see vaelab.resume); a
    --resume of a run killed before its first checkpoint starts it from scratch, and says so."""
    from vaelab.checkpoint import CONFIG_FILE, has_training_state, load_run_config
    from vaelab.registry import get_model_class
    from vaelab.resume import resumed_run_config

    if args.resume and has_training_state(run_dir):
        saved = load_run_config(run_dir)
        if saved.model_name != args.model:
            raise VaelabError(f"{run_dir} holds a {saved.model_name!r} run, not {args.model!r}")
        return resumed_run_config(saved, _given_values(args), get_model_class(args.model).prefers_binary_pixels), True
    if args.resume:
        print(f"no checkpoint in {run_dir} yet: starting the run from scratch", file=sys.stderr)
    elif (run_dir / CONFIG_FILE).exists() and not args.overwrite:
        raise VaelabError(f"{run_dir} already holds a run; use --resume to continue it, "
                          "--overwrite to replace it, or --out for a new directory")
    return _fresh_run_config(args), False


def cmd_train(args) -> int:
    """Everything that can be refused (the config, the data, the model) is checked before the run
    directory is locked and written to."""
    from vaelab.distributed import join_world
    from vaelab.experiment import data_identity, load_data, training_splits
    from vaelab.files import run_lock
    from vaelab.resume import check_data_identity
    from vaelab.trainer import resolve_device

    run_dir = Path(args.out or f"runs/{args.model}")
    run_config, resume = _run_config(args, run_dir)
    world = join_world(resolve_device(run_config.train.device).type)  # torchrun: one process of several
    dataset = load_data(run_config.data)
    identity = data_identity(dataset)
    if resume:
        check_data_identity(run_config.data_identity, identity, dataset.source or dataset.name)
    run_config.image_shape, run_config.num_classes = dataset.image_shape, dataset.num_classes
    run_config.class_names, run_config.data_identity = dataset.class_names, identity
    trainer = _trainer(run_config, run_dir, dataset, training_splits(dataset, run_config.data), world)
    if resume:
        trainer.restore_checkpoint()
        if trainer.finished:  # said before the lock is taken: a finished run is not touched at all
            if world.is_main:
                print(f"{run_dir} already finished at step {trainer.progress.step}; nothing to do "
                      "(raise --epochs or --max-steps to train it further)", file=sys.stderr)
            return EXIT_OK
    if not world.is_main:  # the main process holds the lock and writes; the others only compute
        return _train(args, trainer, dataset, resume)
    with run_lock(run_dir):
        return _train(args, trainer, dataset, resume)


def _train(args, trainer, dataset, resume: bool) -> int:
    from vaelab.checkpoint import clear_run

    run_dir, main = trainer.run_dir, trainer.world.is_main
    if resume:
        trainer.restore_checkpoint()  # again, under the lock: the checkpoint as it is now
    elif main:
        clear_run(run_dir)  # --overwrite, or what a run killed before its first checkpoint left
    if main:
        _announce(args.model, dataset, trainer, run_dir)
    metrics = trainer.fit(resume=resume)
    if metrics and main:
        print(f"done: step {metrics['step']}, val loss {metrics['val_loss']:.4f}; weights in {run_dir}",
              file=sys.stderr)
    return EXIT_OK


def _trainer(run_config, run_dir: Path, dataset, splits, world):
    import torch

    from vaelab.checkpoint import build_model, load_initial_weights
    from vaelab.trainer import Trainer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_config.train.seed)  # the initial weights follow --seed too
        model = build_model(run_config)
    if run_config.train.init_from:  # a resumed run's checkpoint replaces these again
        load_initial_weights(model, run_config.train.init_from)
    train_split, val_split = splits
    return Trainer(model, run_config, run_dir, train_split, val_split, dataset.levels, world=world)


def _announce(model_name: str, dataset, trainer, run_dir: Path) -> None:
    parameters = sum(p.numel() for p in trainer.model.parameters())
    print(f"training {model_name} on {dataset.name} ({len(trainer.train_split)} train / "
          f"{len(trainer.val_split)} val images, {parameters:,} parameters, {trainer.device}, "
          f"{trainer.updater.precision}{', compiled loss' if trainer.updater.compiled_loss else ''}) -> {run_dir}",
          file=sys.stderr)


# -- sample / reconstruct ------------------------------------------------------------------------

def _load_model(args):
    from vaelab.checkpoint import load

    return load(args.run_dir, checkpoint=args.checkpoint)


def cmd_sample(args) -> int:
    import torch

    from vaelab.plots.images import save_images

    model = _load_model(args)
    count = args.n if args.n is not None else (8 if args.chain else 64)
    if count < 1:
        raise VaelabError(f"-n must be at least 1, got {count}")
    generator = torch.Generator().manual_seed(args.seed)
    if args.chain is not None:
        return _sample_chain(model, args, count, generator)
    nrow = args.nrow
    if args.label is not None:
        if not model.conditional:
            raise VaelabError(f"--label needs a class-conditional model; {args.run_dir} is unconditional")
        images = model.sample(count, generator=generator, label=args.label)
    elif model.conditional:  # a grid of all classes: one row per class
        per_class = max(1, count // model.num_classes)
        images, nrow = model.class_grid(per_class, generator=generator), nrow or per_class
    else:
        images = model.sample(count, generator=generator)
    path = save_images(images, args.out or Path(args.run_dir) / "samples.png", nrow=nrow)
    print(f"wrote {len(images)} samples to {path}")
    return EXIT_OK


def _sample_chain(model, args, num_chains: int, generator) -> int:
    """--chain STEPS: consecutive states of `num_chains` Markov chains, one chain per row of the grid
    (time runs left to right); a .npy holds them as (chains, steps, C, H, W)."""
    from vaelab.models.capabilities import MarkovChainSampler
    from vaelab.plots.images import save_images

    if not isinstance(model, MarkovChainSampler):
        raise VaelabError(f"--chain needs a model that samples with a Markov chain (e.g. gsn); "
                          f"{args.run_dir} holds a {type(model).__name__}")
    if args.chain < 1:
        raise VaelabError(f"--chain must be at least 1, got {args.chain}")
    if args.label is not None:
        raise VaelabError("--chain does not take --label")
    states = model.sample_chain(num_chains, args.chain, generator=generator)  # (steps, n, C, H, W)
    chains = states.transpose(0, 1)  # (n, steps, C, H, W)
    path = Path(args.out or Path(args.run_dir) / "chain.png")
    grid = chains if path.suffix.lower() == ".npy" else chains.flatten(0, 1)
    save_images(grid, path, nrow=args.chain)
    print(f"wrote {num_chains} chains of {args.chain} consecutive states to {path}")
    return EXIT_OK


def cmd_reconstruct(args) -> int:
    import torch

    from vaelab.checkpoint import load_run_config
    from vaelab.experiment import evaluation_split, load_data
    from vaelab.models.capabilities import Reconstructor
    from vaelab.plots.images import save_images

    model: GenerativeModel = _load_model(args)
    if not isinstance(model, Reconstructor):
        raise VaelabError(f"a {type(model).__name__} has no encoder to reconstruct with")
    run_config = load_run_config(args.run_dir)
    split = evaluation_split(load_data(run_config.data), run_config.data, args.split)
    originals, label = split.images[: args.n], None
    if model.conditional:  # a class-conditional model encodes and decodes with each image's label
        if split.labels is None:
            raise VaelabError(f"{type(model).__name__} reconstructs with labels, and this data has none")
        label = split.labels[: args.n]
    reconstructions = model.reconstruct(originals, label=label, generator=torch.Generator().manual_seed(0))
    nrow = args.nrow
    # Alternate rows: originals, then their reconstructions beneath them.
    rows = [torch.cat([originals[i:i + nrow], reconstructions[i:i + nrow]]) for i in range(0, len(originals), nrow)]
    path = save_images(torch.cat(rows), args.out or Path(args.run_dir) / "reconstructions.png", nrow=nrow)
    print(f"wrote {len(originals)} originals and reconstructions to {path}")
    return EXIT_OK


# -- eval ----------------------------------------------------------------------------------------

def cmd_eval(args) -> int:
    from vaelab.checkpoint import load_run_config
    from vaelab.distributed import join_world
    from vaelab.eval.metrics import EvalContext, EvalOptions, check_metrics, evaluate
    from vaelab.experiment import load_data
    from vaelab.files import atomic_write_json

    names = [name.strip() for name in args.metrics.split(",") if name.strip()]
    if args.k < 1:
        raise VaelabError(f"--k must be at least 1, got {args.k}")
    if args.limit is not None and args.limit < 1:
        raise VaelabError(f"--limit must be at least 1, got {args.limit}")
    model = _load_model(args)
    check_metrics(names, model)  # before loading data: a bad metric name fails fast
    run_config = load_run_config(args.run_dir)
    if args.samples < 2:
        raise VaelabError(f"--samples must be at least 2, got {args.samples}")
    for flag, value in (("--ais-runs", args.ais_runs), ("--ais-steps", args.ais_steps), ("--sigma", args.sigma)):
        if value is not None and value <= 0:
            raise VaelabError(f"{flag} must be positive, got {value}")
    options = EvalOptions(k=args.k, seed=args.seed, progress=sys.stderr.isatty(), limit=args.limit,
                          num_samples=args.samples, ais_runs=args.ais_runs, ais_steps=args.ais_steps,
                          sigma=args.sigma, ais_gradients=args.ais_gradients,
                          iw_precision=args.iw_precision, iw_compile=args.iw_compile)
    world = join_world(model.device.type)  # torchrun: L_k and AIS share the images out; one process writes
    ctx = EvalContext(model, run_config, load_data(run_config.data), args.split, options)
    results = {name: estimate.to_dict() for name, estimate in evaluate(ctx, names).items()}
    for result in results.values():
        result["settings"].update(split=args.split, checkpoint=args.checkpoint)
    if not world.is_main:
        return EXIT_OK
    _print_table(results, args)
    if args.json:
        atomic_write_json(Path(args.json), results)
    return EXIT_OK


def _print_table(results: dict, args) -> None:
    print(f"{args.run_dir} ({args.split} split, {args.checkpoint} weights)")
    print(f"{'metric':<26}{'value':>12}{'stderr':>10}")
    for name, result in results.items():
        if isinstance(result["value"], list):  # per-dimension results: the JSON holds them
            print(f"{name:<26}{len(result['value']):>8} values (see --json)")
        else:
            print(f"{name:<26}{result['value']:>12.3f}{result['stderr']:>10.3f}")
    if "iw_bound" in results:
        bound = results["iw_bound"]
        name = "nll" if bound["settings"]["bound_of"] == "log p(x)" else f"-{bound['settings']['bound_of']}"
        print(f"{name + ' (= -iw_bound)':<26}{-bound['value']:>12.3f}{bound['stderr']:>10.3f}")
    quantities = {result["settings"].get("bound_of") for result in results.values()} - {None}
    for quantity in sorted(quantities - {"log p(x)", "log p(x|y)"}):
        print(f"note: *_cross_entropy results are a {quantity}")


# -- graph ---------------------------------------------------------------------------------------

def cmd_graph(args) -> int:
    from vaelab.config import apply_overrides, parse_overrides
    from vaelab.plots.graphs import draw
    from vaelab.registry import get_model_class

    model_class = get_model_class(args.model)
    config = apply_overrides({"model": model_class.config_class()}, parse_overrides(args.overrides))["model"]
    path = draw(model_class.training_graph(config), args.out or f"{args.model}_graph.svg")
    print(f"wrote the {args.model} training graph to {path}")
    return EXIT_OK


# -- export --------------------------------------------------------------------------------------

def cmd_export(args) -> int:
    """The decoder as a standalone ONNX or TorchScript file (vaelab.export, docs/export.md).
    --decoder-only is the default and, for now, the only part exported: the flag says it explicitly."""
    from vaelab.export import export_decoder

    exported = export_decoder(args.run_dir, args.format, args.out, checkpoint=args.checkpoint)
    print(f"wrote the decoder, {exported.signature}, as {args.format} to {exported.path}")
    return EXIT_OK


def _add_export_parser(commands) -> None:
    from vaelab.export import FORMATS

    export = commands.add_parser("export", help="write a model's decoder as an ONNX or TorchScript file")
    _add_run_arguments(export)
    export.add_argument("--format", choices=list(FORMATS), default="onnx", help="default: onnx")
    export.add_argument("--decoder-only", action="store_true",
                        help="export the decoder z -> images (the default, and for now the only part exported)")
    export.add_argument("--out", help="FILE (default RUN_DIR/decoder.onnx or RUN_DIR/decoder.pt)")


# -- data ----------------------------------------------------------------------------------------

def cmd_data(args) -> int:
    from vaelab.data.datasets import describe, load_dataset

    print(describe(load_dataset(args.name, args.data_dir, download=not args.offline)))
    return EXIT_OK


# -- parser --------------------------------------------------------------------------------------

def _add_run_arguments(parser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'vaelab train'")
    parser.add_argument("--checkpoint", choices=["final", "best", "last"], default="final",
                        help="final weights of a finished run, those with the best validation loss, or the "
                             "last training checkpoint (default: final)")


def _add_model_argument(parser) -> None:
    from vaelab.registry import MODELS

    parser.add_argument("model", metavar="MODEL", choices=list(MODELS), help=f"one of: {', '.join(MODELS)}")


def _add_train_parser(commands) -> None:
    train = commands.add_parser("train", help="train a model")
    _add_model_argument(train)
    train.add_argument("--data", help="fashion-mnist, mnist, digits (embedded default) or a .npz/.npy/folder path")
    train.add_argument("--data-dir", help="where to look for named datasets first")
    train.add_argument("--config", help="a YAML file of config keys")
    train.add_argument("--out", help="run directory (default: runs/MODEL)")
    _add_train_budget_arguments(train)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"])
    train.add_argument("--precision", choices=PRECISIONS, help="fp32, bf16 autocast, or auto: bf16 where it is native")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any config key")


def _add_train_budget_arguments(train) -> None:
    train.add_argument("--epochs", type=int)
    train.add_argument("--max-steps", type=int)
    train.add_argument("--save-every", type=int, help="also checkpoint every this many steps")
    train.add_argument("--seed", type=int)


def _add_sample_parser(commands) -> None:
    sample = commands.add_parser("sample", help="draw samples from a trained model")
    _add_run_arguments(sample)
    sample.add_argument("-n", type=int, help="number of samples (default 64); with --chain, of chains (default 8)")
    sample.add_argument("--label", type=int, help="class to draw (conditional models)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--nrow", type=int, help="images per row of the PNG grid")
    sample.add_argument("--chain", type=int, metavar="STEPS",
                        help="save STEPS consecutive states of each Markov chain (gsn): rows = chains, "
                             "columns = time; default RUN_DIR/chain.png")
    sample.add_argument("--out", help="FILE.png (a grid) or FILE.npy (an array); default RUN_DIR/samples.png")


def _add_reconstruct_parser(commands) -> None:
    reconstruct = commands.add_parser("reconstruct", help="reconstruct evaluation images")
    _add_run_arguments(reconstruct)
    reconstruct.add_argument("-n", type=int, default=32, help="number of images (default 32)")
    reconstruct.add_argument("--nrow", type=int, default=8, help="images per row (default 8)")
    reconstruct.add_argument("--split", choices=["test", "val", "train"], default="test")
    reconstruct.add_argument("--out", help="FILE.png; default RUN_DIR/reconstructions.png")


def _add_eval_parser(commands) -> None:
    from vaelab.eval.metrics import METRICS

    evaluate = commands.add_parser("eval", help="score a trained model")
    _add_run_arguments(evaluate)
    evaluate.add_argument("--metrics", default="elbo,iw", help=f"comma-separated, from: {', '.join(METRICS)}")
    evaluate.add_argument("--k", type=int, default=5000, help="importance samples for the iw bound (default 5000)")
    evaluate.add_argument("--samples", type=int, default=10000,
                          help="model samples for the sample-based metrics (default 10000)")
    _add_eval_ais_arguments(evaluate)
    evaluate.add_argument("--split", choices=["test", "val", "train"], default="test")
    evaluate.add_argument("--limit", type=int, help="evaluate the first N images only")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--json", help="write {metric: {value, stderr, settings}} to this file")


def _add_eval_ais_arguments(evaluate) -> None:
    evaluate.add_argument("--ais-runs", type=int, help="AIS chains (default: RBM 100, decoder 16 per image)")
    evaluate.add_argument("--ais-steps", type=int,
                          help="AIS intermediate distributions (default: RBM 14500, decoder 1000)")
    evaluate.add_argument("--sigma", type=float, help="decoder AIS: std of the Gaussian observation model of a GAN "
                          "or an MSE autoencoder (default: chosen on the validation split)")
    evaluate.add_argument("--iw-precision", choices=PRECISIONS, default="fp32",
                          help="L_k: bf16 runs the decoder's matmuls in bf16 (faster where bf16 is native; an "
                               "approximation of L_k whose distance from fp32 benchmarks/eval_speed.py measures); "
                               "auto: bf16 only where native")
    evaluate.add_argument("--iw-compile", action="store_true",
                          help="L_k: run log p(x|z) through torch.compile (falls back to eager if compiling fails); "
                               "pays at large k, e.g. L_5000 of the test set (docs/performance.md)")
    evaluate.add_argument("--ais-gradients", choices=PRECISIONS, default="fp32",
                          help="decoder AIS: precision of the leapfrog gradients; bf16 is still exact (the accept "
                               "step and the weights use fp32 energies) and faster where bf16 is native; auto: bf16 "
                               "only where native")


def _add_graph_parser(commands) -> None:
    graph = commands.add_parser("graph", help="draw a model's training graph")
    _add_model_argument(graph)
    graph.add_argument("--out", help="FILE.svg or FILE.png (default MODEL_graph.svg)")
    graph.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="model config keys, e.g. objective=iwae")


# -- compare / report ------------------------------------------------------------------------------

def cmd_compare(args) -> int:
    from vaelab.comparison import compare, failed

    models = [name.strip() for name in args.models.split(",") if name.strip()] if args.models else None
    out = Path(args.out)
    compare(models, data=args.data, budget=args.budget, out=out, seed=args.seed, data_dir=args.data_dir,
            command=_command_line(), jobs=args.jobs)
    broken = failed(out)
    print(f"report: {out / 'report.html'} (also {out / 'report.md'}, {out / 'results.json'})")
    if broken:
        print(f"vaelab: error: {len(broken)} model(s) failed: {', '.join(broken)}; see the report", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_report(args) -> int:
    from vaelab.comparison import write_report

    html, markdown = write_report(args.dir)
    print(f"report: {html} (also {markdown})")
    return EXIT_OK


def _command_line() -> str:
    import shlex

    return "vaelab " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def _add_compare_parser(commands) -> None:
    from vaelab.comparison.budget import BUDGETS

    compare = commands.add_parser("compare", help="train and score every model, and write a report")
    compare.add_argument("--models", help="comma-separated runs of the budget (default: all of them)")
    compare.add_argument("--data", help="fashion-mnist, mnist, digits or a .npz/.npy/folder path "
                                        "(default: the budget's data set)")
    compare.add_argument("--data-dir", help="where to look for named datasets first")
    compare.add_argument("--budget", default="quick",
                         help=f"reference configs: {', '.join(BUDGETS)} or a .yaml file of that form (default: quick)")
    compare.add_argument("--out", default="runs/compare", help="output directory (default: runs/compare)")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--jobs", type=int, default=1,
                         help="runs trained and scored at the same time, one process each (default 1; "
                              "2 on a 2-core machine)")


def _add_report_parser(commands) -> None:
    report = commands.add_parser("report", help="rebuild a comparison's report from its saved runs")
    report.add_argument("dir", metavar="DIR", help="a directory written by 'vaelab compare'")


def _add_data_parser(commands) -> None:
    data = commands.add_parser("data", help="locate (or download) a dataset and describe it")
    data.add_argument("name", metavar="NAME", help="fashion-mnist, mnist, digits or a path")
    data.add_argument("--data-dir")
    data.add_argument("--offline", action="store_true", help="never download")


# command name -> (handler, the function that adds its subparser); also the order of `vaelab --help`
COMMANDS = {
    "train": (cmd_train, _add_train_parser),
    "sample": (cmd_sample, _add_sample_parser),
    "reconstruct": (cmd_reconstruct, _add_reconstruct_parser),
    "eval": (cmd_eval, _add_eval_parser),
    "graph": (cmd_graph, _add_graph_parser),
    "compare": (cmd_compare, _add_compare_parser),
    "report": (cmd_report, _add_report_parser),
    "export": (cmd_export, _add_export_parser),
    "data": (cmd_data, _add_data_parser),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaelab", description="Train, sample, evaluate and compare VAEs.")
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for _, add_parser in COMMANDS.values():
        add_parser(commands)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, but KEY=VALUE overrides may also come after options (argparse alone stops
    collecting a trailing positional list once an option follows it)."""
    args, extra = parser.parse_known_args(argv)
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    unknown = [item for item in extra if item not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        raise VaelabError(f"unrecognized arguments: {' '.join(unknown or overrides)} (see 'vaelab --help')")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("VAELAB_DEBUG") == "1"
    try:
        args = parse(build_parser(), argv)
        handler, _ = COMMANDS[args.command]
        with _sigterm_as_interrupt():
            return _run_in_world(handler, args)
    except VaelabError as error:
        if debug:
            traceback.print_exc()
        print(f"vaelab: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (TrainingError, StorageError) as error:
        print(f"vaelab: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        print(f"vaelab: error: {'terminated' if terminated else 'interrupted'} (a training run can continue "
              "with --resume)", file=sys.stderr)
        return EXIT_TERMINATED if terminated else 130
    except Exception as error:  # the last line of defence: one line, no traceback
        if debug:
            traceback.print_exc()
        print(f"vaelab: error: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE


def _run_in_world(handler, args) -> int:
    """The command, then (under torchrun) every process leaves the process group together."""
    succeeded = False
    try:
        status = handler(args)
        succeeded = status == EXIT_OK
        return status
    finally:
        if "vaelab.distributed" in sys.modules:  # only a command that could have joined one imports it
            sys.modules["vaelab.distributed"].leave_world(succeeded)


if __name__ == "__main__":
    sys.exit(main())
