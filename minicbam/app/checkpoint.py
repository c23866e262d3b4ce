"""Checkpoint and metrics files of a training run (see ``minicbam.app.train`` for their layout).

``read_checkpoint`` and ``load_model`` read what ``minicbam train`` writes; ``rng_state`` and
``set_rng_state`` carry minicbam's generator through a checkpoint so that a resumed run
continues exactly; ``write_metrics`` rewrites ``metrics.csv`` atomically.
"""

import csv
import dataclasses
import os
import tempfile

from minicbam.app.config import TrainConfig, UserError
from minicbam.app.factories import make_model
from minicbam.io.serialization import load
from minicbam.tensor import generator

METRIC_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")


def rng_state():
    """minicbam's generator state as a tree a checkpoint can hold."""
    # PCG64's 128-bit integers survive the JSON tree of a checkpoint as decimal strings.
    state = generator().bit_generator.state
    inner = {k: str(v) for k, v in state["state"].items()}
    return {
        "bit_generator": state["bit_generator"],
        "state": inner,
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def set_rng_state(saved):
    """Restore minicbam's generator from ``rng_state()``'s tree."""
    state = dict(saved)
    state["state"] = {k: int(v) for k, v in saved["state"].items()}
    generator().bit_generator.state = state


def read_checkpoint(path):
    """The checkpoint tree at ``path``, with its config as a ``TrainConfig``."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} not found")
    try:
        tree = load(path)
    except ValueError as e:
        raise UserError(f"cannot read checkpoint {path!r}: {e}") from None
    if not isinstance(tree, dict) or "model" not in tree or "config" not in tree:
        raise UserError(
            f"{path!r} is not a minicbam training checkpoint "
            "(it lacks 'model' and 'config'); `minicbam train` writes them"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    tree["config"] = TrainConfig(**{k: v for k, v in tree["config"].items() if k in known})
    return tree


def load_model(path, device="cpu"):
    """(model in eval mode, TrainConfig, checkpoint tree) from a training checkpoint."""
    tree = read_checkpoint(path)
    config = tree["config"]
    shapes = tree.get("data", {})
    model = make_model(
        config.model,
        config.attention,
        int(shapes.get("num_classes", 10)),
        int(shapes.get("in_channels", 1)),
    )
    try:
        model.load_state_dict(tree["model"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{path!r}: the weights do not fit {config.model} (attention {config.attention}): {e}"
        ) from None
    return model.to(device).eval(), config, tree


def _write_atomic(path, write):
    from minicbam.app.plots import public_mode

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        os.chmod(tmp, public_mode())  # mkstemp makes it 0600; metrics are meant to be read
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_metrics(path, history):
    """Rewrite the metrics CSV at ``path`` (atomically) with the rows of ``history``."""

    def write(f):
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(history)

    _write_atomic(path, write)
