"""README.rst and docs/*.rst are tested: their examples run against a live
gunicorn, the test Redis and the test run's Celery worker.

Every literal block of these pages (``::`` paragraphs and ``code-block``
directives) is preceded by a ``.. readme-test: KIND`` comment (invisible
when rendered, by GitHub and by Sphinx alike):

``shell``       run by bash (``set -euo pipefail``), ``localhost:8000``
                pointed at the test server, ``analytics`` running this
                checkout, ``$KEY`` an admin key and ``$REDIS_URL`` the test
                Redis (a block may make its own ``KEY``)
``python``      run by Python, with the same substitutions and environment
``synopsis``    ``analytics ... --help`` of each line must work and know
                every ``--option`` the line shows
``procfile``    must equal the ``Procfile``
``background``  each line is started, must come up, and is stopped
``ci``          run by CI (``make test``), or ``make run``, whose parts are
                tested elsewhere (``analytics run``: test_devserver.py)
``none``        not a command (a diagram, sample output)

The pages are read in a fixed order: README.rst first, then docs/*.rst by
name; the examples run in that order. An unmarked block that looks like a
command fails :func:`test_every_block_is_marked`, so a new example cannot go
untested by accident, and :data:`EXPECTED_EXAMPLES` keeps examples from
disappearing when the pages are rewritten.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from testkit import ROOT, Process, python_env, wait_until

README = ROOT / "README.rst"
DOCS = ROOT / "docs"
KINDS = {"shell", "python", "synopsis", "procfile", "background", "ci", "none"}
#: Languages a ``code-block`` of each runnable kind may declare.
LANGUAGES = {"shell": {"bash", "sh", "shell", "console"}, "python": {"python", "python3", "py"}}
#: First words that make an unmarked block look like a command.
COMMAND_WORDS = {
    "analytics",
    "curl",
    "make",
    "celery",
    "gunicorn",
    "honcho",
    "redis-cli",
    "python",
    "python3",
    "pip",
    "KEY=$(analytics",
    "import",
    "from",
    "export",
    "docker",
    "flower",
    "wget",
    "sh",
    "bash",
}
MARKER = re.compile(r"^\s*\.\. readme-test:\s*(\S+)\s*$")
#: ``.. name:: argument`` (a directive).
DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w-]+)::(.*)$")
CODE_DIRECTIVES = {"code-block", "code", "sourcecode"}
#: Snippets that must stay in a run (shell or python) example somewhere:
#: every example the pages have, wherever it moves.
EXPECTED_EXAMPLES = [
    "analytics keys create --role admin",  # quick start
    "POST localhost:8000/v1/events",  # sending events, a batch
    "/v1/event-types",  # registering a type
    "properties.button=buy",  # property filters
    '--data-urlencode "properties.amount=gte:10"',
    "requests.Session()",  # from Python, following the cursor
    "segment.track(",  # the Segment SDK
    "rudder.track(",  # the RudderStack SDK
    "localhost:8000/v1/track",  # the Segment HTTP API
    "groupBy=route",  # metrics
    "events.page_view?agg=count",  # event counts
    "analytics export --type page_view",  # export and import
    "analytics import -",
    "analytics audit verify",  # the audit log
    "localhost:8000/v1/audit",
    "localhost:8000/v1/erase",  # erasure
    "analytics erase --user",
    'redis-cli -u "$REDIS_URL" ping',  # troubleshooting
    "localhost:8000/readyz",
    "celery -A tasks inspect ping",
    "XLEN analytics:events:queue",
]


@dataclass
class Block:
    path: str
    line: int
    kind: str | None
    text: str
    language: str = ""

    def __str__(self) -> str:
        return f"{self.path} line {self.line} ({self.kind or 'unmarked'})"


def documents() -> list[Path]:
    """The tested pages, in the order their examples run."""
    return [README, *sorted(DOCS.glob("*.rst"))]


def _body(lines: list[str], start: int, indent: int) -> tuple[list[tuple[int, str]], int]:
    """The lines from ``start`` indented deeper than ``indent`` (blank lines
    included), with their indexes, without leading and trailing blank lines;
    and the index after them."""
    j = start
    body: list[tuple[int, str]] = []
    while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
        body.append((j, lines[j]))
        j += 1
    while body and not body[-1][1].strip():
        body.pop()
    while body and not body[0][1].strip():
        body.pop(0)
    return body, j


def blocks(text: str | None = None, path: str = "README.rst") -> list[Block]:
    """The literal blocks of one page (``::`` and ``code-block``), with the
    marker that precedes each. Other directives' contents are read as text,
    so a literal block inside, say, a ``note`` is found too."""
    lines = (text if text is not None else (ROOT / path).read_text()).splitlines()
    found: list[Block] = []
    marker: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        match = MARKER.match(line)
        if match:
            marker = match.group(1)
            i += 1
            continue
        directive = DIRECTIVE.match(line)
        if directive and directive.group(2) not in CODE_DIRECTIVES:
            i += 1  # toctree, note, warning...: not literal; go on inside
            continue
        stripped = line.rstrip()
        if directive or stripped.endswith("::"):
            indent = len(line) - len(line.lstrip())
            body, j = _body(lines, i + 1, indent)
            language = directive.group(3).strip() if directive else ""
            if directive:  # skip the directive's options (``:caption: ...``)
                while body and body[0][1].strip().startswith(":"):
                    body.pop(0)
                while body and not body[0][1].strip():
                    body.pop(0)
            if body:
                text = textwrap.dedent("\n".join(b for _, b in body)).strip("\n")
                found.append(Block(path, body[0][0] + 1, marker, text, language))
                marker = None
            i = j
            continue
        i += 1
    return found


def all_blocks() -> list[Block]:
    return [block for page in documents() for block in blocks(path=str(page.relative_to(ROOT)))]


def of_kind(kind: str) -> list[Block]:
    return [b for b in all_blocks() if b.kind == kind]


def looks_like_a_command(block: Block) -> bool:
    for line in block.text.splitlines():
        words = line.split()
        if words and not words[0].startswith("#") and words[0] in COMMAND_WORDS:
            return True
    return False


def cli_target() -> tuple[str, str]:
    """(module, function) of the ``analytics`` console script: the entry
    point setup.cfg declares, else where the CLI has lived."""
    candidates = []
    declared = re.search(r"^\s*analytics\s*=\s*([\w.]+):(\w+)\s*$", (ROOT / "setup.cfg").read_text(), re.MULTILINE)
    if declared:
        candidates.append((declared.group(1), declared.group(2)))
    candidates += [("cli.main", "main"), ("analytics.cli", "main")]
    for module, function in candidates:
        try:
            if importlib.util.find_spec(module) is not None:
                return module, function
        except ModuleNotFoundError:
            continue
    raise AssertionError(f"none of {candidates} is importable: where is the analytics CLI?")


def test_the_parser_finds_marked_and_unmarked_blocks() -> None:
    sample = (
        "Intro::\n\n    curl x\n\n.. readme-test: none\n\n::\n\n    a diagram\n\ntext\n\n"
        ".. readme-test: shell\n\n.. code-block:: bash\n   :caption: a caption\n\n"
        "   analytics stats\n\n.. note::\n\n   Inside a note::\n\n       make test\n\n"
        ".. toctree::\n   :maxdepth: 2\n\n   api\n"
    )
    found = blocks(sample)
    assert [(b.kind, b.text, b.language) for b in found] == [
        (None, "curl x", ""),
        ("none", "a diagram", ""),
        ("shell", "analytics stats", "bash"),
        (None, "make test", ""),
    ]
    assert looks_like_a_command(found[0]) and not looks_like_a_command(found[1])
    assert [b.line for b in found] == [3, 9, 18, 24]  # each block's first line


def test_every_block_is_marked() -> None:
    found = all_blocks()
    assert len(found) >= 20
    pages = {b.path for b in found}
    for page in ("README.rst", "docs/api.rst", "docs/operations.rst", "docs/security.rst"):
        assert page in pages, f"no literal block found in {page}"
    unknown = [str(b) for b in found if b.kind is not None and b.kind not in KINDS]
    assert not unknown, f"unknown readme-test kinds: {unknown}"
    untested = [str(b) for b in found if b.kind is None and looks_like_a_command(b)]
    assert not untested, f"commands without a `.. readme-test: KIND` marker: {untested} (see tests/test_readme.py)"
    for kind in ("shell", "python", "synopsis", "procfile", "ci"):
        assert of_kind(kind), f"no {kind} block: is the marker syntax still right?"
    # The README itself shows the two commands and a quick start that runs.
    readme = blocks()
    assert any(b.kind == "ci" for b in readme) and any(b.kind == "shell" for b in readme)


def test_code_blocks_declare_the_language_of_their_kind() -> None:
    wrong = [
        f"{b}: {b.language}"
        for b in all_blocks()
        if b.language and b.kind in LANGUAGES and b.language not in LANGUAGES[b.kind]
    ]
    assert not wrong, f"code-block language does not match the readme-test kind: {wrong}"


def test_no_example_went_missing() -> None:
    run = "\n".join(b.text for b in all_blocks() if b.kind in ("shell", "python"))
    missing = [snippet for snippet in EXPECTED_EXAMPLES if snippet not in run]
    assert not missing, f"examples no longer shown (and run) on any page: {missing}"


def test_procfile_block_is_the_procfile() -> None:
    [block] = of_kind("procfile")
    assert block.text.strip() == (ROOT / "Procfile").read_text().strip()


def test_ci_blocks_are_the_makefile_targets_ci_runs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()
    commands = set()
    for block in of_kind("ci"):
        for line in block.text.splitlines():
            command = line.split("#")[0].split()
            assert command[:1] == ["make"] and command[1] in ("run", "test", "bench"), line
            assert re.search(rf"^{command[1]}:", makefile, re.MULTILINE), line
            commands.add(command[1])
    assert {"run", "test"} <= commands
    # `make run` is `analytics run` after the install `make test` also does.
    assert re.search(r"^run: .*\n\t\$\(BIN\)/analytics run$", makefile, re.MULTILINE)


SYNOPSIS = [line for block in of_kind("synopsis") for line in block.text.splitlines()]


@pytest.mark.parametrize("line", SYNOPSIS)
def test_synopsis_commands_exist_with_their_options(line: str) -> None:
    module, function = cli_target()
    main = getattr(importlib.import_module(module), function)

    words = line.split()
    assert words[0] == "analytics"
    path = []
    for word in words[1:]:
        if word.startswith(("-", "[")) or word.isupper() or "|" in word or "=" in word:
            break
        path.append(word)
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    for option in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", line):
        assert option in result.output, f"{option} is not an option of analytics {' '.join(path)}"


# -- running the examples ---------------------------------------------------------------
@pytest.fixture
def example_env(
    env: dict[str, str], web_server: str, keys: dict[str, dict[str, str]], tmp_path: Path
) -> dict[str, str]:
    """Environment of the examples: the test stack, `analytics` from this checkout."""
    module, function = cli_target()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "analytics"
    program = f"import sys; from {module} import {function} as main; sys.exit(main(prog_name='analytics'))"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(program)} "$@"\n')
    shim.chmod(0o755)
    environ = python_env(env)
    environ["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), environ.get("PATH", "")])
    environ["KEY"] = keys["admin"]["Authorization"].removeprefix("Bearer ")
    return environ


def localize(text: str, web_server: str) -> str:
    return text.replace("localhost:8000", web_server.removeprefix("http://"))


def run_block(block: Block, argv: list[str], environ: dict[str, str], cwd: Path) -> None:
    result = subprocess.run(argv, env=environ, cwd=cwd, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, (
        f"{block} failed ({result.returncode}):\n{block.text}\n--- stdout\n{result.stdout[-2000:]}"
        f"\n--- stderr\n{result.stderr[-3000:]}"
    )


def test_examples_run(example_env, web_server, worker, tmp_path, client, keys) -> None:
    """Every shell and python example, page by page in order, then what they sent is there."""
    ran: dict[str, int] = {}
    for block in all_blocks():
        text = localize(block.text, web_server)
        if block.kind == "shell":
            run_block(block, ["bash", "-c", "set -euo pipefail\n" + text], example_env, tmp_path)
        elif block.kind == "python":
            script = tmp_path / f"example_{Path(block.path).stem}_{block.line}.py"
            script.write_text(text + "\n")
            run_block(block, [sys.executable, str(script)], example_env, tmp_path)
        else:
            continue
        ran[block.path] = ran.get(block.path, 0) + 1
    assert sum(ran.values()) >= 14, ran
    assert ran.get("README.rst", 0) >= 2, ran  # the quick start

    def count(query: str) -> int:
        return len(client.get(f"/v1/events?{query}", headers=keys["read"]).json["events"])

    # curl's Segment track (42), the Segment SDK's (42), RudderStack's (7) and PostHog's (42).
    wait_until(lambda: count("type=Order+Completed") == 4, 30, message="the examples' Segment calls to be stored")
    assert count("type=Order+Completed&properties.amount=gte:10") == 3
    assert count("type=page_view&userId=u-17") >= 2 and count("type=click&properties.button=buy") == 1
    assert count("type=identify") == 2 and count("type=page") == 1  # Segment's identify and PostHog's $identify
    assert (tmp_path / "views.ndjson").exists() and (tmp_path / "pro.csv").exists()


def test_background_commands_come_up(example_env, tmp_path) -> None:
    ready = {"celery": r"ready\."}
    started = 0
    for block in of_kind("background"):
        for number, line in enumerate(block.text.splitlines()):
            command = shlex.split(line.split(" #")[0])
            pattern = ready[command[0]]
            proc = Process(f"readme-background-{number}", command, example_env, tmp_path).start()
            try:
                proc.wait_for_log(pattern, timeout=90)
            finally:
                proc.stop()
            started += 1
    assert started >= 1
