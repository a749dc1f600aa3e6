"""Benchmarks: ``python -m bench.<name>``; each module exposes ``run(quick) -> dict``."""
