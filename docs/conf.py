"""Sphinx configuration of the analytics service's documentation.

Build: ``sphinx-build -W --keep-going -b html docs build/docs`` (only
Sphinx itself is needed: built-in extensions and the default theme).
"""
from __future__ import annotations

project = "Analytics service"
author = "The analytics service team"
copyright = "2026, the analytics service team"
release = "0.1.0"

extensions: list[str] = []
root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []

# Literal blocks marked ``::`` are diagrams, sample output or commands in
# several languages: shown as they are. Examples use ``code-block`` with a
# language for highlighting.
highlight_language = "none"

html_theme = "alabaster"
html_title = "Analytics service"
html_theme_options = {
    "description": "Real-time analytics on Flask, Celery and Redis, PHI-safe",
    "fixed_sidebar": True,
}
