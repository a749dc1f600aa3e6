"""``analytics run``: the whole service on one machine, for development.

Starts a local ``redis-server`` (AOF on) when ``REDIS_URL`` answers nowhere
and points at this machine, then runs the Procfile's processes with honcho.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

from analytics import Analytics, Settings
from analytics.errors import AnalyticsError

RUN_DIR = Path(".run")
#: prctl(2) option: orphaned descendants are reparented to this process.
PR_SET_CHILD_SUBREAPER = 36


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


def _port_taken(port: int) -> bool:
    """Whether something listens on ``port`` (any address) already."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _descendants(pid: int) -> list[int]:
    """Pids below ``pid``. honcho starts each process in a session of its
    own, so a process-group kill would miss them: they are found by
    parent pid instead (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _dev_admin_key(app: Analytics) -> str:
    """The development admin key: the one an earlier start saved in
    ``.run/dev-admin-key`` while it still works, else a new one (saved,
    0600). Every start would otherwise add another unrevoked admin key."""
    saved = RUN_DIR / "dev-admin-key"
    if saved.exists():
        secret = saved.read_text().strip()
        try:
            app.access.authenticate(secret)
            return secret
        except AnalyticsError:
            pass  # revoked, or another Redis: make a new one
    secret, _ = app.access.create("admin", name="dev-admin (analytics run)")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


def _become_subreaper() -> None:
    """Adopt our orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``): when
    the terminal closes, honcho may die of its SIGHUP before stopping its
    processes, and they must still be found (and stopped) below us."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _stop(honcho: subprocess.Popen[bytes], keep: set[int]) -> None:
    """Stop honcho and everything it started, by pid: gunicorn, Celery's
    worker (and its pool), beat, Flower. Whatever is still there after the
    grace period is killed, so no process keeps holding a port. ``keep``:
    pids to leave to the caller (the local redis-server)."""
    pids = [p for p in _descendants(os.getpid()) if p not in keep]
    if honcho.poll() is None:
        honcho.send_signal(signal.SIGTERM)
    try:
        honcho.wait(timeout=15)
    except subprocess.TimeoutExpired:
        honcho.kill()
        honcho.wait()
    pids += [p for p in _descendants(os.getpid()) if p not in pids and p not in keep]
    deadline = time.monotonic() + 10
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class _Stopped(Exception):
    """SIGTERM or SIGHUP (the terminal closed) reached ``analytics run``."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signum)


def run_dev(port: int | None = None, flower: bool = True) -> int:
    settings = Settings.from_env()
    env = dict(os.environ)
    env["PORT"] = str(port or env.get("PORT") or 8000)
    env.setdefault("FLOWER_PORT", "5555")
    # The Procfile names gunicorn and celery: the ones installed beside this
    # Python (make run's .venv), whether or not that venv is activated.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    for name in ("PORT", *(["FLOWER_PORT"] if flower else [])):
        if _port_taken(int(env[name])):
            _say(f"port {env[name]} ({name}) is in use: stop what holds it, or set {name}")
            return 1
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
    secret = _dev_admin_key(app)
    app.redis.close()
    _say(f"dashboard and API at http://127.0.0.1:{env['PORT']}/")
    _say(f"development admin key: {secret} (also in {RUN_DIR / 'dev-admin-key'})")
    if flower and not env.get("FLOWER_BASIC_AUTH"):
        # Flower refuses to start without authentication (flowerconfig.py).
        env["FLOWER_BASIC_AUTH"] = f"admin:{secrets.token_urlsafe(12)}"
        _say(f"Flower at http://127.0.0.1:{env['FLOWER_PORT']}/ (user:password {env['FLOWER_BASIC_AUTH']})")
    names = ["web", "worker", "beat"] + (["flower"] if flower else [])
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    _become_subreaper()
    honcho = subprocess.Popen([sys.executable, "-m", "honcho", "start", *names], env=env)
    try:
        return honcho.wait()
    except (KeyboardInterrupt, _Stopped):
        return 0
    finally:
        _stop(honcho, keep={redis_proc.pid} if redis_proc is not None else set())
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
