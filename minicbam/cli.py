"""The ``minicbam`` command line: train, eval, gradcheck, attention-map, bench.

    minicbam train                          # CBAM CNN on the bundled 8x8 digits
    minicbam train --model resnet18 --attention cbam --dataset cifar10 --data-dir data/cifar
    minicbam eval --checkpoint runs/digits-cnn-cbam-digits/best.safetensors
    minicbam attention-map --checkpoint runs/digits-cnn-cbam-digits/best.safetensors --index 3
    minicbam gradcheck --only conv2d CBAM
    minicbam bench

This module only parses arguments and prints; the work is in ``minicbam.train``,
``minicbam.viz`` and ``minicbam.verify``. Mistakes in the arguments or the files named
(unknown names, missing data, unreadable checkpoints) end with a one-line message and exit
status 2, never a traceback.
"""

import argparse
import dataclasses
import math
import os
import statistics
import subprocess
import sys
import time

import minicbam as mc
import minicbam.nn.functional as F
from minicbam import __version__, nn, verify
from minicbam.models import DigitsCNN
from minicbam.serialization import CorruptFileError, UnsafeFileError
from minicbam.train import (
    ATTENTIONS,
    DATASETS,
    DEVICES,
    MODELS,
    OPTIMIZERS,
    SCHEDULERS,
    TrainConfig,
    UserError,
    check_device,
    evaluate,
    fit,
    load_model,
    make_datasets,
    read_checkpoint,
)

DEFAULTS = TrainConfig()


# ------------------------------------------------------------------------ argument types


def _number(kind, low, strict, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (strict and value == low) or math.isnan(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = _number(int, 0, True, "a positive integer")
non_negative_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0.0, True, "a positive number")
non_negative_float = _number(float, 0.0, False, "a number >= 0")


def _default(name):
    return f"(default: {getattr(DEFAULTS, name)})"


# ----------------------------------------------------------------------------- train


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train a model and write metrics, curves, checkpoints",
        description="Train a model; with no arguments, a CBAM CNN on the bundled "
        "8x8 digits (about 98% test accuracy in a few minutes on 2 cores).",
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
    p.set_defaults(handler=cmd_train)


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
    start = time.perf_counter()
    result = fit(config, resume=tree, progress=_progress(args), stop_after=args.stop_after or 0)
    last = result["history"][-1] if result["history"] else None
    if last is not None:
        print(
            f"done in {time.perf_counter() - start:.1f}s: test accuracy {last['test_acc']:.2%} "
            f"(best {result['best_acc']:.2%}); outputs in {result['out']}"
        )
    return 0


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


# ------------------------------------------------------------------------- gradcheck


def _add_gradcheck(sub):
    p = sub.add_parser(
        "gradcheck",
        help="check every op's and attention module's gradients",
        description="Finite-difference gradient checks in float64 of every "
        "functional op and attention module; exits 1 if any fails.",
    )
    p.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="only these ops/modules (see --list), e.g. --only conv2d CBAM",
    )
    p.add_argument("--list", action="store_true", help="list the op and module names")
    p.set_defaults(handler=cmd_gradcheck)


def cmd_gradcheck(args):
    if args.list:
        print("\n".join(verify.names()))
        return 0
    only = [n for item in args.only or [] for n in item.split(",") if n]
    try:
        selected = verify.select(only)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(verify.header())
    rows = verify.run_all(only, on_row=lambda row: print(verify.format_row(row), flush=True))
    bad = [r for r in rows if r.status != "ok"]
    for row in bad:
        print(f"\n{row.name} [{row.params}] {row.status}:\n{row.detail}")
    print(f"\n{len(selected) - len(bad)} of {len(selected)} checks passed")
    if not only and verify.uncovered():
        print(f"not covered by a case: {', '.join(verify.uncovered())}")
    return 1 if bad else 0


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
    from minicbam.viz import plot_attention  # matplotlib loads only for the commands that plot

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


# ----------------------------------------------------------------------------- bench


def _add_bench(sub):
    p = sub.add_parser(
        "bench",
        help="run the benchmarks (benchmarks/run.py if present)",
        description="Run benchmarks/run.py of a source checkout, passing ARGS "
        "on (e.g. `minicbam bench -- --quick`); without it, or with --builtin, "
        "time a CBAM forward/backward and a DigitsCNN training step (medians).",
    )
    p.add_argument("--builtin", action="store_true", help="the small built-in timing only")
    p.add_argument(
        "--repeats", type=positive_int, default=10, help="built-in timing repeats (default: 10)"
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for benchmarks/run.py")
    p.set_defaults(handler=cmd_bench)


def _bench_script():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for base in (root, os.getcwd()):
        path = os.path.join(base, "benchmarks", "run.py")
        if os.path.isfile(path):
            return path
    return None


def cmd_bench(args):
    script = None if args.builtin else _bench_script()
    if script is None:
        return builtin_bench(args.repeats)
    extra = [a for a in args.args if a != "--"]
    print(f"running {script} {' '.join(extra)}".rstrip(), flush=True)
    return subprocess.call([sys.executable, script, *extra])


def builtin_bench(repeats):
    """Median wall time of a few fixed workloads; a quick sanity check, not a benchmark suite."""
    mc.manual_seed(0)
    cbam, digits = nn.CBAM(64, reduction=16, kernel_size=7), DigitsCNN()
    x = mc.randn(32, 64, 16, 16, requires_grad=True)
    images, labels = mc.randn(64, 1, 8, 8), mc.tensor([i % 10 for i in range(64)])

    def cbam_step():
        cbam(x).sum().backward()

    def digits_step():
        F.cross_entropy(digits(images), labels).backward()

    print(
        f"built-in timing (median of {repeats}, after 2 warm-up calls); "
        "benchmarks/run.py has the full suite"
    )
    for name, fn in (
        ("CBAM(64) fwd+bwd, x (32, 64, 16, 16)", cbam_step),
        ("DigitsCNN(cbam) fwd+bwd, batch 64 of 8x8", digits_step),
    ):
        for _ in range(2):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        print(f"  {name:<44} {1e3 * statistics.median(times):9.2f} ms")
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
    for add in (_add_train, _add_eval, _add_gradcheck, _add_attention_map, _add_bench):
        add(sub)
    return parser


def main(argv=None):
    """Entry point of the ``minicbam`` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UserError, CorruptFileError, UnsafeFileError, FileNotFoundError) as e:
        print(f"minicbam {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minicbam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
