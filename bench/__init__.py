"""Benchmarks: ``python -m bench`` (or ``make bench``); see docs/performance.rst.

The dated diary of runs is bench/HISTORY.rst."""
