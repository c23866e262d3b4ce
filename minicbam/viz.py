"""The graph behind a result, as data and as Graphviz DOT text (a study aid).

``graph_nodes(t)`` walks the graph from ``t.grad_fn`` through ``next_functions`` (the same
edges the backward sweep follows, see function.py) and returns

    nodes: [(key, kind, label, shape)]   kind "op" (a Function) or "leaf" (an AccumulateGrad)
    edges: [(src, dst)]                  from an input to the op that consumed it

with one node per op and one per leaf that requires grad, the root first. An input used twice
(``x * x``) gives two edges, as it gives two entries of ``next_functions``.

``graph_dot(t)`` writes that as a DOT ``digraph``, which any Graphviz tool renders
(``dot -Tsvg``); ``minicbam graph`` draws it without Graphviz (minicbam/app/graph.py).

``names`` maps names to tensors (``dict(model.named_parameters())``) to label the leaves.
"""

__all__ = ["graph_dot", "graph_nodes"]


def graph_nodes(tensor, names=None):
    """(nodes, edges) of the graph that made ``tensor`` (see the module docstring)."""
    leaf_names = {id(t): name for name, t in (names or {}).items()}
    root = tensor.grad_fn
    if root is None:  # a leaf: the graph is the leaf alone
        label = leaf_names.get(id(tensor), "leaf")
        return [("n0", "leaf", label, tuple(tensor.shape))], []
    # keys by id(node); ``seen`` holds every node until the walk ends, so that an id is
    # never reused by a new AccumulateGrad (those live only while someone holds them)
    keys, seen, nodes, edges = {id(root): "n0"}, [root], [], []
    stack = [root]
    while stack:
        node = stack.pop()
        nodes.append(_describe(node, keys[id(node)], leaf_names))
        for child, _ in node.next_functions:
            if child is None:
                continue
            if id(child) not in keys:
                keys[id(child)] = f"n{len(keys)}"
                seen.append(child)
                stack.append(child)
            edges.append((keys[id(child)], keys[id(node)]))
    return nodes, edges


def _describe(node, key, leaf_names):
    if node.name() == "AccumulateGrad":
        leaf = node.variable
        return key, "leaf", leaf_names.get(id(leaf), "leaf"), tuple(leaf.shape)
    return key, "op", node.name(), tuple(node.output_shape)


def _escape(text):
    return str(text).replace("\\", "\\\\").replace('"', '\\"')


def _label(label, shape):
    """A quoted two-line DOT label: the name, then the shape (DOT's newline is \\n)."""
    return f'"{_escape(label)}\\n{_escape(shape)}"'


def graph_dot(tensor, names=None):
    """A DOT ``digraph`` of the graph behind ``tensor``: boxes for ops, ellipses for leaves,
    each labelled with its output shape; edges run from inputs to consumers."""
    nodes, edges = graph_nodes(tensor, names)
    lines = ["digraph minicbam {", '  node [fontname="Helvetica", fontsize=10];']
    for key, kind, label, shape in nodes:
        style = "shape=box" if kind == "op" else 'shape=ellipse, style=filled, fillcolor="#dde8f4"'
        lines.append(f"  {key} [label={_label(label, shape)}, {style}];")
    lines.extend(f"  {src} -> {dst};" for src, dst in edges)
    lines.append("}")
    return "\n".join(lines) + "\n"
