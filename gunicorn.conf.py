"""gunicorn settings for the web process (Procfile ``web``)."""
import glob
import os
import tempfile

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
    # Prometheus samples of a previous run would be summed in: start empty.
    os.makedirs(PROMETHEUS_DIR, exist_ok=True)
    _remove_samples()


# Prometheus multiprocess mode: every worker writes its samples to files in
# this directory and GET /metrics sums them, whichever worker answers. It must
# be set before any worker imports prometheus_client, hence here, in the
# master. Give each server its own directory (the default is per master pid).
PROMETHEUS_DIR = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.path.join(tempfile.gettempdir(), f"analytics-prometheus-{os.getpid()}"))


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
