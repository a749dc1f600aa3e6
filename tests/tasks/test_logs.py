"""What an idle stack logs at INFO: what an operator needs, not beat's
recovery sweep and alert delivery every few seconds."""

from __future__ import annotations

import time

from testkit import wait_until


def test_idle_recovery_sweeps_are_not_logged_at_info(worker, tmp_root) -> None:
    beat_log = tmp_root / "session-logs" / "beat.log"
    start_worker, start_beat = worker.log_path.stat().st_size, beat_log.stat().st_size
    # The test environment sweeps every second: several sweeps, sent and run.
    time.sleep(4)
    wait_until(lambda: worker.log_path.stat().st_size >= start_worker, 5)
    worker_lines = worker.log_path.read_text(errors="replace")[start_worker:]
    beat_lines = beat_log.read_text(errors="replace")[start_beat:]
    assert "analytics.recover" not in worker_lines, worker_lines[-2000:]
    assert "recover-abandoned-work" not in beat_lines, beat_lines[-2000:]
    assert "analytics.deliver_alerts" not in worker_lines, worker_lines[-2000:]
    assert "deliver-alerts" not in beat_lines, beat_lines[-2000:]
