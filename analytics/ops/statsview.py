"""The monitoring figures as a plain-text table (``analytics stats``)."""

from __future__ import annotations

import datetime
from typing import Any


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def render_table(figures: dict[str, Any]) -> str:
    """Sections of ``name  value`` lines, one figure a line."""
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append(("", ""))
        rows.append((title.upper(), ""))

    redis_info = figures["redis"]
    section("system")
    rows.append(("redis", redis_info["status"]))
    if redis_info["status"] == "ok":
        rows.append(("redis used memory", _bytes(redis_info["used_memory_bytes"])))
        limit = redis_info["maxmemory_bytes"]
        rows.append(
            (
                "redis maxmemory",
                f"{_bytes(limit)} ({redis_info['maxmemory_policy']})"
                if limit
                else f"none ({redis_info['maxmemory_policy']})",
            )
        )
    rows.append(("this process RSS", _bytes(figures["process"]["rss_bytes"])))

    queue = figures.get("queue")
    if queue is not None:
        section("queue")
        rows.append(("length", str(queue["length"])))
        for lane, n in queue["lanes"].items():
            rows.append((f"  {lane}", str(n)))
        rows.append(("pending (held by workers)", str(queue["pending"])))
        rows.append(("processing rate", f"{queue['rate_per_second']:.1f} events/s (last minute)"))
        rows.append(("error rate", f"{queue['error_rate_per_second']:.2f} /s (last minute)"))
        rows.append(("batch time p50", _ms(queue["batch_ms_p50"])))
        rows.append(("batch time p99", _ms(queue["batch_ms_p99"])))
        rows.append(("processed since start", str(queue["totals"].get("events", 0))))
        dead = ", ".join(f"{k} {v}" for k, v in queue["dead_letters"].items())
        rows.append(("dead letters", dead))

    workers = figures.get("workers")
    if workers is not None:
        section("workers")
        if not workers:
            rows.append(("(none seen)", ""))
        for w in workers:
            seen = f"last seen {w['seconds_since_seen']:.0f} s ago ({_when(w['last_seen'])})"
            rows.append((w["name"], f"{w['status']}, {seen}, processed {w['processed']}"))

    ws = figures.get("websocket")
    if ws is not None:
        section("websocket")
        rows.append(("web processes reporting", str(ws["processes"])))
        rows.append(("connected clients", str(ws["clients"])))
        rows.append(("messages sent", str(ws["messages_total"])))
        rows.append(("errors", str(ws["errors_total"])))
        rows.append(("authentication failures", str(ws["auth_failures_total"])))
        rows.append(("message rate", f"{ws['messages_rate']:.1f} /s"))

    if "cleanup" in figures:
        section("cleanup")
        cleanup = figures["cleanup"]
        if not cleanup:
            rows.append(("last run", "never"))
        else:
            rows.append(("last run", _when(cleanup.get("last_run"))))
            for key, value in sorted(cleanup.items()):
                if key == "last_run":
                    continue
                if isinstance(value, dict):
                    value = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items())
                rows.append((key.replace("_", " "), str(value)))

    width = max(len(name) for name, _ in rows) + 2
    lines = [f"{name:<{width}}{value}".rstrip() for name, value in rows]
    return "\n".join(lines).strip("\n")
