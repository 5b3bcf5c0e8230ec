"""The Kafka source keeps one batch's handling well inside max_poll_interval_ms: a slow batch halves the
records per poll (else the group evicts the consumer, rejects its commit and redelivers the batch, and
under load that repeats forever), and quick batches grow it back to max_poll_records."""

import time

from connectors.kafka import KafkaTicketSource
from daemon.config import KafkaConfig


def handled_in(source: KafkaTicketSource, seconds: float) -> int:
    source._returned_at = time.monotonic() - seconds  # the last poll returned records this long ago
    source._adapt_batch_limit()
    return source._batch_limit


def test_a_slow_batch_halves_the_records_per_poll_and_quick_ones_grow_it_back():
    source = KafkaTicketSource(KafkaConfig(max_poll_records=400, max_poll_interval_ms=30_000))
    assert source._batch_limit == 400
    assert handled_in(source, 5.0) == 400  # a sixth of the interval: fine
    assert handled_in(source, 11.0) == 200  # over a third: halved
    assert handled_in(source, 12.0) == 100
    assert [handled_in(source, 25.0) for _ in range(8)][-1] == 1  # never below one record
    assert handled_in(source, 1.0) == 2  # quick batches double it again
    assert [handled_in(source, 0.5) for _ in range(10)][-1] == 400  # up to max_poll_records, not beyond
    source._returned_at = None  # the last poll was empty: nothing to judge
    source._adapt_batch_limit()
    assert source._batch_limit == 400


def test_a_failed_leave_group_after_a_restart_is_info_not_error(caplog):
    import logging

    import connectors.kafka  # noqa: F401  (installs the filter)

    with caplog.at_level(logging.INFO, logger="kafka.coordinator"):
        logging.getLogger("kafka.coordinator").error("LeaveGroup request failed: %s", "UnknownMemberIdError")
        logging.getLogger("kafka.coordinator").error("Heartbeat failed: %s", "something else")
    levels = {r.getMessage().split(":")[0]: r.levelname for r in caplog.records}
    assert levels == {"LeaveGroup request failed": "INFO", "Heartbeat failed": "ERROR"}
