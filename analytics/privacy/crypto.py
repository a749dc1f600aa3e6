"""All cryptography of the service: the only module importing ``cryptography``.

* PHI is sealed with AES-256-GCM. A sealed blob is
  ``version (1 byte) | key id (4 bytes) | nonce (12 bytes) | ciphertext+tag``,
  URL-safe base64 encoded. The key id picks the key on reading, so data
  sealed under an older key still opens after a rotation.
* The configured keys are Fernet-format (32 random bytes, URL-safe base64,
  as ``Fernet.generate_key()`` makes). Each is stretched with HKDF into
  separate sub-keys per purpose, so one secret never serves two algorithms.
* User ids (and message ids) are pseudonymized with keyed BLAKE2b under a key
  that stays the same across rotations (``ANALYTICS_HASH_KEY``, or derived
  from the oldest configured encryption key).
* API keys are random 256-bit tokens, stored as plain SHA-256: with that much
  entropy a slow hash adds nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
import weakref

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from analytics.errors import AnalyticsError, ConfigurationError
from analytics.settings import Settings

log = logging.getLogger(__name__)

_VERSION = b"\x01"
_HEADER = 1 + 4 + 12

#: Well-known key of development mode. Never use it with real data.
DEV_KEY = base64.urlsafe_b64encode(hashlib.sha256(b"analytics-dev-mode").digest()).decode()


class DecryptionError(AnalyticsError):
    """A sealed value does not open: unknown key id or tampered data."""

    code = "decryption_error"


def generate_key() -> str:
    """A new encryption key for ``ANALYTICS_ENCRYPTION_KEYS``."""
    return Fernet.generate_key().decode()


def _decode_key(raw: str, setting: str = "ANALYTICS_ENCRYPTION_KEYS") -> bytes:
    try:
        key = base64.urlsafe_b64decode(raw.encode())
    except (ValueError, TypeError):
        key = b""
    if len(key) != 32:
        raise ConfigurationError(
            f"{setting} holds a key that is not 32 bytes of URL-safe "
            "base64 (make one with `analytics keys generate-encryption-key`)"
        )
    return key


def decode_audit_key(raw: str) -> bytes:
    """``ANALYTICS_AUDIT_KEY`` as its 32 bytes (same format as the encryption keys)."""
    return _derive(_decode_key(raw, "ANALYTICS_AUDIT_KEY"), b"analytics/audit-checkpoint/hmac/v1")


def _fingerprint(key: bytes) -> str:
    # An HMAC of a fixed label under the key: it identifies the key, and
    # reveals nothing of it (what analytics.privacy.fingerprints stores).
    return hmac.new(key, b"analytics/key-fingerprint/v1", hashlib.sha256).hexdigest()[:32]


class _Nonces:
    """96-bit random AES-GCM nonces, read from the OS 256 at a time.

    ``os.urandom`` per nonce was a system call on every ingested event. Taken
    under a lock (gunicorn's threads share a vault); a forked child (gunicorn
    and Celery fork their workers) starts with a fresh buffer, so no two
    processes ever hand out the same bytes.
    """

    BATCH = 256

    def __init__(self) -> None:
        self._reset()
        alive = weakref.ref(self)  # a fork hook must not keep every vault alive

        def after_fork() -> None:
            nonces = alive()
            if nonces is not None:
                nonces._reset()

        os.register_at_fork(after_in_child=after_fork)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._offset = 0

    def take(self) -> bytes:
        with self._lock:
            if self._offset >= len(self._buffer):
                self._buffer = os.urandom(12 * self.BATCH)
                self._offset = 0
            nonce = self._buffer[self._offset : self._offset + 12]
            self._offset += 12
        return nonce


def _derive(key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(key)


class Vault:
    """Seals and opens PHI, and computes keyed hashes."""

    def __init__(self, keys: list[str] | tuple[str, ...], hash_key: str = "") -> None:
        if not keys:
            raise ConfigurationError("no encryption keys configured")
        raw = [_decode_key(k) for k in keys]
        self._aeads: dict[bytes, AESGCM] = {}
        self._order: list[bytes] = []
        for key in raw:
            sub = _derive(key, b"analytics/phi/aes-gcm/v1")
            key_id = hashlib.sha256(sub).digest()[:4]
            self._aeads[key_id] = AESGCM(sub)
            self._order.append(key_id)
        self.current_key_id = self._order[0]
        hash_source = _decode_key(hash_key) if hash_key else raw[-1]
        self._hash_key = _derive(hash_source, b"analytics/pseudonym/blake2b/v1")
        # BLAKE2b in its keyed mode (RFC 7693: a PRF and MAC like HMAC), the
        # key block absorbed once: each hash copies this state. It runs twice
        # for every ingested event, where HMAC-SHA256 (two states, two
        # digests) cost 2.5 times as much.
        self._hash_state = hashlib.blake2b(key=self._hash_key, digest_size=32)
        self._nonces = _Nonces()
        self._audit_key = _derive(hash_source, b"analytics/audit/hmac/v1")
        #: Fingerprints of the configured encryption keys (newest first) and
        #: of the key user hashes come from (:mod:`analytics.privacy.fingerprints`).
        self.key_fingerprints = tuple(_fingerprint(key) for key in raw)
        self.hash_fingerprint = _fingerprint(hash_source)
        # Signs audit checkpoints when ANALYTICS_AUDIT_KEY is not set: kept
        # apart from the chain's key by its own HKDF label.
        self.derived_checkpoint_key = _derive(hash_source, b"analytics/audit-checkpoint/hmac/v1")
        #: Signs alert webhooks when ANALYTICS_ALERT_SIGNING_KEY is not set
        #: (hex: receivers configure it as a string); its own HKDF label.
        self.derived_alert_secret = _derive(hash_source, b"analytics/alert-webhook/hmac/v1").hex()

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        settings.require_keys()
        keys = settings.encryption_keys
        if not keys:
            log.warning(
                "DEVELOPMENT MODE: using the well-known development encryption key. "
                "Data sealed with it is NOT protected. Never use dev mode with real data."
            )
            keys = (DEV_KEY,)
        return cls(keys, settings.hash_key)

    # -- sealing -----------------------------------------------------------
    def seal(self, plaintext: bytes) -> str:
        """Encrypt ``plaintext`` under the newest key."""
        return base64.urlsafe_b64encode(self.seal_raw(plaintext)).decode()

    def seal_raw(self, plaintext: bytes) -> bytes:
        """:meth:`seal` as the bytes its token encodes (how records store it)."""
        nonce = self._nonces.take()
        ct = self._aeads[self.current_key_id].encrypt(nonce, plaintext, None)
        return _VERSION + self.current_key_id + nonce + ct

    def open(self, token: str) -> bytes:
        """Decrypt a token made by :meth:`seal` under any configured key."""
        try:
            blob = base64.urlsafe_b64decode(token.encode())
        except (ValueError, TypeError):
            raise DecryptionError("sealed value is not valid base64") from None
        if len(blob) < _HEADER + 16 or blob[:1] != _VERSION:
            raise DecryptionError("sealed value has an unknown format")
        aead = self._aeads.get(blob[1:5])
        if aead is None:
            raise DecryptionError("sealed value uses a key that is not configured")
        try:
            return aead.decrypt(blob[5:17], blob[17:], None)
        except InvalidTag:
            raise DecryptionError("sealed value failed authentication") from None

    def key_id_of(self, token: str) -> bytes:
        """The key id a token was sealed under (for rotation)."""
        return base64.urlsafe_b64decode(token.encode())[1:5]

    # -- keyed hashes ------------------------------------------------------
    def pseudonym(self, value: str, purpose: str = "user") -> str:
        """A stable keyed hash of ``value``: 128 bits as 32 hex characters."""
        return self.pseudonym_raw(value, purpose).hex()

    def pseudonym_raw(self, value: str, purpose: str = "user") -> bytes:
        """:meth:`pseudonym` as its 16 bytes."""
        state = self._hash_state.copy()
        state.update(f"{purpose}\x00{value}".encode())
        return state.digest()[:16]

    def event_id(self, message_id: str) -> str:
        """The stored id of the event with ``message_id``: 96 bits, URL-safe."""
        return base64.urlsafe_b64encode(self.event_id_raw(message_id)).decode()

    def event_id_raw(self, message_id: str) -> bytes:
        """:meth:`event_id` as its 12 bytes."""
        state = self._hash_state.copy()
        state.update(b"message\x00" + message_id.encode())
        return state.digest()[:12]

    def audit_mac(self, data: bytes) -> str:
        """HMAC for chaining audit entries."""
        return hmac.new(self._audit_key, data, hashlib.sha256).hexdigest()


def webhook_signature(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 (hex) of ``timestamp.body`` under ``secret``: what an
    alert webhook's ``X-Analytics-Signature: v1=...`` holds."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def new_api_key() -> str:
    """A fresh API key: 256 random bits."""
    return "ak_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """How an API key is stored and looked up."""
    return hashlib.sha256(key.encode()).hexdigest()
