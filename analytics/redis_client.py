"""Connecting to Redis, and turning its failures into domain errors."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import time
from types import TracebackType
from typing import Any

import hiredis
import redis
from redis.backoff import ExponentialBackoff
from redis.connection import HiredisRespSerializer
from redis.retry import Retry

from analytics.errors import StoreUnavailable
from analytics.settings import Settings

log = logging.getLogger(__name__)

#: Seconds a command may take, and a thread may wait for a free connection.
_COMMAND_TIMEOUT = 10

#: What XRANGE returns (redis-py's own types are a wide union).
StreamChunk = list[tuple[bytes, dict[bytes, bytes]]]

#: Errors that mean "Redis is not there right now": retried, answered 503.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
)


class CommandPacker(HiredisRespSerializer):
    """redis-py's hiredis command packer without its Python step per argument.

    redis-py passes every argument through a generator (to turn a
    ``bytearray`` into ``bytes``) before hiredis packs the command: on the
    commit of a batch, six arguments per event, about a fifth of the
    worker's CPU. hiredis packs ``str``, ``bytes``, ``int``, ``float`` and
    ``memoryview`` itself; anything else (a ``bytearray``, or a value redis-py
    refuses with ``DataError``), or a command name of several words, takes
    redis-py's own path. The bytes sent are the same
    (``tests/analytics/test_redis_client.py``).
    """

    def pack(self, *args: Any) -> list[bytes]:
        if type(args[0]) is str and " " not in args[0]:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return super().pack(*args)


def connect(settings: Settings, url: str | None = None) -> redis.Redis:
    """A client for ``url`` (default ``REDIS_URL``); ``rediss://`` means TLS.

    Short connect timeouts and one quick retry: a request must fail fast
    with 503 when Redis is away rather than hang.

    At most ``redis_max_connections`` connections: a thread that needs one
    while all are in use waits for one (up to the command timeout) rather
    than failing. redis-py's default pool raises ``MaxConnectionsError``
    beyond 100 at once, fewer than a web process's threads (``WEB_THREADS``
    request threads, one more per WebSocket).
    """
    pool = redis.BlockingConnectionPool.from_url(
        url or settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=_COMMAND_TIMEOUT,
        socket_connect_timeout=2,
        socket_timeout=_COMMAND_TIMEOUT,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
        command_packer=CommandPacker(),
    )
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # as Redis.from_url does: close() closes the pool
    return client


class DedicatedConnections:
    """A few connections of ``client``'s kind set aside for one hot command.

    Every ingest request makes exactly one Redis call (the admission
    script). Through ``Redis.execute_command`` that call costs redis-py 8
    about 140k instructions besides the socket I/O: its pool's bookkeeping
    and observability hooks on taking and returning a connection, a poll of
    the socket for stray data, the retry wrapper and argument filtering.
    Here the call takes an idle connection (a ``SimpleQueue`` of permits
    bounds them: C, no Python lock), sends the packed command and reads the
    reply: about 35k, some 110k fewer per single-event request (the bare
    endpoint of ``bench/instructions.py`` pays redis-py's whole path for
    its ``LPUSH``).

    Behaviour is the client's: the same connection options (timeouts, TLS,
    protocol, health checks), the same retry (``Retry`` of the client's
    connections) on a broken connection, at most ``size`` connections and
    a thread waiting up to the command timeout for a free one. A reply
    error (``ResponseError``) leaves the connection usable; a socket error
    closes it (redis-py does) and the next use reconnects. Replies come
    raw, as redis-py parses them before its per-command callbacks (``SET``
    answers ``b"OK"``, not ``True``).
    """

    def __init__(self, client: redis.Redis, size: int) -> None:
        pool = client.connection_pool
        self._make = functools.partial(pool.connection_class, **pool.connection_kwargs)
        # One permit per connection that may exist; the idle ones are reused
        # last-in first-out (list.pop/append: atomic), so that a connection
        # is made only when that many are in use at once, as in redis-py.
        self._permits: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(size):
            self._permits.put(None)
        self._idle: list[redis.connection.AbstractConnection] = []
        self._packer = CommandPacker()

    def pack(self, *args: Any) -> bytes:
        """The command ``args`` in RESP (for :meth:`execute_packed`)."""
        return b"".join(self._packer.pack(*args))

    def execute(self, *args: Any) -> Any:
        """Send the command ``args``; its reply, raw."""
        return self.execute_packed(self.pack(*args))

    def execute_packed(self, packed: bytes, replies: int = 1) -> Any:
        """Send ``packed``, a command already in RESP (:func:`resp_bulk`);
        its reply, raw. With ``replies`` > 1, ``packed`` holds that many
        commands, sent at once and run one after another on one connection
        (what ``WAIT`` needs: it counts this connection's writes); the
        answer is the list of their replies. Every reply is read before the
        first error reply is raised, so the connection stays in step."""
        try:
            self._permits.get(timeout=_COMMAND_TIMEOUT)
        except queue.Empty:
            raise redis.ConnectionError("no connection available") from None
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._make()
        try:
            if conn.pid != os.getpid():  # a forked child: never the parent's socket
                conn = self._make()

            def call() -> Any:
                conn.send_packed_command([packed])  # a list: bytes would be sent one int at a time
                if replies == 1:
                    return conn.read_response()
                answers: list[Any] = []
                for _ in range(replies):
                    try:
                        answers.append(conn.read_response())
                    except redis.ResponseError as exc:
                        answers.append(exc)
                for answer in answers:
                    if isinstance(answer, redis.ResponseError):
                        raise answer
                return answers

            return conn.retry.call_with_retry(call, lambda _: conn.disconnect())
        finally:
            self._idle.append(conn)
            self._permits.put(None)


def resp_bulk(value: bytes | str | int | float) -> bytes:
    """One command argument in RESP, encoded as redis-py encodes it (UTF-8
    text, numbers by ``repr``), for commands packed by hand (constant
    arguments packed once): ``b"*%d\\r\\n" % count`` followed by the
    arguments is the command."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    elif type(value) is int or type(value) is float:  # not bool: redis-py refuses it too
        data = repr(value).encode()
    else:
        raise redis.DataError(f"cannot send a {type(value).__name__} to Redis")
    return b"$%d\r\n%b\r\n" % (len(data), data)


def resp2_twin(client: redis.Redis) -> redis.Redis:
    """A client of the same server, with the same options, speaking RESP2.

    For bulk reads of many small hash fields (metric rollup chunks):
    redis-py 8 speaks RESP3 by default, and parsing a pipeline of ``HGETALL``
    map replies in RESP3 costs it about twice what the same replies cost in
    RESP2 (24 h at 1 min over 5 series: 12 ms against 6). The replies come
    out the same (``dict`` of bytes). Its own pool: connections are made
    when first used.
    """
    pool = client.connection_pool
    # Maintenance notifications (push messages) exist only in RESP3.
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if not k.startswith("maint_notifications")}
    kwargs["protocol"] = 2
    return redis.Redis(
        connection_pool=redis.BlockingConnectionPool(
            connection_class=pool.connection_class,
            max_connections=pool.max_connections,
            timeout=_COMMAND_TIMEOUT,
            **kwargs,
        )
    )


def is_out_of_memory(exc: redis.ResponseError) -> bool:
    """Redis refused a write: ``maxmemory`` reached (policy ``noeviction``).

    redis-py maps the ``OOM`` reply to :class:`OutOfMemoryError` (and strips
    the prefix); inside a script the reply arrives wrapped, hence the text.
    """
    return (
        isinstance(exc, redis.exceptions.OutOfMemoryError)
        or "used memory > 'maxmemory'" in str(exc)
        or str(exc).startswith("OOM")
    )


def store_error(exc: BaseException) -> StoreUnavailable | None:
    """The domain error for a Redis failure that is not the caller's fault
    (Redis away, or full), else None."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return StoreUnavailable("the data store is unavailable; nothing was accepted, retry later")
    if isinstance(exc, redis.ResponseError) and is_out_of_memory(exc):
        return StoreUnavailable("the data store is full; nothing was accepted, retry later")
    return None


class unavailable_as_error(contextlib.AbstractContextManager[None]):  # noqa: N801 - used as a function
    """Map "Redis is away or full" to :class:`StoreUnavailable`:
    ``with unavailable_as_error(): ...``. (A class rather than a
    ``@contextmanager`` generator: it wraps every ingest request, and this
    costs two calls instead of five.)"""

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if isinstance(exc, redis.RedisError):
            error = store_error(exc)
            if error is not None:
                raise error from None


def wait_until_reachable(client: redis.Redis, what: str, interval: float = 2.0) -> None:
    """Block until Redis answers, saying so in one line per outage."""
    announced = False
    while True:
        try:
            client.ping()
        except TRANSIENT_ERRORS as exc:
            if not announced:
                log.error("%s cannot reach Redis (%s); retrying every %.0f s", what, type(exc).__name__, interval)
                announced = True
            time.sleep(interval)
        else:
            if announced:
                log.warning("%s reached Redis again", what)
            return
