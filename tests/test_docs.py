"""docs/api-notes.md stays the one place API quirks are explained: every pointer into it resolves.

Code comments cite quirks as `docs/api-notes.md#<anchor>`; an anchor is the GitHub slug of a heading, so a
renamed heading or a typo in a comment shows up here instead of as a dead link.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

NOTES = ROOT / "docs" / "api-notes.md"
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis",
             "node_modules", "build", "dist"}
REFERENCE = re.compile(r"api-notes\.md#([\w-]+)")
LOCAL_LINK = re.compile(r"\]\(#([\w-]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
CITED_TEST = re.compile(r"tests/(test_\w+\.py)::(test_\w+)")
# the private notes the repository used to cite, which a maintainer of this repository does not have (the
# pattern is split so that a plain grep for those names finds nothing in this file either)
PRIVATE_NOTES = re.compile(r"\.\./sha" r"red/|" r"FAC" r"TS(\.md| [A-E]\d| part [A-E])")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a Markdown text; a repeated slug gets -1, -2... as on GitHub."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match is None:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def text_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for path in sorted(root.rglob("*")):
        parts = set(path.relative_to(root).parts)
        if path.is_file() and not parts & SKIP_DIRS and not any(p.endswith(".egg-info") for p in parts):
            files.append(path)
    return files


def read_text(path: Path) -> str | None:
    raw = path.read_bytes()
    return None if b"\0" in raw else raw.decode("utf-8", "replace")


def references(root: Path) -> list[tuple[str, int, str]]:
    """(file, line, anchor) of every `api-notes.md#anchor` under root."""
    found: list[tuple[str, int, str]] = []
    for path in text_files(root):
        text = read_text(path)
        for number, line in enumerate((text or "").splitlines(), 1):
            found.extend((str(path.relative_to(root)), number, a) for a in REFERENCE.findall(line))
    return found


def dangling(root: Path, notes: Path) -> list[tuple[str, int, str]]:
    known = anchors(notes.read_text(encoding="utf-8"))
    return [ref for ref in references(root) if ref[2] not in known]


@pytest.mark.parametrize(("heading", "slug"), [
    ("B24-batch-empty-list", "b24-batch-empty-list"),
    ("Organisation view (planned)", "organisation-view-planned"),
    ("PACHCA-has-next", "pachca-has-next"),
    ("The `time` block, and *why*: 2 req/s", "the-time-block-and-why-2-reqs"),
    ("  Bitrix24  ", "bitrix24"),
])
def test_headings_get_the_anchors_github_gives_them(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_repeated_headings_are_numbered_and_fenced_lines_are_not_headings() -> None:
    text = "# Notes\n## Limits\n```\n# not a heading\n```\n### Limits\n"
    assert anchors(text) == {"notes", "limits", "limits-1"}


def test_a_pointer_to_a_missing_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    notes = tmp_path / "docs" / "api-notes.md"
    notes.write_text("# API notes\n### B24-batch-limit\n", encoding="utf-8")
    (tmp_path / "client.py").write_text("# see docs/api-notes.md#b24-batch-limit\n"
                                        "# and docs/api-notes.md#b24-batch-limits\n", encoding="utf-8")
    assert dangling(tmp_path, notes) == [("client.py", 2, "b24-batch-limits")]


def test_every_pointer_into_the_api_notes_resolves() -> None:
    found = references(ROOT)
    assert len({path for path, _, _ in found if path.startswith("exporter/")}) >= 5  # the code does cite it
    this_file = str(Path(__file__).resolve().relative_to(ROOT))  # its examples point at made-up anchors
    assert [ref for ref in dangling(ROOT, NOTES) if ref[0] != this_file] == []


def test_links_inside_the_api_notes_resolve() -> None:
    text = NOTES.read_text(encoding="utf-8")
    assert sorted(set(LOCAL_LINK.findall(text)) - anchors(text)) == []


def test_tests_the_api_notes_cite_exist() -> None:
    cited = set(CITED_TEST.findall(NOTES.read_text(encoding="utf-8")))
    assert cited
    missing = [f"{file}::{name}" for file, name in sorted(cited)
               if not re.search(rf"^(async )?def {name}\(", (ROOT / "tests" / file).read_text(encoding="utf-8")
                                if (ROOT / "tests" / file).exists() else "", re.MULTILINE)]
    assert missing == []


def test_nothing_points_at_notes_outside_the_repository() -> None:
    me = Path(__file__).resolve()
    hits = [f"{path.relative_to(ROOT)}:{number}"
            for path in text_files(ROOT) if path.resolve() != me
            for number, line in enumerate((read_text(path) or "").splitlines(), 1) if PRIVATE_NOTES.search(line)]
    assert hits == []
