"""The documentation builds and stays a user's documentation.

``docs/`` is a Sphinx project that must build with warnings as errors (only
Sphinx itself: built-in extensions, the default theme). README.rst stays a
short front page; the pages speak to users and operators, not of how the
project was worked on. Their examples are run by tests/test_readme.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import ROOT

README = ROOT / "README.rst"
DOCS = ROOT / "docs"
PAGES = ["index", "architecture", "api", "operations", "security", "performance"]
README_MAX_LINES = 250
#: Wording that belongs in a work log, not in the documentation.
FORBIDDEN = {
    "a CONTRACT.md reference (the pages are the contract)": re.compile(r"CONTRACT\.md"),
    "a numbered work session": re.compile(r"\bsessions?\s+\d+", re.IGNORECASE),
    # (not ``requests.Session()`` nor ``sessionStorage``)
    "a work session": re.compile(r"(?<![.\w])sessions?\b(?!\()", re.IGNORECASE),
    "the issue's target": re.compile(r"issue'?s\s+(targets?|reference)", re.IGNORECASE),
    "an issue number": re.compile(r"\bissue\s*#\s*\d*", re.IGNORECASE),
}


def documentation() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.rst"))]


def test_sphinx_builds_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(DOCS), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, (
        f"sphinx-build failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    for page in PAGES:
        assert (out / f"{page}.html").is_file(), f"docs/{page}.rst was not built"


def test_every_page_is_in_the_table_of_contents() -> None:
    index = (DOCS / "index.rst").read_text()
    pages = sorted(p.stem for p in DOCS.glob("*.rst") if p.stem != "index")
    assert set(PAGES) - {"index"} <= set(pages)
    for page in pages:
        assert re.search(rf"^\s+{re.escape(page)}\s*$", index, re.MULTILINE), (
            f"docs/{page}.rst is not in the toctree of docs/index.rst"
        )


def test_readme_is_a_short_front_page() -> None:
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.rst has {len(lines)} lines (at most {README_MAX_LINES}): move detail to docs/"
    )
    for command in ("make run", "make test"):
        assert command in text
    for page in PAGES[1:]:
        assert f"docs/{page}.rst" in text, f"README.rst does not link docs/{page}.rst"


@pytest.mark.parametrize("path", documentation(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_work_log_wording(path: Path) -> None:
    found = [
        f"line {number}: {what} ({match.group(0)!r})"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for what, pattern in FORBIDDEN.items()
        for match in [pattern.search(line)]
        if match
    ]
    assert not found, f"{path.relative_to(ROOT)}: {found}"


def test_the_forbidden_patterns_catch_what_they_should() -> None:
    def caught(text: str) -> bool:
        return any(pattern.search(text) for pattern in FORBIDDEN.values())

    for bad in (
        "see CONTRACT.md",
        "Session 10's runs",
        "in sessions 6, 9 and 10",
        "an earlier session",
        "against the issue's targets",
        "the issue's reference costs",
        "fixed in issue #12",
    ):
        assert caught(bad), bad
    for fine in (
        "kept in sessionStorage",
        "api = requests.Session()",
        "a known gthread issue",
        "the reference machine",
    ):
        assert not caught(fine), fine
