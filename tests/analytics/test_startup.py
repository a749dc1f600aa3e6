"""Without encryption keys (outside dev mode) every process refuses to start
with one clear line and no traceback; dev mode starts with a loud warning."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from analytics.startup import start_process
from testkit import ROOT, free_port, python_env
from web import create_app

MESSAGE = "ANALYTICS_ENCRYPTION_KEYS is not set: refusing to start"


def no_keys(env: dict[str, str]) -> dict[str, str]:
    out = python_env({k: v for k, v in env.items() if k != "ANALYTICS_ENCRYPTION_KEYS"})
    out.pop("ANALYTICS_ENCRYPTION_KEYS", None)
    out["ANALYTICS_DEV"] = "0"
    return out


def test_create_app_exits_with_one_line(env) -> None:

    config = {k: v for k, v in env.items() if k != "ANALYTICS_ENCRYPTION_KEYS"}
    with pytest.raises(SystemExit) as exc:
        create_app({**config, "ANALYTICS_ENCRYPTION_KEYS": "", "TESTING": True})
    text = str(exc.value.code)
    assert text.startswith("analytics web: ") and MESSAGE in text and "\n" not in text


def test_dev_mode_starts_with_a_loud_warning(env, caplog) -> None:

    with caplog.at_level(logging.WARNING):
        app = create_app({**env, "ANALYTICS_ENCRYPTION_KEYS": "", "ANALYTICS_DEV": "1", "TESTING": True})
    assert app.extensions["analytics"].vault is not None
    assert "DEVELOPMENT MODE" in caplog.text and "NOT protected" in caplog.text


@pytest.mark.parametrize(
    "process, argv",
    [
        ("cli", [sys.executable, "-m", "cli.main", "keys", "list"]),
        ("web", [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "web:create_app()"]),
        (
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks",
                "worker",
                "--concurrency",
                "1",
                "--without-mingle",
                "--without-gossip",
            ],
        ),
        ("beat", [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--schedule", "{tmp}/schedule"]),
    ],
)
def test_processes_refuse_to_start_without_keys(env, process, argv, tmp_path) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    environ = {**no_keys(env), "PORT": str(free_port())}
    done = subprocess.run(argv, env=environ, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    output = (done.stdout + done.stderr).strip()
    assert "Traceback" not in output, output
    expected = "error: " if process == "cli" else f"analytics {process}: "
    last = output.splitlines()[-1]
    # beat prints through its own logger (a "[time: WARNING/MainProcess]" prefix)
    assert expected in last and MESSAGE in last, output


FREEZE_CHECK = """
import gc, sys, weakref

class Node:
    pass

garbage = Node()
garbage.self = garbage  # a cycle only a collection frees
gone = weakref.ref(garbage)
del garbage
before = gc.get_freeze_count()
{start}
assert gone() is None, "start-up garbage was frozen, not freed"
assert gc.get_freeze_count() > before + 1000, gc.get_freeze_count()
print("frozen", gc.get_freeze_count())
"""


@pytest.mark.parametrize(
    "start",
    [
        # gunicorn's hook, once the worker has loaded the app
        "import runpy; runpy.run_path('gunicorn.conf.py')['post_worker_init'](None)",
        # Celery's signal in each pool process
        "import tasks.celery; from celery import signals; signals.worker_process_init.send(sender=None)",
    ],
)
def test_processes_freeze_their_startup_heap(start: str) -> None:
    """Web and worker processes take what they loaded at start out of the
    collector's full passes (bench/HISTORY.rst, 2026-11-29: 20-30 ms pauses)."""
    out = subprocess.run(
        [sys.executable, "-c", FREEZE_CHECK.format(start=start)],
        cwd=ROOT,
        env=python_env({"ANALYTICS_DEV": "1"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("frozen")


WRONG_HASH = "the user hash key is not the one the stored data was written with"


@pytest.mark.parametrize(
    "process, argv",
    [
        ("web", [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "web:create_app()"]),
        (
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks",
                "worker",
                "--concurrency",
                "1",
                "--without-mingle",
                "--without-gossip",
            ],
        ),
        ("beat", [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--schedule", "{tmp}/schedule"]),
    ],
)
def test_processes_refuse_keys_that_do_not_fit_the_stored_data(
    redis_server, encryption_keys, process, argv, tmp_path
) -> None:
    """Fingerprints stored by a start under the configured keys; the same
    process started with the oldest key dropped (no ANALYTICS_HASH_KEY: the
    user hash key changes) refuses with one line."""
    db = redis_server.client(7)
    db.flushdb()
    base = {"REDIS_URL": redis_server.url(7), "CELERY_BROKER_URL": redis_server.url(8), "ANALYTICS_DEV": "0"}
    start_process(process, environ={**base, "ANALYTICS_ENCRYPTION_KEYS": encryption_keys}, own_handler=False)
    newest = encryption_keys.split(",")[0]
    environ = python_env({**base, "ANALYTICS_ENCRYPTION_KEYS": newest, "PORT": str(free_port())})
    environ.pop("ANALYTICS_HASH_KEY", None)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        done = subprocess.run(argv, env=environ, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    finally:
        db.flushdb()
    assert done.returncode != 0
    output = (done.stdout + done.stderr).strip()
    assert "Traceback" not in output, output
    last = output.splitlines()[-1]
    assert f"analytics {process}: " in last and WRONG_HASH in last, output
