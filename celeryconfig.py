"""Celery settings (plain values; the broker URL comes from analytics.settings).

Why these values:

* ``task_acks_late`` with ``worker_prefetch_multiplier = 1``: a task message
  is acknowledged after it ran, and a worker holds one message at a time.
  Our tasks are idempotent, so a redelivery is harmless.
* A short ``visibility_timeout`` plus ``unacked_restore_interval`` and
  ``unacked_restore_throttle`` of 1: a task message whose worker was killed
  is redelivered within seconds rather than kombu's hour-long default. (The
  events themselves never depend on this: they wait in the queue stream's
  pending list and are reclaimed by the recovery sweep.)
* Task events on (``worker_send_task_events``, ``task_send_sent_event``) so
  Flower sees tasks out of the box.
* No result backend: views never wait on tasks.
* ``worker_cancel_long_running_tasks_on_connection_loss`` stays off: with
  Celery 5.7 and the Redis transport, turning it on made the worker die
  ("Unrecoverable error ... 'hostname'") when the broker connection dropped
  with a task running. (Its multi-line deprecation notice is silenced in
  ``tasks/monitoring.py`` instead.)
"""

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_ignore_result = True
task_store_errors_even_if_ignored = False
task_serializer = "json"
accept_content = ["json"]
broker_connection_retry_on_startup = True
broker_connection_max_retries = None
broker_transport_options = {
    "visibility_timeout": 60,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 2,
}
worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False
timezone = "UTC"
