"""Celery side of the service: ``celery -A tasks worker|beat|flower``
(the app is :data:`tasks.celery.app`).

Tasks are thin: each one calls :mod:`analytics` and returns.
"""
