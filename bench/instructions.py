"""Instructions per single-event ``POST /v1/events``, ours against the bare
endpoint, counted by valgrind's callgrind (``make bench BENCH_ARGS="--only
instructions"``).

Throughput on shared cores moves by a third between runs; an instruction
count does not. Each app is served as in production, by gunicorn (one
worker, ``gunicorn.conf.py``) under callgrind, against a private Redis; the
bench's load generator sends the same requests as the ingest bench over two
keep-alive connections. After a warm-up the worker's counters are zeroed,
the measured requests sent, and the worker's instructions in all its
threads (request threads, gunicorn's loop, ours' metrics thread) divided by
the requests. It counts what the web process executes in user space, not
the kernel's share nor Redis's. Serving through gunicorn matters: werkzeug
reads a body differently when the server ends its stream, which a bare WSGI
call never showed (``web.body``).

Under callgrind the worker runs some fifty times slower, so what it does
once a second (ours: the request-metrics flush and the event types'
refresh) counts in fifty times as often as when serving at full speed:
about 1% of ours. Needs ``valgrind`` (Debian package, installed by
``scripts/system-deps.sh``; without it the suite notes the skip); about a
minute per app.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

from bench.harness import (
    APPS,
    _get,
    bearer,
    create_key,
    event_batch,
    json_bytes,
    post_load,
    service_settings,
)
from tests.support import ROOT, RedisServer, free_port, gunicorn_workers, python_env, wait_until


def _total(dump: Path) -> int | None:
    """The instruction total of a callgrind dump; None until it is written."""
    if not dump.exists():
        return None
    found = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.MULTILINE)
    return int(found.group(1)) if found else None


def count(app_name: str, requests: int, warm_up: int = 200) -> float:
    """Instructions per request of ``app_name`` (``ours`` or ``bare``) in its
    gunicorn worker."""
    with tempfile.TemporaryDirectory(prefix="analytics-callgrind-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        server = None
        try:
            settings = service_settings(redis)
            port = free_port()
            os.mkdir(f"{tmp}/prometheus")
            env = python_env({**settings, "PROMETHEUS_MULTIPROC_DIR": f"{tmp}/prometheus"})
            # --trace-children: only then does callgrind_control find the
            # worker gunicorn forks.
            argv = ["valgrind", "--tool=callgrind", "--trace-children=yes",
                    f"--callgrind-out-file={tmp}/callgrind.%p",
                    sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"),
                    "--workers", "1", "--bind", f"127.0.0.1:{port}", APPS[app_name]]
            with open(f"{tmp}/gunicorn.log", "wb") as log:
                server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log,
                                          start_new_session=True)
            wait_until(lambda: _get(port, "/healthz") == 200, 600, 1.0, "gunicorn under callgrind")
            (worker,) = gunicorn_workers(server.pid)
            headers = (bearer(create_key(settings, "ingest")) if app_name == "ours"
                       else {"Content-Type": "application/json"})
            bodies = [json_bytes(e) for e in event_batch(warm_up + requests, "one")]
            post_load(port, "/v1/events", headers, bodies[:warm_up], 2, 900)
            subprocess.run(["callgrind_control", "--zero", str(worker)], check=True, capture_output=True)
            load = post_load(port, "/v1/events", headers, bodies[warm_up:], 2, 1800)
            subprocess.run(["callgrind_control", "--dump", str(worker)], check=True, capture_output=True)
            if load["errors"] or load["requests"] != requests:
                raise RuntimeError(f"{app_name}: {load['errors']} errors in {load['requests']} requests")
            dump = Path(f"{tmp}/callgrind.{worker}.1")
            wait_until(lambda: _total(dump) is not None, 60, 0.5, "callgrind's dump")
            return cast(int, _total(dump)) / requests
        finally:
            if server is not None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()
            redis.stop()


def run(quick: bool = False) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind is not installed (Debian package valgrind)"}
    requests, warm_up = (20, 20) if quick else (1000, 300)
    out: dict[str, Any] = {f"{name}_per_request": count(name, requests, warm_up) for name in APPS}
    out["ratio_vs_bare"] = out["ours_per_request"] / out["bare_per_request"]
    return out
