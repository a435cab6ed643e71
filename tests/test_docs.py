"""The documentation holds together: every relative link and anchor in README.md and docs/ resolves, the README
stays short, and (where mkdocs is installed) the site builds with `mkdocs build --strict`."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

README_MAX_LINES = 150
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def prose(path: Path) -> str:
    """The page without its fenced code blocks (a `[x](y)` in code is no link)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def anchors(path: Path) -> set[str]:
    """The ids of a page's headings, as GitHub and as mkdocs (Python-Markdown's toc) spell them."""
    ids = set()
    for title in HEADING.findall(prose(path)):
        text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", title).strip().lower()
        words = re.sub(r"[^\w\s-]", "", text)
        ids.add(words.replace(" ", "-"))  # GitHub: every space is a hyphen
        ids.add(re.sub(r"[-\s]+", "-", words).strip("-"))  # mkdocs: runs of spaces and hyphens are one hyphen
    return ids


def broken_links(path: Path) -> list[str]:
    """`target (why)` for every relative link of `path` whose file or anchor does not exist."""
    broken = []
    for target in LINK.findall(prose(path)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{target} (no heading #{anchor})")
    return broken


@pytest.mark.parametrize("path", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    assert not broken_links(path), broken_links(path)


def test_the_readme_is_short_and_maps_every_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(prose(ROOT / "README.md"))}
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if p.name != "index.md" and p.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_the_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Sweeps (`nas-sweep`)\n\n## A & B\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#sweeps-nas-sweep) [ok](a.md#a--b) [ok](a.md#a-b) [no](a.md#sweeps) [no](c.md) "
                    "[web](https://example.org/x.md)\n```\n[code](nowhere.md)\n```\n")
    assert [b.split(" ")[0] for b in broken_links(page)] == ["a.md#sweeps", "c.md"]


def test_mkdocs_builds_the_site_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]'); the site build is "
                                         "checked where it is")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()
