"""Benchmarks: ``python -m bench`` (or ``make bench``). See README.rst."""
