"""``minicbam.viz``: the graph behind a result as nodes and edges, and as DOT text."""

import re

import minicbam as mc
import minicbam.nn as nn
from minicbam.viz import graph_dot, graph_nodes

NODE = re.compile(r'^\s*(n\d+) \[label="([^"\\]*(?:\\.[^"\\]*)*)", shape=(\w+)')
EDGE = re.compile(r"^\s*(n\d+) -> (n\d+);$")


def parse_dot(text):
    """({key: (label, shape)}, [(src, dst)]) of a digraph written by graph_dot."""
    lines = text.strip().splitlines()
    assert lines[0] == "digraph minicbam {" and lines[-1] == "}"
    nodes, edges = {}, []
    for line in lines[1:-1]:
        if m := NODE.match(line):
            nodes[m.group(1)] = (m.group(2), m.group(3))
        elif m := EDGE.match(line):
            edges.append((m.group(1), m.group(2)))
    return nodes, edges


def test_dot_of_a_known_graph():
    a = mc.randn(2, 3, requires_grad=True)
    b = mc.randn(3, requires_grad=True)
    c = mc.randn(2, 3)  # requires no grad: not a node
    y = ((a * b) * c + a).sum()
    nodes, edges = parse_dot(graph_dot(y, {"a": a, "b": b}))
    # ops: Sum, Add, Mul (by c), Mul (a * b), Expand (b); leaves: a, b
    labels = sorted(label for label, _ in nodes.values())
    assert labels == sorted(
        [
            "SumBackward\\n()",
            "AddBackward\\n(2, 3)",
            "MulBackward\\n(2, 3)",
            "MulBackward\\n(2, 3)",
            "ExpandBackward\\n(2, 3)",
            "a\\n(2, 3)",
            "b\\n(3,)",
        ]
    )
    assert sum(shape == "ellipse" for _, shape in nodes.values()) == 2
    # Add<-Sum, Mul<-Add, a<-Add, Mul(ab)<-Mul, a<-Mul(ab), Expand<-Mul(ab), b<-Expand
    assert len(edges) == 7
    assert all(src in nodes and dst in nodes for src, dst in edges)
    root = [k for k, (label, _) in nodes.items() if label.startswith("Sum")][0]
    assert not any(src == root for src, _ in edges)  # nothing consumes the result


def test_an_input_used_twice_gives_two_edges():
    x = mc.randn(4, requires_grad=True)
    nodes, edges = graph_nodes((x * x).sum())
    assert len(nodes) == 3 and len(edges) == 3
    mul = [key for key, _, label, _ in nodes if label == "MulBackward"][0]
    assert sum(dst == mul for _, dst in edges) == 2


def test_a_leaf_alone_and_a_module_graph():
    x = mc.randn(2, 3, requires_grad=True)
    assert graph_nodes(x) == ([("n0", "leaf", "leaf", (2, 3))], [])
    layer = nn.Linear(3, 4)
    y = layer(x).relu().sum()
    nodes, edges = graph_nodes(y, dict(layer.named_parameters()))
    leaves = sorted((label, shape) for _, kind, label, shape in nodes if kind == "leaf")
    assert leaves == [("bias", (4,)), ("leaf", (2, 3)), ("weight", (4, 3))]
    assert len(nodes) == 6 and len(edges) == 5  # Sum, ReLU, Linear + three leaves
