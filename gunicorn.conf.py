"""gunicorn settings for the web process (Procfile ``web``)."""
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
# gthread: each WebSocket holds a thread for its lifetime, so threads bound
# the sockets one worker holds; plain requests share the same pool.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "64"))
timeout = 60
graceful_timeout = 10
accesslog = None  # request lines can carry query strings; we log our own, scrubbed


def on_starting(server):  # noqa: ARG001 - gunicorn's hook signature
    """In the master, before any worker: without encryption keys (outside
    dev mode) stop with one clear line instead of respawning failing workers."""
    from analytics.startup import start_process

    start_process("web")
