"""``analytics run``: the whole service on one machine, for development.

Starts a local ``redis-server`` (AOF on) when ``REDIS_URL`` answers nowhere
and points at this machine, then runs the Procfile's processes with honcho.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from analytics import Analytics, Settings

RUN_DIR = Path(".run")


def _say(message: str) -> None:
    print(f"analytics run: {message}", flush=True)


def _reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _install_redis() -> bool:
    if shutil.which("redis-server"):
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        _say("redis-server is not installed; install it (apt-get install redis-server) or set REDIS_URL")
        return False
    _say("redis-server is not installed: installing it with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env)
    return subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], env=env).returncode == 0


def start_local_redis(url: str) -> subprocess.Popen[bytes] | None:
    """Start redis-server for ``url`` with AOF on, data under ``.run/redis``."""
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1") or not _install_redis():
        return None
    port = parsed.port or 6379
    data = RUN_DIR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str((data / "redis.log").resolve()),
        ]
    )
    for _ in range(50):
        if _reachable(url):
            _say(f"started a local redis-server on port {port} (pid {proc.pid}, AOF on, data in {data})")
            return proc
        time.sleep(0.1)
    proc.terminate()
    return None


def run_dev(port: int | None = None, flower: bool = True) -> int:
    settings = Settings.from_env()
    env = dict(os.environ)
    env["PORT"] = str(port or env.get("PORT") or 8000)
    redis_proc = None
    if not _reachable(settings.redis_url):
        _say(f"nothing answers at {settings.redis_url}")
        redis_proc = start_local_redis(settings.redis_url)
        if redis_proc is None:
            _say("could not start Redis; set REDIS_URL to a reachable server")
            return 1
    if not settings.encryption_keys:
        env["ANALYTICS_DEV"] = "1"
        _say(
            "!!! DEVELOPMENT MODE: no ANALYTICS_ENCRYPTION_KEYS, PHI is sealed with a "
            "well-known key. Never put real data in this instance. !!!"
        )
    app = Analytics.create(Settings.from_env(env))
    secret, _ = app.access.create("admin", name="dev-admin (analytics run)")
    _say(f"dashboard and API at http://127.0.0.1:{env['PORT']}/")
    _say(f"development admin key: {secret}")
    if flower and not env.get("FLOWER_BASIC_AUTH"):
        # Flower refuses to start without authentication (flowerconfig.py).
        env["FLOWER_BASIC_AUTH"] = f"admin:{secrets.token_urlsafe(12)}"
        _say(f"Flower at http://127.0.0.1:{env.get('FLOWER_PORT', '5555')}/ (user:password {env['FLOWER_BASIC_AUTH']})")
    names = ["web", "worker", "beat"] + (["flower"] if flower else [])
    honcho = subprocess.Popen([sys.executable, "-m", "honcho", "start", *names], env=env)
    try:
        return honcho.wait()
    except KeyboardInterrupt:
        honcho.send_signal(signal.SIGINT)
        return honcho.wait()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
