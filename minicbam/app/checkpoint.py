"""Checkpoint and metrics files of a training run (see ``minicbam.app.train`` for their layout).

``read_checkpoint`` and ``load_model`` read what ``minicbam train`` writes; ``rng_state`` and
``set_rng_state`` carry minicbam's generator through a checkpoint so that a resumed run
continues exactly; ``write_metrics`` rewrites ``metrics.csv`` atomically.
"""

import csv
import dataclasses
import os

from minicbam.app.config import TrainConfig, UserError
from minicbam.app.factories import make_model
from minicbam.app.files import write_atomic
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
    """The checkpoint tree at ``path``, with its config as a ``TrainConfig``.

    Everything the commands use is checked here (the config's fields and types, the
    epoch count, the history), so a damaged checkpoint is a ``UserError`` naming what is
    wrong, never a traceback later on."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path!r} not found")
    try:
        tree = load(path)
    except (ValueError, OSError) as e:
        raise UserError(f"cannot read checkpoint {path!r}: {e}") from None
    if not isinstance(tree, dict) or "model" not in tree or "config" not in tree:
        raise UserError(
            f"{path!r} is not a minicbam training checkpoint "
            "(it lacks 'model' and 'config'); `minicbam train` writes them"
        )
    tree["config"] = _checked_config(path, tree["config"])
    for name, kind in (("epoch", int), ("best_acc", (int, float))):
        value = tree.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, kind) or value < 0:
            raise UserError(f"{path!r}: damaged checkpoint: {name!r} is {value!r}")
    history, data = tree.get("history", []), tree.get("data", {})
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        raise UserError(f"{path!r}: damaged checkpoint: 'history' is not a list of rows")
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k, 1), int) and data.get(k, 1) > 0
        for k in ("num_classes", "in_channels")
    ):
        raise UserError(f"{path!r}: damaged checkpoint: 'data' has no valid image shape")
    return tree


def _checked_config(path, saved):
    """``saved`` (a checkpoint's config dict) as a validated ``TrainConfig``."""
    if not isinstance(saved, dict):
        raise UserError(f"{path!r}: damaged checkpoint: 'config' is not a dict")
    values = {}
    for field in dataclasses.fields(TrainConfig):
        if field.name not in saved:
            continue  # a setting added after the checkpoint was written: the default
        value, default = saved[field.name], field.default
        ok = type(value) is type(default) or (isinstance(default, float) and type(value) is int)
        if not ok:
            raise UserError(
                f"{path!r}: damaged checkpoint: config {field.name!r} is {value!r}, "
                f"expected a {type(default).__name__}"
            )
        values[field.name] = value
    try:
        return TrainConfig(**values).validate()
    except UserError as e:
        raise UserError(f"{path!r}: damaged checkpoint config: {e}") from None


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
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{path!r}: the weights do not fit {config.model} (attention {config.attention}): {e}"
        ) from None
    return model.to(device).eval(), config, tree


def write_metrics(path, history):
    """Rewrite the metrics CSV at ``path`` (atomically) with the rows of ``history``."""

    def write(f):
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(history)

    write_atomic(path, write)
