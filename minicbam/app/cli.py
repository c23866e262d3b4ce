"""The ``minicbam`` command line: train, eval, gradcheck, attention-map, bench.

    minicbam train                          # CBAM CNN on the bundled 8x8 digits
    minicbam train --model resnet18 --attention cbam --dataset cifar10 --data-dir data/cifar
    minicbam eval --checkpoint runs/digits-cnn-cbam-digits/best.safetensors
    minicbam attention-map --checkpoint runs/digits-cnn-cbam-digits/best.safetensors --index 3
    minicbam gradcheck --only conv2d CBAM
    minicbam bench

This module only parses arguments and prints; the work is in ``minicbam.app.train``,
``minicbam.app.plots`` and ``minicbam.app.verify``. The ``gradcheck`` and ``bench`` commands live in
``minicbam.app.cli_dev``, the argument types in ``minicbam.app.cli_types``. Mistakes in the
arguments or the files named (unknown names, missing or damaged data, unreadable or damaged
checkpoints, output paths that cannot be written) end with a one-line message and exit
status 2, never a traceback.

``train`` never replaces a run without being asked: if ``--out`` (by default
``runs/<model>-<attention>-<dataset>``) already holds a checkpoint or metrics, it refuses and
suggests ``--resume`` (which continues that run), a new ``--out``, or ``--overwrite``.
"""

import argparse
import dataclasses
import os
import sys
import time

from minicbam import __version__
from minicbam.app import distributed_run
from minicbam.app.checkpoint import load_model, read_checkpoint
from minicbam.app.cli_dev import add_bench, add_gradcheck
from minicbam.app.cli_types import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from minicbam.app.config import (
    ATTENTIONS,
    DATASETS,
    DEVICES,
    MODELS,
    OPTIMIZERS,
    SCHEDULERS,
    TrainConfig,
    UserError,
    check_device,
)
from minicbam.app.factories import make_datasets
from minicbam.app.first_run import compile_ahead, parallel_compile_enabled
from minicbam.app.graph import add_graph
from minicbam.app.train import evaluate, fit
from minicbam.io.serialization import CorruptFileError, UnsafeFileError

__all__ = ["build_parser", "format_confusion", "main"]

DEFAULTS = TrainConfig()


def _default(name):
    return f"(default: {getattr(DEFAULTS, name)})"


# ----------------------------------------------------------------------------- train


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train a model and write metrics, curves, checkpoints",
        description="Train a model; with no arguments, a CBAM CNN on the bundled "
        "8x8 digits (README.md gives the accuracy and time of that run).",
    )
    # Defaults are None so that --resume can tell which settings were given explicitly.
    p.add_argument("--model", choices=MODELS, help=_default("model"))
    p.add_argument("--attention", choices=ATTENTIONS, help=_default("attention"))
    p.add_argument("--dataset", choices=DATASETS, help=_default("dataset"))
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the MNIST / Fashion-MNIST / CIFAR-10 files " + _default("data_dir"),
    )
    p.add_argument("--epochs", type=positive_int, help=_default("epochs"))
    p.add_argument("--batch-size", type=positive_int, help=_default("batch_size"))
    p.add_argument("--lr", type=positive_float, help=_default("lr"))
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=_default("optimizer"))
    p.add_argument(
        "--momentum", type=non_negative_float, help="SGD momentum " + _default("momentum")
    )
    p.add_argument("--weight-decay", type=non_negative_float, help=_default("weight_decay"))
    p.add_argument("--scheduler", choices=SCHEDULERS, help=_default("scheduler"))
    p.add_argument(
        "--warmup-epochs",
        type=non_negative_int,
        help="linear lr warm-up epochs " + _default("warmup_epochs"),
    )
    p.add_argument(
        "--step-size",
        type=positive_int,
        help="StepLR period in epochs (default: a third of --epochs)",
    )
    p.add_argument("--gamma", type=positive_float, help="StepLR factor " + _default("gamma"))
    p.add_argument("--label-smoothing", type=non_negative_float, help=_default("label_smoothing"))
    p.add_argument("--device", choices=DEVICES, help=_default("device"))
    p.add_argument("--seed", type=non_negative_int, help=_default("seed"))
    p.add_argument(
        "--out",
        metavar="DIR",
        help="output folder (default: runs/<model>-<attention>-<dataset>; with "
        "--resume, the checkpoint's folder)",
    )
    p.add_argument(
        "--resume",
        metavar="CHECKPOINT",
        help="continue the run saved in CHECKPOINT (its settings are used; "
        "--epochs, --out, --device and --data-dir may be changed)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (without it, train refuses to touch it)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    adv = p.add_argument_group("advanced (tests, quick experiments)")
    adv.add_argument(
        "--limit-train",
        type=positive_int,
        metavar="N",
        help="train on a fixed random subset of N samples",
    )
    adv.add_argument(
        "--limit-test",
        type=positive_int,
        metavar="N",
        help="test on a fixed random subset of N samples",
    )
    adv.add_argument(
        "--stop-after",
        type=positive_int,
        metavar="N",
        help="stop after N epochs of this run (the schedule still spans --epochs)",
    )
    p.set_defaults(handler=distributed_run.wrap_command(cmd_train))  # mpiexec -n N: joins MPI


_RESUMABLE = ("epochs", "out", "device", "data_dir")


def _given(args):
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}


def _train_config(args):
    given = _given(args)
    if args.resume is None:
        return TrainConfig(**given).validate(), None
    tree = read_checkpoint(args.resume)
    config = tree["config"]
    ignored = [k for k, v in given.items() if k not in _RESUMABLE and v != getattr(config, k)]
    if ignored:
        print(
            "note: resuming keeps the checkpoint's "
            + ", ".join(f"--{k.replace('_', '-')} {getattr(config, k)}" for k in ignored),
            file=sys.stderr,
        )
    overrides = {k: v for k, v in given.items() if k in _RESUMABLE}
    overrides.setdefault("out", os.path.dirname(os.path.abspath(args.resume)))
    return dataclasses.replace(config, **overrides).validate(), tree


def cmd_train(args):
    config, tree = _train_config(args)
    if tree is not None and tree["epoch"] >= config.epochs:
        raise UserError(
            f"{args.resume} already holds {tree['epoch']} epochs; pass a larger "
            "--epochs to train further"
        )
    _check_out(config.out_dir(), args)
    start = time.perf_counter()
    # ranks of an MPI job compile for themselves
    ahead = parallel_compile_enabled(config) and not distributed_run.launched()
    notice = compile_notice(ahead)
    if notice:
        print(notice, flush=True)
        if ahead:
            compile_ahead(config)
    result = fit(config, resume=tree, progress=_progress(args), stop_after=args.stop_after or 0)
    last = result["history"][-1] if result["history"] else None
    if last is not None:
        print(
            f"done in {time.perf_counter() - start:.1f}s: test accuracy {last['test_acc']:.2%} "
            f"(best {result['best_acc']:.2%}); outputs in {result['out']}"
        )
    return 0


_RUN_FILES = ("checkpoint.safetensors", "best.safetensors", "metrics.csv")


def _check_out(out, args):
    """Refuse to write into a file, or over another run unless ``--overwrite``; create it."""
    resumed_here = (
        args.resume is not None
        and os.path.isdir(out)
        and os.path.samefile(os.path.dirname(os.path.abspath(args.resume)), out)
    )
    existing = [name for name in _RUN_FILES if os.path.exists(os.path.join(out, name))]
    if existing and not resumed_here and not args.overwrite:
        checkpoint = os.path.join(out, "checkpoint.safetensors")
        raise UserError(
            f"{out} already holds a run ({', '.join(existing)}); continue it with --resume "
            f"{checkpoint} (and a larger --epochs), pick a new --out DIR, or pass --overwrite "
            "to replace it"
        )
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".minicbam-write-test-{os.getpid()}")  # one per rank
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def compile_notice(ahead=False):
    """A one-line notice when numba's cache holds no compiled minicbam op yet (the first run
    compiles its kernels: during epoch 1, or with ``ahead`` on two processes before it,
    minicbam/app/first_run.py), naming where the cache lives; else None."""
    import glob
    import importlib

    try:  # any cached op kernel: they all cache into the directory of minicbam/ops
        cache_dir = importlib.import_module("minicbam.ops.gate")._scale_cpu._cache._cache_path
    except AttributeError:  # numba's cache internals moved: say nothing rather than guess
        return None
    if glob.glob(os.path.join(cache_dir, "*.nbi")):
        return None
    return (
        f"first run: compiling kernels {'on 2 processes before' if ahead else 'during'} "
        f"epoch 1 (cached in {cache_dir}; "
        "later runs start at once)"
    )


def _progress(args):
    return not args.no_progress and sys.stderr.isatty()


# ------------------------------------------------------------------------------ eval


def _add_checkpoint_data_args(p):
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="a checkpoint written by `minicbam train` (.safetensors)",
    )
    p.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's")
    p.add_argument("--data-dir", metavar="DIR", help="default: the checkpoint's")
    p.add_argument(
        "--split", choices=("test", "train"), default="test", help="which split (default: test)"
    )
    p.add_argument("--device", choices=DEVICES, default="cpu", help="(default: cpu)")


def _add_eval(sub):
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: loss, accuracy, confusion matrix",
        description="Evaluate a training checkpoint on a dataset split.",
    )
    _add_checkpoint_data_args(p)
    p.add_argument("--batch-size", type=positive_int, default=256, help="(default: 256)")
    p.add_argument(
        "--limit",
        type=positive_int,
        metavar="N",
        help="evaluate a fixed random subset of N samples",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_eval)


def _checkpoint_data(args, limit=0):
    """(model, config, dataset, info) for the eval and attention-map commands."""
    check_device(args.device)
    model, config, tree = load_model(args.checkpoint, args.device)
    data = dataclasses.replace(
        config,
        dataset=args.dataset or config.dataset,
        data_dir=args.data_dir or config.data_dir,
        limit_train=limit,
        limit_test=limit,
    )
    train_set, test_set, info = make_datasets(data, train=args.split == "train", augment=False)
    trained = tree.get("data", {})
    if int(trained.get("in_channels", info.in_channels)) != info.in_channels:
        raise UserError(
            f"the checkpoint's model takes {trained['in_channels']}-channel images; "
            f"{data.dataset} has {info.in_channels}"
        )
    return model, config, train_set if args.split == "train" else test_set, info


def cmd_eval(args):
    model, config, dataset, info = _checkpoint_data(args, args.limit or 0)
    result = evaluate(
        model, dataset, args.device, args.batch_size, info.num_classes, _progress(args)
    )
    name = args.dataset or config.dataset
    print(
        f"{config.model} ({config.attention}) on {name} {args.split}: {result['n']} samples, "
        f"loss {result['loss']:.4f}, accuracy {result['accuracy']:.2%}"
    )
    print(format_confusion(result["confusion"]))
    return 0


def format_confusion(confusion):
    """Rows: true class, columns: predicted class."""
    k = len(confusion)
    width = max(4, len(str(confusion.max())) + 1)
    lines = [
        "confusion matrix (rows: true class, columns: predicted)",
        "true\\pred" + "".join(f"{j:>{width}}" for j in range(k)),
    ]
    lines += [f"{i:>9}" + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(confusion)]
    return "\n".join(lines)


# --------------------------------------------------------------------- attention-map


def _add_attention_map(sub):
    p = sub.add_parser(
        "attention-map",
        help="PNG of an image, its spatial-attention maps and Grad-CAM",
        description="Draw one image of a dataset with the spatial-attention map "
        "of every block (upsampled over it) and the Grad-CAM of the last stage.",
    )
    _add_checkpoint_data_args(p)
    p.add_argument(
        "--index", type=non_negative_int, default=0, help="which image of the split (default: 0)"
    )
    p.add_argument(
        "--out", metavar="FILE.png", help="default: attention-<index>.png next to the checkpoint"
    )
    p.set_defaults(handler=cmd_attention_map)


def cmd_attention_map(args):
    from minicbam.app.plots import (
        plot_attention,
    )  # matplotlib loads only for the commands that plot

    model, _, dataset, info = _checkpoint_data(args)
    if args.index >= len(dataset):
        raise UserError(
            f"--index {args.index} is out of range: the {args.split} split has "
            f"{len(dataset)} images"
        )
    image, label = dataset[args.index]
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(args.checkpoint)), f"attention-{args.index}.png"
    )
    if not out.lower().endswith(".png"):
        raise UserError(f"--out must name a .png file, got {out!r}")
    result = plot_attention(
        model, image, out, label=int(label), classes=info.classes, device=args.device
    )
    names = ", ".join(f"{n} {h}x{w}" for n, (h, w) in result["maps"]) or "none"
    print(
        f"wrote {out} (spatial maps: {names}; predicted {result['predicted']}, label {int(label)})"
    )
    return 0


# ------------------------------------------------------------------------------ main


def build_parser():
    parser = argparse.ArgumentParser(
        prog="minicbam",
        description="minicbam: a small deep-learning framework with CBAM attention.",
        epilog="Run `minicbam COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"minicbam {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_train, _add_eval, add_gradcheck, _add_attention_map, add_bench, add_graph):
        add(sub)
    return parser


def main(argv=None):
    """Entry point of the ``minicbam`` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UserError, CorruptFileError, UnsafeFileError, OSError) as e:
        # OSError: the files and folders the user named (unwritable, full disk, a folder
        # where a file should be). Messages are kept to one line.
        message = " ".join(str(e).split())
        print(f"minicbam {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minicbam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
