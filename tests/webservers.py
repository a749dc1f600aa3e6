"""Real HTTP servers for the tests: gunicorn, exactly as the Procfile runs it
(``gunicorn.conf.py``), bound to 127.0.0.1 on a free port."""

from __future__ import annotations

import sys
from pathlib import Path

import requests

from testkit import Process, free_port, python_env, wait_until


class WebServer:
    """``gunicorn --config gunicorn.conf.py web:create_app()`` on a free port."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, workers: int = 1, threads: int = 32) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        argv = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            "gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--no-control-socket",
            "web:create_app()",
        ]
        self.process = Process(name, argv, python_env(env), log_dir)

    def start(self) -> WebServer:
        self.process.start()

        def up() -> bool:
            if self.process.proc is not None and self.process.proc.poll() is not None:
                raise AssertionError(f"{self.process.name} exited:\n{self.process.log()[-3000:]}")
            try:
                return requests.get(self.url + "/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, 30, 0.1, f"{self.process.name} to answer")
        return self

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> WebServer:
        """Stop (SIGTERM) and start again on the same port."""
        self.stop()
        return self.start()


def chromium_args() -> list[str]:
    """Flags for Debian's headless chromium in a container, no network chatter."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
    ]
