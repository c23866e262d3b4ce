"""``minicbam graph``: draw the autograd graph of a model's loss, without Graphviz.

    minicbam graph --model digits-cnn --out digits-cnn-graph.svg     (or .png, or .dot)

The graph comes from ``minicbam.viz.graph_nodes`` (one node per op and per parameter or
leaf, edges from inputs to consumers). It is laid out in layers, a simple Sugiyama-style
drawing:

    depth(root) = 0,   depth(v) = 1 + max depth(consumer of v)     (longest path to the loss)

so the loss sits at the top and each parameter sits just below the op that reads it.
Within a layer, nodes are ordered by the mean position of their consumers (the barycentre
heuristic, one sweep from the root up), which keeps most edges short and uncrossed. Drawn
with matplotlib's Agg backend; ``.dot`` writes the DOT text instead, for Graphviz users.
"""

import os

from minicbam.app.config import ATTENTIONS, MODELS, UserError
from minicbam.app.files import write_atomic

__all__ = ["add_graph", "draw_graph", "layered_layout"]

FORMATS = (".svg", ".png", ".dot")


def layered_layout(nodes, edges):
    """{key: (x, depth)}: depth as in the module docstring, x ordered by barycentre."""
    consumers = {key: [] for key, *_ in nodes}
    for src, dst in edges:
        consumers[src].append(dst)
    depth = {}
    for key, *_ in nodes:  # graph_nodes lists the root first; resolve depths on demand
        _depth(key, consumers, depth)
    layers = {}
    for key, *_ in nodes:
        layers.setdefault(depth[key], []).append(key)
    x = {}
    for d in sorted(layers):
        row = layers[d]
        if d > 0:
            row.sort(key=lambda k: sum(x[c] for c in consumers[k]) / len(consumers[k]))
        for i, key in enumerate(row):
            x[key] = i - (len(row) - 1) / 2
    return {key: (x[key], depth[key]) for key in x}


def _depth(key, consumers, depth):
    """Longest path from ``key`` down to the root, iteratively (graphs can be deep)."""
    stack = [key]
    while stack:
        k = stack[-1]
        pending = [c for c in consumers[k] if c not in depth]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        depth[k] = 1 + max((depth[c] for c in consumers[k]), default=-1)


def draw_graph(nodes, edges, path):
    """Write the layered drawing of (nodes, edges) to ``path`` (.svg or .png), atomically."""
    from minicbam.app.plots import plt, save_figure  # matplotlib: only when drawing

    pos = layered_layout(nodes, edges)
    width = max(sum(1 for p in pos.values() if p[1] == d) for d in {p[1] for p in pos.values()})
    height = 1 + max(p[1] for p in pos.values())
    fig, ax = plt.subplots(figsize=(max(4.0, 2.2 * width), max(2.0, 0.62 * height)))
    for src, dst in edges:
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        ax.annotate(
            "",
            xy=(x1, -y1),
            xytext=(x0, -y0),
            arrowprops={
                "arrowstyle": "->",
                "color": "#777777",
                "lw": 0.7,
                "shrinkA": 9,
                "shrinkB": 9,
            },
        )
    for key, kind, label, shape in nodes:
        x, d = pos[key]
        box = {
            "boxstyle": "round,pad=0.3",
            "fc": "#dde8f4" if kind == "leaf" else "white",
            "ec": "#333333",
            "lw": 0.6,
        }
        ax.text(x, -d, f"{label}\n{shape}", ha="center", va="center", fontsize=6.5, bbox=box)
    ax.set_xlim(-width / 2 - 0.2, width / 2 + 0.2)
    ax.set_ylim(-height + 0.4, 0.6)
    ax.axis("off")
    save_figure(fig, path)


def _write_text(text, path):
    write_atomic(path, lambda f: f.write(text))


# ----------------------------------------------------------------------------- command
def add_graph(sub):
    p = sub.add_parser(
        "graph",
        help="draw the autograd graph of a model's loss (SVG, PNG or DOT)",
        description="Build a model, run one small batch forward to a cross-entropy loss and "
        "draw the graph behind the loss: one box per op, one ellipse per parameter, each "
        "with its shape. No Graphviz needed.",
    )
    p.add_argument("--model", choices=MODELS, default="digits-cnn", help="(default: digits-cnn)")
    p.add_argument("--attention", choices=ATTENTIONS, default="cbam", help="(default: cbam)")
    p.add_argument("--size", type=int, default=8, help="input height and width (default: 8)")
    p.add_argument(
        "--out",
        metavar="FILE",
        default=None,
        help="output file, .svg, .png or .dot (default: MODEL-graph.svg)",
    )
    p.set_defaults(handler=cmd_graph)


def cmd_graph(args):
    import minicbam as mc
    from minicbam.app.factories import make_model
    from minicbam.nn import functional as F
    from minicbam.viz import graph_dot, graph_nodes

    out = args.out or f"{args.model}-graph.svg"
    if os.path.splitext(out)[1].lower() not in FORMATS:
        raise UserError(f"--out must end in one of {', '.join(FORMATS)}, got {out!r}")
    if args.size < 4:
        raise UserError(f"--size must be at least 4, got {args.size}")
    mc.manual_seed(0)
    model = make_model(args.model, args.attention, 10, 1)
    x = mc.randn(2, 1, args.size, args.size)
    loss = F.cross_entropy(model(x), mc.tensor([3, 7]))
    names = dict(model.named_parameters())
    if out.lower().endswith(".dot"):
        _write_text(graph_dot(loss, names), out)
    else:
        nodes, edges = graph_nodes(loss, names)
        draw_graph(nodes, edges, out)
    print(f"wrote {out}")
    return 0
