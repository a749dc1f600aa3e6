"""``python -m bench [--quick] [--only NAME ...]``: run the suite, print a
table of medians (min-max) and ratios against the baselines measured in the
same run, and write the results as JSON to bench/results/latest.json."""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from bench import e2e, ingest, memory
from bench.harness import cpu_count, median_range

RESULTS = Path(__file__).resolve().parent / "results"


def _repeat(fn: Any, reps: int, **kwargs: Any) -> list[dict[str, Any]]:
    return [fn(**kwargs) for _ in range(reps)]


def bench_e2e(quick: bool) -> dict[str, Any]:
    reps = 1 if quick else 3
    total = 2_000 if quick else 100_000
    naive_total = 500 if quick else 10_000
    ours = _repeat(e2e.pipeline_once, reps, total=total)
    naive = _repeat(e2e.naive_once, reps, total=naive_total)
    ours_rate = median_range([r["events_per_s"] for r in ours])
    naive_rate = median_range([r["events_per_s"] for r in naive])
    assert all(r["stored"] == r["events"] for r in ours), "events lost in the benchmark"
    return {"pipeline_events_per_s": ours_rate, "naive_events_per_s": naive_rate,
            "ratio": ours_rate["median"] / naive_rate["median"], "runs": {"pipeline": ours, "naive": naive}}


def bench_ingest(quick: bool) -> dict[str, Any]:
    reps = 1 if quick else 3
    single = 500 if quick else 20_000
    batches = 20 if quick else 1_000
    out: dict[str, Any] = {}
    for label, app in (("ours", "web:create_app()"), ("bare", "bench.bare:create_app()")):
        one = _repeat(ingest.ingest_once, reps, app=app, requests=single, batch=1)
        hundred = _repeat(ingest.ingest_once, reps, app=app, requests=batches, batch=100)
        out[f"{label}_single_req_per_s"] = median_range([r["requests_per_s"] for r in one])
        out[f"{label}_single_p50_ms"] = median_range([r["p50_ms"] for r in one])
        out[f"{label}_single_p99_ms"] = median_range([r["p99_ms"] for r in one])
        out[f"{label}_batch100_events_per_s"] = median_range([r["events_per_s"] for r in hundred])
        out[f"{label}_batch100_p50_ms"] = median_range([r["p50_ms"] for r in hundred])
        out[f"{label}_batch100_p99_ms"] = median_range([r["p99_ms"] for r in hundred])
    out["single_ratio_vs_bare"] = (out["ours_single_req_per_s"]["median"]
                                   / out["bare_single_req_per_s"]["median"])
    out["batch100_ratio_vs_bare"] = (out["ours_batch100_events_per_s"]["median"]
                                     / out["bare_batch100_events_per_s"]["median"])
    return out


def bench_memory(quick: bool) -> dict[str, Any]:
    return memory.memory_per_event(2_000 if quick else 50_000)


def bench_metrics(quick: bool) -> dict[str, Any]:
    from bench import metrics_bench

    return metrics_bench.run(quick)


def bench_ws(quick: bool) -> dict[str, Any]:
    from bench import ws_latency

    return ws_latency.run(quick)


SUITE = {"ingest": bench_ingest, "e2e": bench_e2e, "memory": bench_memory,
         "metrics": bench_metrics, "ws": bench_ws}


def _fmt(value: Any) -> str:
    if isinstance(value, dict) and "median" in value:
        return f"{value['median']:,.1f} ({value['min']:,.1f}-{value['max']:,.1f})"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke mode: small sizes, one repetition")
    parser.add_argument("--only", nargs="*", choices=sorted(SUITE), help="run only these")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": {"cpus": cpu_count(), "python": platform.python_version()},
                               "quick": args.quick, "started": time.time()}
    for name in args.only or SUITE:
        print(f"== {name}", flush=True)
        results[name] = SUITE[name](args.quick)
        for key, value in results[name].items():
            if key != "runs":
                print(f"  {key:<28} {_fmt(value)}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"results written to {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()
