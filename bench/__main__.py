"""``python -m bench [--quick] [--only NAME ...]``: run the suite, print a
table of medians (min-max) and ratios against the baselines measured in the
same run, and write the results as JSON to bench/results/latest.json.

Throughput on shared cores swings with the neighbours, so each side and its
baseline take turns: ingest in rounds against both servers kept up
(:mod:`bench.ingest`), end to end in alternating pairs of runs (``*_pairs``:
median (min-max) of the per-round or per-pair ratios); every run also
reports the CPU time of each server process per event or request
(``*_cpu_us_per_*``), which moves much less; and ``calibration`` relates
this machine to the reference machine the performance targets were set on."""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench import anomaly, calibration, e2e, ingest, instructions, memory, metrics_bench, ws_latency
from bench.harness import APPS, cpu_count, median_range

RESULTS = Path(__file__).resolve().parent / "results"
Run = dict[str, Any]


def _pairs(reps: int, first: Callable[[], Run], second: Callable[[], Run]) -> tuple[list[Run], list[Run]]:
    """Run ``first, second, first, second, ...``. On shared cores a
    neighbour's load drifts over minutes; the two runs of a pair see about the
    same machine, so a ratio within a pair is steadier than a ratio of two
    medians taken minutes apart."""
    ones: list[Run] = []
    twos: list[Run] = []
    for _ in range(reps):
        ones.append(first())
        twos.append(second())
    return ones, twos


def _pair_ratios(ones: list[Run], twos: list[Run], key: str) -> dict[str, float]:
    return median_range([a[key] / b[key] for a, b in zip(ones, twos, strict=True)])


def _cpu(runs: list[Run], field: str, prefix: str) -> dict[str, Any]:
    """Each role's CPU us (``web``, ``worker``, ``redis``, ``total``,
    ``loadgen``), median (min-max) over the runs, as flat keys like the rest."""
    return {f"{prefix}_{role}": median_range([r[field][role] for r in runs]) for role in runs[0][field]}


def bench_calibration(quick: bool) -> dict[str, Any]:
    return calibration.run(quick)


def bench_e2e(quick: bool) -> dict[str, Any]:
    reps = 1 if quick else 3
    # In smoke mode too, enough for the worker's CPU to span several 10 ms ticks.
    total = 10_000 if quick else 100_000
    naive_total = 500 if quick else 10_000
    ours, naive = _pairs(reps, partial(e2e.pipeline_once, total=total), partial(e2e.naive_once, total=naive_total))
    ours_rate = median_range([r["events_per_s"] for r in ours])
    naive_rate = median_range([r["events_per_s"] for r in naive])
    assert all(r["stored"] == r["events"] for r in ours), "events lost in the benchmark"
    return {
        "pipeline_events_per_s": ours_rate,
        "naive_events_per_s": naive_rate,
        "ratio": ours_rate["median"] / naive_rate["median"],
        "ratio_pairs": _pair_ratios(ours, naive, "events_per_s"),
        **_cpu(ours, "cpu_us_per_event", "pipeline_cpu_us_per_event"),
        **_cpu(naive, "cpu_us_per_event", "naive_cpu_us_per_event"),
        "runs": {"pipeline": ours, "naive": naive},
    }


def bench_ingest(quick: bool) -> dict[str, Any]:
    # Rounds of about 2 s per side here (1 s for the bare batches).
    rounds = 1 if quick else 8
    single = 500 if quick else 5_000
    # Enough in smoke mode for the CPU figures to span several 10 ms ticks.
    batches = 200 if quick else 1_000
    runs: dict[tuple[str, str], list[Run]] = {}
    for mode, requests, batch in (("single", single, 1), ("batch100", batches, 100)):
        by_app = ingest.ingest_rounds(rounds, requests, batch)
        runs["ours", mode], runs["bare", mode] = by_app["ours"], by_app["bare"]
    out: dict[str, Any] = {}
    for label in APPS:
        one, hundred = runs[label, "single"], runs[label, "batch100"]
        out[f"{label}_single_req_per_s"] = median_range([r["requests_per_s"] for r in one])
        out[f"{label}_single_p50_ms"] = median_range([r["p50_ms"] for r in one])
        out[f"{label}_single_p99_ms"] = median_range([r["p99_ms"] for r in one])
        out[f"{label}_batch100_events_per_s"] = median_range([r["events_per_s"] for r in hundred])
        out[f"{label}_batch100_p50_ms"] = median_range([r["p50_ms"] for r in hundred])
        out[f"{label}_batch100_p99_ms"] = median_range([r["p99_ms"] for r in hundred])
    out["single_ratio_vs_bare"] = out["ours_single_req_per_s"]["median"] / out["bare_single_req_per_s"]["median"]
    out["batch100_ratio_vs_bare"] = (
        out["ours_batch100_events_per_s"]["median"] / out["bare_batch100_events_per_s"]["median"]
    )
    out["single_ratio_vs_bare_pairs"] = _pair_ratios(runs["ours", "single"], runs["bare", "single"], "requests_per_s")
    out["batch100_ratio_vs_bare_pairs"] = _pair_ratios(
        runs["ours", "batch100"], runs["bare", "batch100"], "events_per_s"
    )
    for (label, mode), mode_runs in runs.items():
        out.update(_cpu(mode_runs, "cpu_us_per_req", f"{label}_{mode}_cpu_us_per_req"))
    return out


def bench_instructions(quick: bool) -> dict[str, Any]:

    return instructions.run(quick)


def bench_memory(quick: bool) -> dict[str, Any]:
    return memory.memory_per_event(2_000 if quick else 50_000)


def bench_metrics(quick: bool) -> dict[str, Any]:

    return metrics_bench.run(quick)


def bench_anomaly(quick: bool) -> dict[str, Any]:
    return anomaly.run(quick)


def bench_detection(quick: bool) -> dict[str, Any]:
    return metrics_bench.detection_pairs(quick)


def bench_ws(quick: bool) -> dict[str, Any]:

    return ws_latency.run(quick)


SUITE = {
    "calibration": bench_calibration,
    "ingest": bench_ingest,
    "instructions": bench_instructions,
    "e2e": bench_e2e,
    "memory": bench_memory,
    "metrics": bench_metrics,
    "detection": bench_detection,
    "anomaly": bench_anomaly,
    "ws": bench_ws,
}


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, dict) and "median" in value:
        return f"{value['median']:,.{digits}f} ({value['min']:,.{digits}f}-{value['max']:,.{digits}f})"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke mode: small sizes, one repetition")
    parser.add_argument("--only", nargs="*", choices=sorted(SUITE), help="run only these")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": {"cpus": cpu_count(), "python": platform.python_version()},
        "quick": args.quick,
        "started": time.time(),
    }
    # Suite order even with --only: calibration first, for e2e's projection.
    for name in [name for name in SUITE if name in (args.only or SUITE)]:
        print(f"== {name}", flush=True)
        results[name] = SUITE[name](args.quick)
        width = max(28, *(len(key) for key in results[name]))
        for key, value in results[name].items():
            if key != "runs":
                # Ratios near 1 need two decimals to be read.
                print(f"  {key:<{width}} {_fmt(value, 2 if 'ratio' in key else 1)}", flush=True)
        if name == "e2e" and "calibration" in results:
            factor = results["calibration"]["speed_factor_geomean"]
            projected = results["e2e"]["pipeline_events_per_s"]["median"] * factor
            results["e2e_projection"] = {"events_per_s": projected, "speed_factor": factor}
            print(
                f"  e2e at the reference machine's speed (projection): {projected:,.0f} events/s "
                f"= pipeline median x speed factor {factor:.2f}; not a measurement",
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"results written to {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()
