"""Instructions per single-event ``POST /v1/events``, ours against the bare
endpoint, counted by valgrind's callgrind (``make bench BENCH_ARGS="--only
instructions"``).

Throughput on shared cores moves by a third between runs; an instruction
count does not (about 0.5% here). Each app runs in its own process against a
private Redis, called through WSGI (no gunicorn, no sockets to it): the same
requests as the ingest bench, a warm-up, then only the measured requests are
counted (callgrind collects inside ``functools.reduce``, which nothing else
on the path calls). It counts what the web process executes in user space,
not the kernel's share nor Redis's; the load ratio of the ingest bench
followed its inverse within a few percent in every variant tried.
Needs ``valgrind`` (Debian package, installed by ``scripts/system-deps.sh``;
without it the suite notes the skip); about a minute per app.
"""
from __future__ import annotations

import argparse
import functools
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.harness import create_key, event_batch, json_bytes, service_settings
from tests.support import ROOT, RedisServer

APPS = {"ours": "web:create_app", "bare": "bench.bare:create_app"}


def _serve(app_name: str, requests: int, warm_up: int) -> None:
    """In the measured process: build the app, warm it, run the requests."""
    with tempfile.TemporaryDirectory(prefix="analytics-instr-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        try:
            env = service_settings(redis)
            os.environ.update(env)
            module, factory = APPS[app_name].split(":")
            app = getattr(__import__(module, fromlist=[factory]), factory)()
            headers = {"HTTP_AUTHORIZATION": f"Bearer {create_key(env, 'ingest')}"} if app_name == "ours" else {}
            statuses: list[str] = []

            def post(body: bytes) -> None:
                environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/events", "SCRIPT_NAME": "",
                           "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
                           "SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_TYPE": "application/json",
                           "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1",
                           "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
                           "wsgi.errors": sys.stderr, "wsgi.multithread": True,
                           "wsgi.multiprocess": True, "wsgi.run_once": False,
                           "wsgi.version": (1, 0), **headers}
                answer = app(environ, lambda status, _headers, _exc=None: statuses.append(status))
                b"".join(answer)
                getattr(answer, "close", lambda: None)()

            bodies = [json_bytes(e) for e in event_batch(warm_up + requests, "one")]
            for body in bodies[:warm_up]:
                post(body)
            functools.reduce(lambda _, body: post(body), bodies[warm_up:], None)  # counted
            if any(not s.startswith("202") for s in statuses):
                raise SystemExit(f"{app_name}: not every request was accepted: {set(statuses)}")
        finally:
            redis.stop()


def count(app_name: str, requests: int, warm_up: int = 200) -> float:
    """Instructions per request of ``app_name`` (``ours`` or ``bare``)."""
    with tempfile.TemporaryDirectory(prefix="analytics-callgrind-") as tmp:
        argv = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
                "--toggle-collect=functools_reduce", f"--callgrind-out-file={tmp}/out",
                sys.executable, "-m", "bench.instructions", "--serve", app_name,
                "--requests", str(requests), "--warm-up", str(warm_up)]
        # Multiprocess metrics, as under gunicorn. Their directory outlives
        # the measured process: its metrics thread may still write there
        # while the process cleans up after itself.
        os.mkdir(f"{tmp}/prometheus")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": f"{tmp}/prometheus"}
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        found = re.search(r"Collected : ([\d,]+)", done.stderr)
        if done.returncode != 0 or not found:
            raise RuntimeError(f"callgrind run of {app_name} failed:\n{done.stderr[-3000:]}")
        return int(found.group(1).replace(",", "")) / requests


def run(quick: bool = False) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind is not installed (Debian package valgrind)"}
    requests, warm_up = (20, 20) if quick else (300, 200)
    out: dict[str, Any] = {f"{name}_per_request": count(name, requests, warm_up) for name in APPS}
    out["ratio_vs_bare"] = out["ours_per_request"] / out["bare_per_request"]
    return out


if __name__ == "__main__":  # the measured process of count()
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", choices=sorted(APPS), required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--warm-up", type=int, required=True)
    args = parser.parse_args()
    _serve(args.serve, args.requests, args.warm_up)
