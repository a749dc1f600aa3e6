"""gunicorn settings for the web process (Procfile ``web``).

Worker class: ``gthread``. A WebSocket (``/v1/stream``) holds one thread of
the pool for its whole life (plus the small reader thread simple-websocket
starts for it), so ``threads`` bounds the sockets one worker process holds;
plain requests share the same pool. We chose gthread over gevent because the
rest of the stack (redis-py, Celery's client, cryptography) stays ordinary
blocking code, with no monkey-patching; the live fan-out does the per-event
work once per process, so a thread per client costs little besides memory.
Size it as WEB_CONCURRENCY x WEB_THREADS >= expected clients + request
concurrency (default 2 x 128).

Known gthread issue: with long-lived connections (keep-alive clients, a
proxy's pool, WebSockets) one worker often ends up holding most of them
while another idles; a Python process runs one thread at a time, so that
halves what two cores serve. The worker class,
:class:`web.balanced_worker.BalancedThreadWorker`, is gthread taking a new
connection only while no sibling holds fewer (docs/operations.rst, "Serving").
``WEB_REUSE_PORT=1`` gives each worker its own SO_REUSEPORT socket instead
(the kernel then hashes connections across them; no balancing by count).
"""

import glob
import os
import socket
import tempfile

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
worker_class = "web.balanced_worker.BalancedThreadWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "128"))
# gthread stops accepting above this many open connections per worker; a
# WebSocket beyond ``threads`` is accepted but waits for a free thread (its
# handshake hangs), so keep WEB_THREADS above the clients a worker holds.
worker_connections = int(os.environ.get("WEB_CONNECTIONS", "1000"))
# Off: the workers share one socket and balance by count (see above).
reuse_port = os.environ.get("WEB_REUSE_PORT", "0") in ("1", "true", "yes")
timeout = 60
graceful_timeout = 10
accesslog = None  # request lines can carry query strings (?token=); we log our own, scrubbed


def post_request(worker, req, environ, resp):  # gunicorn's hook signature
    """Shut down the socket of a finished WebSocket here, in its own thread.

    gthread closes a finished connection in the worker's main loop, and
    "gracefully": it half-closes, then waits up to 2 s for the peer's FIN.
    A WebSocket client that stays silent after our close frame (stalled,
    gone without a FIN, or hostile) stalled every other connection of the
    worker meanwhile: no accept, no dispatch. The close handshake is done by
    now (flask-sock sends it), so there is nothing left to drain.
    """
    if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already gone


def post_worker_init(worker):
    """On SIGTERM, close this worker's WebSockets with 1001 at once, so
    clients reconnect (to another worker, or the restarted server) instead of
    hanging until ``graceful_timeout`` runs out. Then, the app loaded, its
    objects are frozen out of the garbage collector's full passes."""
    from analytics.startup import freeze_startup_heap
    from web.stream import close_streams_on_sigterm

    close_streams_on_sigterm()
    freeze_startup_heap()


def on_starting(server):
    """In the master, before any worker: without encryption keys (outside
    dev mode) stop with one clear line instead of respawning failing workers."""
    from analytics.startup import start_process

    start_process("web")
    # Prometheus samples of a previous run would be summed in: start empty.
    os.makedirs(PROMETHEUS_DIR, exist_ok=True)
    _remove_samples()


# Prometheus multiprocess mode: every worker writes its samples to files in
# this directory and GET /metrics sums them, whichever worker answers. It must
# be set before any worker imports prometheus_client, hence here, in the
# master. Give each server its own directory (the default is per master pid).
PROMETHEUS_DIR = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"analytics-prometheus-{os.getpid()}")
)


def _remove_samples():
    # Only prometheus_client's sample files: the directory may be the
    # operator's choice.
    for path in glob.glob(os.path.join(PROMETHEUS_DIR, "*.db")):
        os.remove(path)


def child_exit(server, worker):  # gunicorn hook
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # gunicorn hook
    _remove_samples()
    try:
        os.rmdir(PROMETHEUS_DIR)  # only if now empty
    except OSError:
        pass
