"""gunicorn settings for the web process (Procfile ``web``)."""
import os
import shutil
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

# Prometheus multiprocess mode: every worker writes its samples to files in
# this directory and GET /metrics sums them, whichever worker answers. It must
# be set before any worker imports prometheus_client, hence here, in the
# master. Give each server its own directory (the default is per master pid).
PROMETHEUS_DIR = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.path.join(tempfile.gettempdir(), f"analytics-prometheus-{os.getpid()}"))


def on_starting(server):  # gunicorn hook
    # Samples of a previous run would be summed in: start empty.
    shutil.rmtree(PROMETHEUS_DIR, ignore_errors=True)
    os.makedirs(PROMETHEUS_DIR, exist_ok=True)


def child_exit(server, worker):  # gunicorn hook
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # gunicorn hook
    if PROMETHEUS_DIR.startswith(tempfile.gettempdir()):
        shutil.rmtree(PROMETHEUS_DIR, ignore_errors=True)
