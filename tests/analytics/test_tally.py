from analytics.events.store import CommitResult
from analytics.metrics.store import MetricCommitResult
from analytics.processing.service import DrainReport


def test_reports_add_up_field_by_field_nested_ones_in_place():
    total = DrainReport(1, CommitResult(stored=2, duplicates=1), 0.5, 0, 3, MetricCommitResult(samples=4))
    committed = total.committed
    total += DrainReport(
        2, CommitResult(stored=1, skipped_entries=1), 0.25, 1, 1, MetricCommitResult(samples=1, entries=2)
    )
    assert total == DrainReport(
        3, CommitResult(stored=3, duplicates=1, skipped_entries=1), 0.75, 1, 4, MetricCommitResult(samples=5, entries=2)
    )
    assert total.committed is committed
