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

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

from bench.harness import APPS, bearer, create_key, event_batch, json_bytes, post_load, stack
from testkit import gunicorn_workers, wait_until


def _total(dump: Path) -> int | None:
    """The instruction total of a callgrind dump; None until it is written."""
    if not dump.exists():
        return None
    found = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.MULTILINE)
    return int(found.group(1)) if found else None


def count(app_name: str, requests: int, warm_up: int = 200) -> float:
    """Instructions per request of ``app_name`` (``ours`` or ``bare``) in its
    gunicorn worker."""
    with stack(web_workers=1) as s:
        # --trace-children: only then does callgrind_control find the
        # worker gunicorn forks.
        valgrind = (
            "valgrind",
            "--tool=callgrind",
            "--trace-children=yes",
            f"--callgrind-out-file={s.dir}/callgrind.%p",
        )
        web = s.start_web(APPS[app_name], wrapper=valgrind, timeout=600)
        (worker,) = gunicorn_workers(web.pid)
        headers = bearer(create_key(s.env, "ingest")) if app_name == "ours" else {"Content-Type": "application/json"}
        bodies = [json_bytes(e) for e in event_batch(warm_up + requests, "one")]
        post_load(s.port, "/v1/events", headers, bodies[:warm_up], 2, 900)
        subprocess.run(["callgrind_control", "--zero", str(worker)], check=True, capture_output=True)
        load = post_load(s.port, "/v1/events", headers, bodies[warm_up:], 2, 1800)
        subprocess.run(["callgrind_control", "--dump", str(worker)], check=True, capture_output=True)
        if load["errors"] or load["requests"] != requests:
            raise RuntimeError(f"{app_name}: {load['errors']} errors in {load['requests']} requests")
        dump = s.dir / f"callgrind.{worker}.1"
        wait_until(lambda: _total(dump) is not None, 60, 0.5, "callgrind's dump")
        return cast(int, _total(dump)) / requests


def run(quick: bool = False) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind is not installed (Debian package valgrind)"}
    requests, warm_up = (20, 20) if quick else (1000, 300)
    out: dict[str, Any] = {f"{name}_per_request": count(name, requests, warm_up) for name in APPS}
    out["ratio_vs_bare"] = out["ours_per_request"] / out["bare_per_request"]
    return out
