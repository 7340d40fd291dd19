"""The documentation cannot drift: docs/library.md shows docs/examples/embed_core.py exactly and
what it prints, the example runs, every relative link in the docs resolves, and the ADR index
lists every ADR."""

from __future__ import annotations

import re
import runpy
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLE = DOCS / "examples" / "embed_core.py"
LIBRARY_PAGE = DOCS / "library.md"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def run_example() -> list[str]:
    """The example's `main()`, run as a fresh module."""
    namespace = runpy.run_path(str(EXAMPLE), run_name="embed_core")
    return namespace["main"]()


def test_the_example_drains_by_model_and_retries_the_busy_job() -> None:
    log = run_example()
    assert log[0] == "planned: llama3.2:latest, llama3.2:latest, qwen3:8b, qwen3:8b"
    ran = [re.match(r"\+\d+s (\S+) '([^']*)'", line).groups() for line in log[1:]]  # type: ignore[union-attr]
    assert ran == [
        ("llama3.2:latest", "a"),
        ("llama3.2:latest", "flaky"),
        ("qwen3:8b", "b"),
        ("qwen3:8b", "d"),
        ("llama3.2:latest", "flaky"),
    ]
    assert log[2].endswith("attempt 1 failed, retry in 2s")
    assert log[-1].endswith("llama3.2:latest says hello to 'flaky'")
    assert sum("(loaded)" in line for line in log) == 3


def test_the_example_runs_as_a_script(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert capsys.readouterr().out.splitlines() == run_example()


def test_the_library_page_shows_the_example_and_its_output_exactly() -> None:
    blocks = FENCE.findall(LIBRARY_PAGE.read_text())
    python = [body for language, body in blocks if language == "python"]
    assert EXAMPLE.read_text() in python, "docs/library.md must show embed_core.py verbatim"
    outputs = [body for language, body in blocks if language == "text"]
    assert "\n".join(run_example()) + "\n" in outputs


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page."""
    text = FENCE.sub("", page.read_text())
    return {_slug(title) for title in re.findall(r"^#{1,6} +(.+?) *$", text, re.MULTILINE)}


def _slug(title: str) -> str:
    kept = "".join(
        ch
        for ch in title.lower()
        if ch in "-_ " or unicodedata.category(ch)[0] in "LN"  # letters, numbers
    )
    return kept.replace(" ", "-")


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        missing_anchor = bool(anchor) and linked.suffix == ".md" and anchor not in _anchors(linked)
        if not linked.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to what is not there: {broken}"


def test_the_adr_index_lists_every_adr() -> None:
    index = (DOCS / "adr" / "README.md").read_text()
    records = sorted(path.name for path in (DOCS / "adr").glob("[0-9][0-9][0-9][0-9]-*.md"))
    assert records
    missing = [name for name in records if f"({name})" not in index]
    assert not missing, f"docs/adr/README.md does not list {missing}"
