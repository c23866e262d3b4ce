"""``minicbam graph`` writes a picture of the digits CNN's graph without Graphviz."""

import xml.etree.ElementTree as ET

import pytest

from minicbam.app.cli import main
from minicbam.app.graph import layered_layout


def test_graph_writes_png_svg_and_dot(tmp_path, capsys):
    png, svg, dot = tmp_path / "g.png", tmp_path / "sub" / "g.svg", tmp_path / "g.dot"
    for path in (png, svg, dot):
        assert main(["graph", "--model", "digits-cnn", "--out", str(path)]) == 0
        assert f"wrote {path}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = "".join(root.itertext())
    assert "GateBackward" in text and "block1.conv.weight" in text
    lines = dot.read_text().splitlines()
    assert lines[0] == "digraph minicbam {"
    assert sum("->" in line for line in lines) > 40


def test_graph_refuses_an_unknown_format(tmp_path, capsys):
    assert main(["graph", "--out", str(tmp_path / "g.jpg")]) == 2
    assert "--out must end in one of .svg, .png, .dot" in capsys.readouterr().err
    assert not (tmp_path / "g.jpg").exists()


@pytest.mark.parametrize(
    "edges, expected",
    [
        # a -> b -> root and a -> root: a's longest path to the root is 2
        ([("a", "b"), ("b", "r"), ("a", "r")], {"r": 0, "b": 1, "a": 2}),
        ([("x", "r"), ("y", "r")], {"r": 0, "x": 1, "y": 1}),
    ],
)
def test_layers_are_longest_paths_to_the_root(edges, expected):
    nodes = [(k, "op", k, ()) for k in expected]
    pos = layered_layout(nodes, edges)
    assert {k: d for k, (_, d) in pos.items()} == expected
    xs = sorted(x for x, d in pos.values() if d == 1)
    assert xs == sorted(-x for x in xs)  # each layer centred
