"""`nas-plot` drawings: real PNG/SVG output per shipped genotype, SVG edge structure, and the no-`dot` fallback."""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import graphviz
import pytest

from nas.cli import plot
from nas.core.errors import UserError
from search_spaces.darts import drawing
from search_spaces.darts.genotype import load_genotype, shipped_genotype_names

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed (make graphviz)")
SVG = "{http://www.w3.org/2000/svg}"


def svg_edges(path: Path) -> list[tuple[str, str, str]]:
    """(source, target, label) of each edge drawn in an SVG written by dot."""
    edges = []
    for group in ET.parse(path).getroot().iter(f"{SVG}g"):
        if group.get("class") == "edge":
            source, target = group.findtext(f"{SVG}title").split("->")
            edges.append((source, target, " ".join(t.text or "" for t in group.iter(f"{SVG}text"))))
    return edges


@needs_dot
@pytest.mark.parametrize("name", shipped_genotype_names())
def test_nas_plot_writes_png_and_svg(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    plot.main([name, "-o", str(tmp_path / "png")])
    plot.main([name, "-o", str(tmp_path / "svg"), "--format", "svg"])
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted(
        f"{cell}.{fmt}" for cell in ("normal", "reduce") for fmt in ("dot", "dot", "png", "svg"))
    genotype = load_genotype(name)
    for cell in ("normal", "reduce"):
        assert (tmp_path / "png" / f"{cell}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "png" / f"{cell}.dot").read_text().startswith(f"digraph {cell}")
        edges = svg_edges(tmp_path / "svg" / f"{cell}.svg")
        pairs = getattr(genotype, cell)
        into_nodes = [(s, t, label) for s, t, label in edges if t in {str(i) for i in range(len(pairs) // 2)}]
        assert len(into_nodes) == len(pairs)  # 8 for the DARTS cells, 10 for NASNet's and AmoebaNet's
        expected = [(("c_{k-2}", "c_{k-1}")[i] if i < 2 else str(i - 2), str(k // 2), op)
                    for k, (op, i) in enumerate(pairs)]
        assert sorted(into_nodes) == sorted(expected)
        concat = sorted(str(i - 2) for i in getattr(genotype, f"{cell}_concat"))
        assert sorted(s for s, t, _ in edges if t == "c_{k}") == concat


@needs_dot
def test_nas_plot_accepts_a_genotype_string_and_pdf(tmp_path: Path):
    plot.main([str(load_genotype("PDARTS")), "-o", str(tmp_path), "--format", "pdf"])
    assert (tmp_path / "reduce.pdf").read_bytes()[:5] == b"%PDF-"


@needs_dot
def test_cell_image_array_is_rgb():
    image = drawing.cell_image_array(load_genotype("DARTS_V2"), "reduce")
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype.name == "uint8"
    assert image.shape[0] > 50 and image.shape[1] > 50
    assert image.min() < 50 and image.max() == 255  # dark lines on a white page


def test_missing_dot_writes_sources_and_says_how_to_install(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(drawing.shutil, "which", lambda name: None)
    plot.main(["PC_DARTS", "-o", str(tmp_path)])
    captured = capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["normal.dot", "reduce.dot"]
    assert captured.err.strip() == drawing.MISSING_DOT_MESSAGE
    assert "apt-get install graphviz" in captured.err and "brew install graphviz" in captured.err
    assert "Traceback" not in captured.err
    assert drawing.cell_image_array(load_genotype("PC_DARTS"), "normal") is None


def test_executable_not_found_is_the_same_fallback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch):
    def no_dot(*args: object, **kwargs: object) -> bytes:
        raise graphviz.ExecutableNotFound(("dot",))

    monkeypatch.setattr(drawing.shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(graphviz.Digraph, "pipe", no_dot)
    paths = drawing.plot_genotype(load_genotype("DARTS_V1"), tmp_path, "svg")
    assert [p.name for p in paths] == ["normal.dot", "reduce.dot"]
    assert "apt-get install graphviz" in capsys.readouterr().err


def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        plot.main(["DARTS_V9", "-o", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown genotype 'DARTS_V9'") and err.count("\n") == 1
    with pytest.raises(UserError, match="unknown drawing format 'gif'"):
        drawing.plot_genotype(load_genotype("DARTS_V1"), tmp_path, "gif")
