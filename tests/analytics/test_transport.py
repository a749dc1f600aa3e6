"""rediss:// (TLS) for the data store and the Celery broker: the clients are
built with SSL connections that verify the server's certificate."""

from __future__ import annotations

import ssl

import redis

from analytics import Settings
from analytics.redis_client import connect
from tasks.celery_app import create_celery_app


def test_rediss_data_store_uses_a_verifying_ssl_connection() -> None:
    settings = Settings.from_env({"REDIS_URL": "rediss://cache.internal:6380/0"})
    assert settings.broker_url == "rediss://cache.internal:6380/0"
    pool = connect(settings).connection_pool
    assert pool.connection_class is redis.SSLConnection
    connection = pool.make_connection()
    assert connection.cert_reqs == ssl.CERT_REQUIRED and connection.host == "cache.internal"


def test_rediss_broker_uses_a_verifying_ssl_connection() -> None:

    settings = Settings.from_env(
        {"REDIS_URL": "redis://127.0.0.1:1/0", "CELERY_BROKER_URL": "rediss://broker.internal:6380/1"}
    )
    celery = create_celery_app(settings)
    connection = celery.connection_for_write()
    assert connection.transport_cls == "rediss"
    assert connection.ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # What kombu's channel will connect with (built without connecting).
    channel = connection.transport.Channel.__new__(connection.transport.Channel)
    channel.connection = connection.transport
    params = channel._connparams()
    assert params["connection_class"] is redis.SSLConnection
    assert params["ssl_cert_reqs"] == ssl.CERT_REQUIRED and params["host"] == "broker.internal"


def test_an_explicit_cert_option_in_the_broker_url_is_kept() -> None:

    settings = Settings.from_env({"CELERY_BROKER_URL": "rediss://broker.internal:6380/1?ssl_cert_reqs=optional"})
    connection = create_celery_app(settings).connection_for_write()
    assert connection.ssl["ssl_cert_reqs"] == ssl.CERT_OPTIONAL
