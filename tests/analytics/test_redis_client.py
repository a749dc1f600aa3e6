"""The Redis client's command packer sends what redis-py's own would."""
from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.connection import HiredisRespSerializer

from analytics.redis_client import CommandPacker, connect


@pytest.mark.parametrize("args", [
    ("SET", "key", "value"),
    ("EVALSHA", "ab" * 20, 3, "k1", b"k2", "k3", 1, 2.5, 1764379200123, -7, b"\x00\xff blob"),
    ("HSET", "h", "f", memoryview(b"view")),
    ("XADD", "s", "*", "r", bytearray(b"\x93\x01\x02\x03")),  # redis-py turns it into bytes
    ("CLIENT SETNAME", "name"),  # a command name of two words
    (b"PING",),
    ("SET", "k", "x" * 100_000),
])
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
