"""``analytics export`` and ``analytics import`` with click's CliRunner,
against the test Redis and the session's worker."""

from __future__ import annotations

import csv
import io
import os
import stat
import threading
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from cli import transfer
from cli.main import main
from testkit import stored_events, wait_until


@pytest.fixture
def run_cli(env: dict[str, str]) -> Any:
    def run(*args: str, input: str | bytes | None = None, environ: dict[str, str] | None = None) -> Any:
        return CliRunner(env=environ or env).invoke(main, list(args), input=input, catch_exceptions=False)

    return run


def stored(data: Any) -> int:
    return stored_events(data)


@pytest.fixture
def some_events(service, data, worker) -> list[dict[str, Any]]:
    events = [
        {
            "type": "click" if i % 2 else "page_view",
            "userId": f"u-{i % 3}",
            "messageId": f"m{i:02d}",
            "timestamp": 1_790_000_000 + i,
            "properties": {"n": i, "plan": "pro" if i < 4 else "free", "email": f"p{i}@example.org"},
        }
        for i in range(12)
    ]
    # Only declared fields stay clear, and only those filter (--where).
    service.registry.register("click", clear=("properties.n", "properties.plan"))
    assert service.events.track_many(events).accepted == 12
    wait_until(lambda: stored(data) == 12, 15, message="12 stored events")
    return events


def lines(output: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in output.splitlines() if line]


def test_export_ndjson_to_stdout_with_filters_and_an_audit_entry(run_cli, some_events, service) -> None:
    result = run_cli("export", "--type", "click", "--user", "u-1", "--where", "n=gte:3")
    assert result.exit_code == 0, result.output
    exported = lines(result.stdout)
    assert [e["messageId"] for e in exported] == ["m07"]  # click, u-1, n >= 3
    assert exported[0]["properties"]["email"] == "p7@example.org"  # decrypted
    assert "exporting" in result.stderr  # the progress bar (a label when not a terminal)
    assert "exported 1 events to standard output" in result.stderr
    [entry] = [e for e in service.audit.entries() if e["action"] == "events.export"]
    assert entry["actor"] == "cli" and entry["count"] == 1
    assert "u-1" not in orjson.dumps(entry).decode()
    assert entry["filters"]["user"] == service.codec.user_hash("u-1")
    assert entry["filters"]["properties"] == ["n"]


def test_export_pages_through_everything(run_cli, some_events, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(transfer, "PAGE_SIZE", 5)  # 12 events: three pages
    target = tmp_path / "all.ndjson"
    result = run_cli("export", "--output", str(target), "--quiet")
    assert result.exit_code == 0 and result.stderr == ""
    exported = lines(target.read_text())
    assert sorted(e["messageId"] for e in exported) == [f"m{i:02d}" for i in range(12)]
    timestamps = [e["timestamp"] for e in exported]
    assert timestamps == sorted(timestamps, reverse=True)  # newest first


def test_csv_export_imports_back_identically(run_cli, some_events, data, tmp_path, service) -> None:
    target = tmp_path / "events.csv"
    assert run_cli("export", "-o", str(target)).exit_code == 0
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 12 and orjson.loads(rows[0]["properties"])["plan"] in ("pro", "free")
    before = {e["messageId"]: e for e in lines(run_cli("export", "-q").stdout)}

    data.flushdb()
    result = run_cli("import", str(target))
    assert result.exit_code == 0, result.output
    assert "imported 12 events, rejected 0" in result.stdout
    wait_until(lambda: stored(data) == 12, 15, message="the imported events to be stored")
    after = {e["messageId"]: e for e in lines(run_cli("export", "-q").stdout)}
    assert after.keys() == before.keys()
    for message_id, event in before.items():
        for name in ("type", "userId", "timestamp", "properties", "priority"):
            assert after[message_id][name] == event[name]
    # Importing the same file again stores nothing new: messageIds dedupe.
    assert run_cli("import", str(target), "-q").exit_code == 0
    wait_until(lambda: service.queue.length() == 0, 15, message="the queue to drain")
    assert stored(data) == 12


def test_import_reports_bad_lines_by_number_without_values(run_cli, data, worker) -> None:
    rows = [
        '{"type": "click", "userId": "u-1", "properties": {"ssn": "123-45-6789"}}',
        '{"type": "click", "userId": "u-1", "ssn": "123-45-6789"}',
        "",
        "{not json 123-45-6789",
        '{"type": "nope", "userId": "u-1"}',
        '{"type": "login", "anonymousId": "a"}',
    ]
    source = "\n".join(rows) + "\n"
    result = run_cli("import", "-", "--format", "ndjson", input=source)
    assert result.exit_code == 1
    assert "imported 2 events, rejected 3" in result.stdout
    assert "line 2: ssn:" in result.stderr and "line 4: _schema: Not valid JSON." in result.stderr
    assert "line 5: type:" in result.stderr
    assert "123-45-6789" not in result.output
    wait_until(lambda: stored(data) == 2, 15, message="the 2 valid events to be stored")


def test_import_csv_with_a_subset_of_columns(run_cli, data, worker, tmp_path) -> None:
    target = tmp_path / "in.csv"
    target.write_text('type,userId,properties\nclick,u-1,"{""a"": 1}"\nclick,,\nlogin,u-2,{oops\n')
    result = run_cli("import", str(target))
    assert result.exit_code == 1
    assert "imported 1 events, rejected 2" in result.stdout
    assert "line 3: userId:" in result.stderr and "line 4: properties: Not valid JSON." in result.stderr


def test_import_waits_while_the_queue_is_full(run_cli, make_stack, tmp_path) -> None:
    stack = make_stack()  # no worker yet: nothing drains the queue
    source = tmp_path / "many.ndjson"
    source.write_bytes(
        b"".join(orjson.dumps({"type": "click", "userId": "u", "messageId": f"x{i}"}) + b"\n" for i in range(40))
    )
    result = run_cli(
        "import", str(source), "--batch-size", "5", "--max-queue", "2", "--max-wait", "0.5", environ=stack.env
    )
    assert result.exit_code == 1
    assert "queue stayed above 2 entries" in result.stderr and "worker" in result.stderr
    service = stack.app().extensions["analytics"]
    # Bounded: batches of 5 events, one entry each, until more than 2 entries wait.
    assert service.queue.length() == 3

    outcome: dict[str, Any] = {}

    def run_import() -> None:
        outcome["result"] = run_cli(
            "import", str(source), "--batch-size", "5", "--max-queue", "2", "--max-wait", "120", environ=stack.env
        )

    thread = threading.Thread(target=run_import)
    thread.start()
    stack.worker()
    stack.beat()
    thread.join(150)
    result = outcome["result"]
    assert result.exit_code == 0, result.output
    assert "imported 40 events, rejected 0" in result.stdout and "waiting:" in result.stderr
    wait_until(lambda: stored_events(service.redis) == 40, 30, message="all 40 events stored once")


@pytest.mark.parametrize(
    "args",
    [
        ["export", "--format", "xml"],
        ["export", "--where", "no-equals-sign"],
        ["import"],
        ["import", "x.ndjson", "--batch-size", "0"],
    ],
)
def test_usage_errors_exit_2(run_cli, args) -> None:
    assert run_cli(*args).exit_code == 2


def test_bad_filters_and_missing_files_exit_1_with_one_line(run_cli, tmp_path) -> None:
    result = run_cli("export", "--where", "email=x@example.org")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "properties.email" in result.stderr and "x@example.org" not in result.stderr
    assert run_cli("import", str(tmp_path / "missing.ndjson")).exit_code == 2


def test_redis_down_is_one_clear_line(run_cli, env) -> None:
    result = run_cli("export", environ={**env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["error: Redis at REDIS_URL failed (ConnectionError): is it running?"]


def test_export_files_are_created_readable_by_their_owner_only(run_cli, some_events, tmp_path) -> None:
    """An export holds PHI in clear: 0600 whatever the umask, also when it
    replaces a file that was readable by others; no temporary file left."""
    old_umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.ndjson"
        assert run_cli("export", "-o", str(fresh), "-q").exit_code == 0
        existing = tmp_path / "existing.csv"
        existing.write_text("old\n")
        existing.chmod(0o644)
        assert run_cli("export", "-o", str(existing), "-q").exit_code == 0
    finally:
        os.umask(old_umask)
    for path in (fresh, existing):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, oct(os.stat(path).st_mode)
    assert len(lines(fresh.read_text())) == 12
    assert existing.read_text().startswith("id,messageId,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.csv", "fresh.ndjson"]
