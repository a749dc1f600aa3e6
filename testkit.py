"""Real processes for the tests and the benchmarks: a private redis-server,
Celery workers, web servers. Every process is started here and stopped by
pid. Both ``tests/`` and ``bench/`` import it; neither imports the other."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from analytics import keyspace
from analytics.events import records
from web import create_app

ROOT = Path(__file__).resolve().parent
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def in_forked_child(run: Callable[[], object]) -> str:
    """``str(run())`` as computed in a forked child of this process (for
    what must differ after a fork: connections, pending counts)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, str(run()).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        return os.read(read, 4096).decode()
    finally:
        os.waitpid(pid, 0)
        os.close(read)


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, message: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


class Process:
    """A subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 30.0, after: int = 0) -> None:
        regex = re.compile(pattern)

        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            return bool(regex.search(self.log()[after:]))

        wait_until(seen, timeout, 0.1, f"{self.name} to log {pattern!r}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a Celery worker and its children)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(5)
        # Children of a killed group leader may linger: sweep the group.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None


class RedisServer:
    """A private redis-server on a free port, AOF on (fsync always, unless
    ``appendfsync`` says otherwise)."""

    def __init__(
        self, data_dir: Path, maxmemory: str | None = None, appendfsync: str = "always", replica_of: int | None = None
    ) -> None:
        self.port = free_port()
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            appendfsync,
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
        ]
        if maxmemory:
            argv += ["--maxmemory", maxmemory]
        if replica_of is not None:  # a replica of the server on that local port
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.process = Process(f"redis-{self.port}", argv, dict(os.environ), self.dir)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db))

    def start(self) -> RedisServer:
        self.process.start()

        def up() -> bool:
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        wait_until(up, 10, 0.05, "redis-server to answer")
        return self

    def stop(self) -> None:
        self.process.stop()


def rabbitmq_command(name: str) -> str:
    """``rabbitmq-server`` or ``rabbitmqctl``: Debian's ``/usr/sbin`` wrappers
    switch to the ``rabbitmq`` user when run as root (and refuse other
    users), so the scripts they call are preferred."""
    direct = Path("/usr/lib/rabbitmq/bin") / name
    found = str(direct) if direct.exists() else shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed (scripts/system-deps.sh installs rabbitmq-server)")
    return found


class RabbitServer:
    """A private rabbitmq-server: its own node name, AMQP and distribution
    ports (free ones, loopback only), data, logs, configuration, Erlang
    cookie and plugins (none), all under ``data_dir``; never the machine's
    own RabbitMQ. It registers with the machine's epmd (started if none
    runs, as every Erlang node does). Stopped by pid."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node = f"analytics_test_{self.port}@localhost"
        home = self.dir / "home"
        home.mkdir(exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(os.urandom(16).hex())
        cookie.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")  # not the machine's
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        self.env = {
            **os.environ,
            "HOME": str(home),  # the cookie rabbitmqctl and the node share
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid"),
        }
        self.process = Process(f"rabbitmq-{self.port}", [rabbitmq_command("rabbitmq-server")], self.env, self.dir)

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [rabbitmq_command("rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> RabbitServer:
        self.process.start()
        # Waits for the pid file, then for the broker application to run.
        done = self.ctl("wait", self.env["RABBITMQ_PID_FILE"], "--timeout", "60")
        if done.returncode != 0:
            self.stop()
            raise AssertionError(f"rabbitmq-server did not start:\n{done.stdout}{done.stderr}\n{self.process.log()}")
        return self

    def stop(self) -> None:
        self.process.stop(timeout=30)


def service_env(server: RedisServer, keys: str, **extra: str) -> dict[str, str]:
    """The environment of every process under test."""
    env = {
        "REDIS_URL": server.url(0),
        "CELERY_BROKER_URL": server.url(1),
        "ANALYTICS_ENCRYPTION_KEYS": keys,
        "ANALYTICS_DEV": "0",
        "ANALYTICS_CLAIM_IDLE_SECONDS": "2",
        "ANALYTICS_RECOVERY_INTERVAL": "1",
        "ANALYTICS_DRAIN_SECONDS": "2",
        "ANALYTICS_DRAIN_LINGER_SECONDS": "0.2",
        # Redis is emptied between tests while beat runs for the session:
        # checkpoints would call every later log wiped. Tests of the
        # checkpoints give their own file.
        "ANALYTICS_AUDIT_CHECKPOINTS": "",
        "ANALYTICS_REGISTRY_TTL": "0.2",
    }
    env.update(extra)
    return env


def python_env(base: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **base}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def celery_worker(name: str, env: dict[str, str], log_dir: Path, concurrency: int = 2) -> Process:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--without-mingle",
        "--without-gossip",
        "--hostname",
        f"{name}@%h",
    ]
    return Process(name, argv, env, log_dir)


def celery_beat(name: str, env: dict[str, str], log_dir: Path) -> Process:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks",
        "beat",
        "--loglevel",
        "INFO",
        "--schedule",
        str(log_dir / f"{name}-schedule"),
    ]
    return Process(name, argv, env, log_dir)


def start_worker(name: str, env: dict[str, str], log_dir: Path, concurrency: int = 2) -> Process:
    worker = celery_worker(name, env, log_dir, concurrency).start()
    worker.wait_for_log(r"ready\.", timeout=60)
    return worker


class Stack:
    """A private Redis, Celery worker(s) and beat, for tests that break things."""

    def __init__(self, root: Path, keys: str, **env: str) -> None:

        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(root / "redis").start()
        self.env = service_env(self.redis, keys, **env)
        self.processes: list[Process] = []
        self._n = 0

    def worker(self, concurrency: int = 2, wait: bool = True) -> Process:
        self._n += 1
        proc = celery_worker(f"worker{self._n}", python_env(self.env), self.root, concurrency).start()
        self.processes.append(proc)
        if wait:
            proc.wait_for_log(r"ready\.", timeout=60)
        return proc

    def beat(self, name: str = "beat") -> Process:
        proc = celery_beat(name, python_env(self.env), self.root).start()
        self.processes.append(proc)
        return proc

    def app(self) -> Any:

        return create_app({**self.env, "TESTING": True})

    def close(self) -> None:
        for proc in self.processes:
            proc.stop()
        self.redis.stop()
        ARTIFACTS.mkdir(exist_ok=True)
        for log in self.root.glob("*.log"):
            (ARTIFACTS / f"{self.root.name}-{log.name}").write_bytes(log.read_bytes())


def stored_events(client: redis.Redis) -> int:
    """Events in the store now (its counter, ``analytics:events:count``):
    what the tests wait for after ingesting."""
    return int(client.get("analytics:events:count") or 0)


def records_in(client: redis.Redis, event_type: str) -> list[dict[str, Any]]:
    """The stored records of ``event_type``, read page by page."""

    return [
        records.unpack_fields(event_type, fields)
        for _, page in client.hscan_iter(keyspace.processed(event_type))
        for fields in records.iter_blobs(page)
    ]


def pages_indexed(client: redis.Redis, event_type: str) -> bool:
    """Every page of ``event_type`` is in its time index, and only those."""

    pages = {p for p, _ in client.hscan_iter(keyspace.processed(event_type))}
    return pages == set(client.zrange(keyspace.time_index(event_type), 0, -1))


def gunicorn_workers(master: int) -> list[int]:
    """The gunicorn workers of arbiter ``master`` (its child processes)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name, in parentheses, may hold spaces: split after it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        if int(fields[1]) == master:
            pids.append(int(stat.parent.name))
    return pids


def connections_held(workers: list[int], port: int) -> dict[int, int]:
    """How many established connections to local ``port`` each of
    ``workers`` holds (from /proc: which process owns each socket)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    counts = {}
    for pid in workers:
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                held += os.readlink(fd) in inodes
            except OSError:  # closed while we looked
                continue
        counts[pid] = held
    return counts


def keep_alive_connection(port: int) -> socket.socket:
    """A client connection to gunicorn that has had one answer and stays open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    return sock


def wait_for_workers(workers: list[int], port: int, timeout: float = 60.0) -> None:
    """Until each of gunicorn's ``workers`` has accepted a connection:
    /healthz answering means that one worker has loaded the app, not all."""
    seen: set[int] = set()

    def all_seen() -> bool:
        with keep_alive_connection(port):
            seen.update(pid for pid, n in connections_held(workers, port).items() if n)
        return seen == set(workers)

    wait_until(all_seen, timeout, 0.1, "every gunicorn worker to accept")
    wait_until(lambda: not any(connections_held(workers, port).values()), 10, 0.05, "the probe connections to close")
