"""README.rst is tested: its examples run against a live gunicorn, the test
Redis and the session's Celery worker.

Every literal block of the README is preceded by a ``.. readme-test: KIND``
comment (invisible when rendered):

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

An unmarked block that looks like a command fails :func:`test_every_block_is_marked`,
so a new example cannot go untested by accident.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.support import ROOT, Process, python_env, wait_until

README = ROOT / "README.rst"
KINDS = {"shell", "python", "synopsis", "procfile", "background", "ci", "none"}
#: First words that make an unmarked block look like a command.
COMMAND_WORDS = {"analytics", "curl", "make", "celery", "gunicorn", "honcho", "redis-cli",
                 "python", "python3", "pip", "KEY=$(analytics", "import", "from", "export",
                 "docker", "flower", "wget", "sh", "bash"}
MARKER = re.compile(r"^\s*\.\. readme-test:\s*(\S+)\s*$")


@dataclass
class Block:
    line: int
    kind: str | None
    text: str

    def __str__(self) -> str:
        return f"README.rst line {self.line} ({self.kind or 'unmarked'})"


def blocks(text: str | None = None) -> list[Block]:
    """The literal blocks of the README (``::`` and ``code-block``), with
    the marker that precedes each."""
    lines = (text if text is not None else README.read_text()).splitlines()
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
        stripped = line.rstrip()
        if stripped.endswith("::") and not stripped.lstrip().startswith(".. readme-test"):
            indent = len(line) - len(line.lstrip())
            j = i + 1
            body: list[str] = []
            while j < len(lines) and (not lines[j].strip() or
                                      len(lines[j]) - len(lines[j].lstrip()) > indent):
                body.append(lines[j])
                j += 1
            while body and not body[-1].strip():
                body.pop()
            if any(b.strip() for b in body):
                found.append(Block(i + 2, marker, textwrap.dedent("\n".join(body)).strip("\n")))
                marker = None
            i = j
            continue
        i += 1
    return found


def of_kind(kind: str) -> list[Block]:
    return [b for b in blocks() if b.kind == kind]


def looks_like_a_command(block: Block) -> bool:
    for line in block.text.splitlines():
        words = line.split()
        if words and not words[0].startswith("#") and words[0] in COMMAND_WORDS:
            return True
    return False


def test_the_parser_finds_marked_and_unmarked_blocks() -> None:
    sample = "Intro::\n\n    curl x\n\n.. readme-test: none\n\n::\n\n    a diagram\n\ntext\n"
    found = blocks(sample)
    assert [(b.kind, b.text) for b in found] == [(None, "curl x"), ("none", "a diagram")]
    assert looks_like_a_command(found[0]) and not looks_like_a_command(found[1])


def test_every_block_is_marked() -> None:
    found = blocks()
    assert len(found) >= 10
    unknown = [str(b) for b in found if b.kind is not None and b.kind not in KINDS]
    assert not unknown, f"unknown readme-test kinds: {unknown}"
    untested = [str(b) for b in found if b.kind is None and looks_like_a_command(b)]
    assert not untested, (
        f"commands in README.rst without a `.. readme-test: KIND` marker: {untested} "
        "(see tests/test_readme.py)")
    for kind in ("shell", "python", "synopsis", "procfile", "ci"):
        assert of_kind(kind), f"no {kind} block: is the marker syntax still right?"


def test_procfile_block_is_the_procfile() -> None:
    [block] = of_kind("procfile")
    assert block.text.strip() == (ROOT / "Procfile").read_text().strip()


def test_ci_blocks_are_the_makefile_targets_ci_runs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()
    for block in of_kind("ci"):
        for line in block.text.splitlines():
            command = line.split("#")[0].split()
            assert command[:1] == ["make"] and command[1] in ("run", "test", "bench"), line
            assert re.search(rf"^{command[1]}:", makefile, re.MULTILINE), line
    # `make run` is `analytics run` after the install `make test` also does.
    assert re.search(r"^run: .*\n\t\$\(BIN\)/analytics run$", makefile, re.MULTILINE)


@pytest.mark.parametrize("line", of_kind("synopsis")[0].text.splitlines() if of_kind("synopsis") else [])
def test_synopsis_commands_exist_with_their_options(line: str) -> None:
    from analytics.cli import main

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
def example_env(env: dict[str, str], web_server: str, service: Any, tmp_path: Path) -> dict[str, str]:
    """Environment of the examples: the test stack, `analytics` from this checkout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "analytics"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m analytics.cli \"$@\"\n")
    shim.chmod(0o755)
    environ = python_env(env)
    environ["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent),
                                       environ.get("PATH", "")])
    environ["KEY"] = service.create_api_key("admin", name="readme")[0]
    return environ


def localize(text: str, web_server: str) -> str:
    return text.replace("localhost:8000", web_server.removeprefix("http://"))


def run_block(block: Block, argv: list[str], environ: dict[str, str], cwd: Path) -> None:
    result = subprocess.run(argv, env=environ, cwd=cwd, capture_output=True, text=True,
                            timeout=240, check=False)
    assert result.returncode == 0, (
        f"{block} failed ({result.returncode}):\n{block.text}\n--- stdout\n{result.stdout[-2000:]}"
        f"\n--- stderr\n{result.stderr[-3000:]}")


def test_examples_run(example_env, web_server, worker, tmp_path, client, keys) -> None:
    """Every shell and python example, in README order, then what they sent is there."""
    ran = 0
    for block in blocks():
        text = localize(block.text, web_server)
        if block.kind == "shell":
            run_block(block, ["bash", "-c", "set -euo pipefail\n" + text], example_env, tmp_path)
        elif block.kind == "python":
            script = tmp_path / f"example_{block.line}.py"
            script.write_text(text + "\n")
            run_block(block, [sys.executable, str(script)], example_env, tmp_path)
        else:
            continue
        ran += 1
    assert ran >= 8

    def count(query: str) -> int:
        return len(client.get(f"/v1/events?{query}", headers=keys["read"]).json["events"])

    # curl's Segment track (42), the Segment SDK's (42) and RudderStack's (7).
    wait_until(lambda: count("type=Order+Completed") == 3, 30,
               message="the README's Segment calls to be stored")
    assert count("type=Order+Completed&properties.amount=gte:10") == 2
    assert count("type=page_view&userId=u-17") >= 1 and count("type=click&properties.button=buy") == 1
    assert count("type=identify") == 1 and count("type=page") == 1
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
