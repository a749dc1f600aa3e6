"""The Redis client: its command packer sends what redis-py's own would;
its pool and the dedicated connections of the hot path."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import hiredis
import pytest
import redis
from redis.connection import HiredisRespSerializer

from analytics.errors import ConfigurationError
from analytics.pipeline.admission import Verdict
from analytics.redis_client import CommandPacker, DedicatedConnections, connect
from analytics.settings import Settings
from testkit import in_forked_child


@pytest.mark.parametrize(
    "args",
    [
        ("SET", "key", "value"),
        ("EVALSHA", "ab" * 20, 3, "k1", b"k2", "k3", 1, 2.5, 1764379200123, -7, b"\x00\xff blob"),
        ("HSET", "h", "f", memoryview(b"view")),
        ("XADD", "s", "*", "r", bytearray(b"\x93\x01\x02\x03")),  # redis-py turns it into bytes
        ("CLIENT SETNAME", "name"),  # a command name of two words
        (b"PING",),
        ("SET", "k", "x" * 100_000),
    ],
)
def test_packs_the_bytes_redis_py_packs(args: tuple[Any, ...]) -> None:
    assert b"".join(CommandPacker().pack(*args)) == b"".join(HiredisRespSerializer().pack(*args))


@pytest.mark.parametrize("value", [None, True, object()])
def test_refuses_what_redis_py_refuses(value: Any) -> None:
    with pytest.raises(redis.DataError):
        HiredisRespSerializer().pack("SET", "k", value)
    with pytest.raises(redis.DataError):
        CommandPacker().pack("SET", "k", value)


def test_the_service_client_uses_it(service: Any) -> None:
    client = service.redis
    assert isinstance(client.connection_pool.connection_kwargs["command_packer"], CommandPacker)
    client.set("packed", bytearray(b"a b"))
    assert client.get("packed") == b"a b"
    assert connect(service.settings).pipeline().set("p", 1).get("p").execute() == [True, b"1"]


def test_threads_beyond_the_pool_wait_for_a_connection_instead_of_failing(service: Any) -> None:
    """A web process runs WEB_THREADS (128) request threads and one per
    WebSocket; redis-py 8's default pool refuses a connection beyond 100 at
    once (``MaxConnectionsError``: a 503, or a stream's audit entry lost).
    Ours caps the connections and makes the extra threads wait their turn."""
    client = connect(service.settings)
    threads = 150
    start = threading.Barrier(threads)
    replies: list[Any] = []

    def hold_a_connection() -> None:
        start.wait()
        replies.append(client.blpop(["never-pushed"], timeout=0.2))  # its connection for 0.2 s

    workers = [threading.Thread(target=hold_a_connection) for _ in range(threads)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
    finally:
        client.close()  # and its pool's connections
    assert replies == [None] * threads
    assert client.connection_pool.max_connections == service.settings.redis_max_connections < threads


def test_the_pool_size_is_a_setting(service: Any) -> None:
    settings = Settings.from_env({"REDIS_URL": service.settings.redis_url, "REDIS_MAX_CONNECTIONS": "8"})
    assert connect(settings).connection_pool.max_connections == 8
    with pytest.raises(ConfigurationError):
        Settings.from_env({"REDIS_MAX_CONNECTIONS": "0"})


def test_dedicated_connections_answer_as_the_client_does(service: Any) -> None:
    dedicated = DedicatedConnections(service.redis, 2)
    assert dedicated.execute("SET", "dedicated", b"\x00v") == b"OK"  # raw: no reply callbacks
    assert dedicated.execute("GET", "dedicated") == service.redis.get("dedicated") == b"\x00v"
    with pytest.raises(redis.ResponseError):
        dedicated.execute("INCR", "dedicated")  # not an integer: a reply error...
    assert dedicated.execute("PING") == b"PONG"  # ...and the connection still serves


def test_dedicated_connections_are_capped_and_shared_by_waiting(service: Any) -> None:
    dedicated = DedicatedConnections(service.redis, 2)
    threads = 6
    start = threading.Barrier(threads)
    ids: list[int] = []

    def hold_one() -> None:
        start.wait()
        dedicated.execute("BLPOP", "never-pushed", 0.2)  # holds its connection 0.2 s
        ids.append(dedicated.execute("CLIENT", "ID"))

    workers = [threading.Thread(target=hold_one) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert len(ids) == threads
    assert len(set(ids)) == 2  # every thread got one of the two connections, in turn


def test_a_dedicated_connection_cut_by_the_server_is_made_again(service: Any) -> None:
    dedicated = DedicatedConnections(service.redis, 1)
    first = dedicated.execute("CLIENT", "ID")
    assert service.redis.client_kill_filter(_id=first) == 1
    assert dedicated.execute("SET", "after-cut", 1) == b"OK"  # the retry reconnects
    assert dedicated.execute("CLIENT", "ID") != first


def test_a_forked_child_makes_its_own_dedicated_connection(service: Any) -> None:
    dedicated = DedicatedConnections(service.redis, 1)
    parent = dedicated.execute("CLIENT", "ID")
    child = int(in_forked_child(lambda: dedicated.execute("CLIENT", "ID")))  # never the parent's socket
    assert child != parent
    assert dedicated.execute("CLIENT", "ID") == parent


def test_the_admission_command_packed_by_hand_is_what_hiredis_packs(service) -> None:
    """Admitter.command packs the EVALSHA itself (constant parts once): the
    bytes must be those of redis-py's packer for the same arguments."""

    admitter = service.admitter
    digest = "d" * 64
    shapes = [
        [("analytics:events:queue", {"r": b"\x00packed\r\n"})],
        [("analytics:events:queue:high", {"r": b"x" * 300}), ("analytics:deadletters", {"e": "é", "n": 3})],
        [("analytics:metrics:queue", {"e": b"", "f": 1.5})],
    ]
    for entries, action, kick in itertools.product(shapes, ("ingest", "admin"), (True, False)):
        keys, args = admitter.keys_and_args(digest, action, entries, kick)
        expected = hiredis.pack_command(("EVALSHA", admitter._script.sha, len(keys), *keys, *args))
        assert admitter.command(digest, action, entries, kick) == expected
    with pytest.raises(redis.DataError):
        admitter.command(digest, "ingest", [("s", {"r": None})], True)
    # And Redis runs it: an unknown key is refused, nothing written.
    assert admitter.admit(digest, "ingest", shapes[0]).verdict == Verdict.UNKNOWN
    assert service.redis.xlen("analytics:events:queue") == 0
