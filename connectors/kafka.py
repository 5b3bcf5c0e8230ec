"""The Kafka ticket source: a kafka-python consumer group with manual commits, a DLQ producer, lag.

Offsets are committed only when the ingest loop says its store write is durable; dead letters
are acknowledged by the brokers (acks=all) before `dead_letter` returns. Both clients connect on
first use, so an unreachable broker is an error of `poll`, which the loop retries.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, MessageSizeTooLargeError, UnsupportedCodecError
from kafka.structs import OffsetAndMetadata

from daemon.config import KafkaConfig
from daemon.ingest.loop import SourceRecord, UndecodableRecords

log = logging.getLogger(__name__)

T = TypeVar("T")


class _LeaveGroupIsInfo(logging.Filter):
    """kafka-python logs a failed LeaveGroup as an ERROR; after a quick restart the coordinator has often
    dropped the old member already, so that is the expected outcome of a restart, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and record.getMessage().startswith("LeaveGroup request"):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("kafka.coordinator").addFilter(_LeaveGroupIsInfo())

HEADER_ERROR = "ticketune.error"  # "<reason>: <detail>", the one header a person reads first
HEADER_REASON = "ticketune.error.reason"
HEADER_DETAIL = "ticketune.error.detail"
HEADER_SOURCE_TOPIC = "ticketune.source.topic"
HEADER_SOURCE_PARTITION = "ticketune.source.partition"
HEADER_SOURCE_OFFSET = "ticketune.source.offset"
HEADER_FAILED_AT = "ticketune.failed_at"
HEADER_VALUE_OMITTED = "ticketune.error.value_omitted"
ERROR_HEADERS = frozenset(
    {
        HEADER_ERROR,
        HEADER_REASON,
        HEADER_DETAIL,
        HEADER_SOURCE_TOPIC,
        HEADER_SOURCE_PARTITION,
        HEADER_SOURCE_OFFSET,
        HEADER_FAILED_AT,
        HEADER_VALUE_OMITTED,
    }
)

BOOTSTRAP_TIMEOUT_MS = 10_000  # how long `poll` may block on an unreachable broker before it raises
COMMIT_TIMEOUT_MS = 15_000
LAG_TIMEOUT_MS = 3_000
DLQ_SEND_TIMEOUT_S = 30.0
DLQ_MAX_REQUEST_BYTES = 16 * 1024 * 1024  # a too_large record still fits, up to what the broker allows


def client_settings(config: KafkaConfig) -> dict[str, Any]:
    """Connection and security settings shared by the consumer and the DLQ producer."""
    settings: dict[str, Any] = {
        "bootstrap_servers": [
            server.strip() for server in config.bootstrap_servers.split(",") if server.strip()
        ],
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
    }
    if config.sasl_mechanism is not None:
        settings["sasl_mechanism"] = config.sasl_mechanism
        settings["sasl_plain_username"] = config.sasl_username
        if config.sasl_password is not None:
            settings["sasl_plain_password"] = config.sasl_password.get_secret_value()
    if config.ssl_cafile is not None:
        settings["ssl_cafile"] = config.ssl_cafile
    return settings


def _connect(client_class: type[T], **settings: Any) -> T:
    """Builds a kafka-python client; kafka-python 3 leaves the network thread of a client that failed
    to bootstrap running, so a broker outage retried for hours would pile up threads: close it here."""
    net_clients: list[Any] = []
    default_net_client = client_class.DEFAULT_CONFIG["kafka_client"]

    def make_net_client(**kwargs: Any) -> Any:
        net_clients.append(default_net_client(**kwargs))
        return net_clients[-1]

    try:
        return client_class(**settings, kafka_client=make_net_client)
    except Exception:
        for net_client in net_clients:
            net_client.close()
        raise


class KafkaTicketSource:
    """Reads `config.topic` as consumer group `config.group_id`; dead letters go to `config.dlq_topic`."""

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.max_value_bytes: int | None = config.max_message_bytes
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._pending: dict[TopicPartition, int] = {}  # next offset to commit, per partition polled
        # records per poll, adapted so that handling one batch stays well inside max_poll_interval_ms
        self._batch_limit = config.max_poll_records
        self._returned_at: float | None = None  # when the last poll returned records
        self._ever_assigned = False

    def _consumer_now(self) -> KafkaConsumer:
        if self._consumer is None:
            cfg = self.config
            consumer = _connect(
                KafkaConsumer,
                **client_settings(cfg),
                group_id=cfg.group_id,
                enable_auto_commit=False,
                auto_offset_reset=cfg.auto_offset_reset,
                max_poll_records=cfg.max_poll_records,
                session_timeout_ms=cfg.session_timeout_ms,
                heartbeat_interval_ms=cfg.heartbeat_interval_ms,
                max_poll_interval_ms=cfg.max_poll_interval_ms,
                **({"group_instance_id": cfg.group_instance_id} if cfg.group_instance_id else {}),
            )
            consumer.subscribe([cfg.topic])
            self._consumer = consumer
        return self._consumer

    def _producer_now(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = _connect(
                KafkaProducer,
                **client_settings(self.config),
                acks="all",
                max_block_ms=BOOTSTRAP_TIMEOUT_MS,
                max_request_size=max(DLQ_MAX_REQUEST_BYTES, 2 * self.config.max_message_bytes),
            )
        return self._producer

    def _adapt_batch_limit(self) -> None:
        """Halves the records per poll when handling the last batch took over a third of
        max_poll_interval_ms (the group would evict a consumer that takes longer, reject its commit and
        redeliver the batch: under load, forever); grows it back while batches are quick."""
        if self._returned_at is None:
            return
        took_s = time.monotonic() - self._returned_at
        interval_s = self.config.max_poll_interval_ms / 1000
        if took_s > interval_s / 3 and self._batch_limit > 1:
            self._batch_limit = max(1, self._batch_limit // 2)
            log.warning("a batch took %.1f s of max_poll_interval_ms %.0f s; polling at most %d records now",
                        took_s, interval_s, self._batch_limit)
        elif took_s < interval_s / 12 and self._batch_limit < self.config.max_poll_records:
            self._batch_limit = min(self.config.max_poll_records, self._batch_limit * 2)

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[SourceRecord]:
        consumer = self._consumer_now()
        self._adapt_batch_limit()
        limit = self._batch_limit if max_records is None else min(max_records, self._batch_limit)
        try:
            batches = consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=limit)
        except UnsupportedCodecError as exc:
            raise UndecodableRecords(
                f"a batch on {self.config.topic} uses a compression codec this installation cannot read ({exc}); "
                "install ticketune's dependencies lz4, python-snappy and zstandard, then restart"
            ) from None
        self._returned_at = time.monotonic() if batches else None
        records = []
        for partition, messages in batches.items():
            for message in messages:
                records.append(
                    SourceRecord(
                        topic=message.topic,
                        partition=message.partition,
                        offset=message.offset,
                        key=message.key,
                        value=message.value,
                        timestamp_ms=message.timestamp,
                        headers=tuple(
                            (name, value) for name, value in message.headers or () if value is not None
                        ),
                    )
                )
            if messages:
                self._pending[partition] = messages[-1].offset + 1
        return records

    def assigned(self) -> bool:
        if not self._ever_assigned and self._consumer is not None:
            self._ever_assigned = bool(self._consumer.assignment())
        return self._ever_assigned

    def dead_letter(self, record: SourceRecord, reason: str, detail: str) -> None:
        """Sends the original key and value with the error headers; returns once the brokers have it."""
        headers = [(name, value) for name, value in record.headers if name not in ERROR_HEADERS]
        headers += [
            (HEADER_ERROR, f"{reason}: {detail}".encode("utf-8", errors="replace")),
            (HEADER_REASON, reason.encode()),
            (HEADER_DETAIL, detail.encode("utf-8", errors="replace")),
            (HEADER_SOURCE_TOPIC, record.topic.encode()),
            (HEADER_SOURCE_PARTITION, str(record.partition).encode()),
            (HEADER_SOURCE_OFFSET, str(record.offset).encode()),
            (HEADER_FAILED_AT, datetime.now(timezone.utc).isoformat().encode()),
        ]
        value = record.value
        if record.key is None and value is None:  # kafka-python refuses a record with neither key nor value
            value = b""
        try:
            self._send_dead_letter(record.key, value, headers)
        except MessageSizeTooLargeError:
            log.warning(
                "dead letter for %s/%d@%d too large for %s; sending it without its value",
                record.topic,
                record.partition,
                record.offset,
                self.config.dlq_topic,
            )
            self._send_dead_letter(record.key, b"", [*headers, (HEADER_VALUE_OMITTED, b"true")])

    def _send_dead_letter(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        producer = self._producer_now()
        try:
            producer.send(self.config.dlq_topic, key=key, value=value, headers=headers).get(
                timeout=DLQ_SEND_TIMEOUT_S
            )
        except MessageSizeTooLargeError:
            raise
        except Exception:
            self._producer = None  # start afresh on the retry; a timed-out producer may be wedged
            producer.close(timeout=0)
            raise

    def commit(self) -> None:
        """Commits the offsets of every record polled so far, on the partitions still assigned."""
        if self._consumer is None or not self._pending:
            return
        assigned = self._consumer.assignment()
        offsets = {
            partition: OffsetAndMetadata(offset, "", -1)
            for partition, offset in self._pending.items()
            if partition in assigned
        }
        if len(offsets) < len(self._pending):
            log.info("partitions revoked before commit; their new owner re-reads the uncommitted records")
        try:
            if offsets:
                self._consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except CommitFailedError as exc:
            log.warning("offset commit rejected after a rebalance (%s); the records will be redelivered", exc)
        self._pending.clear()

    def lag(self) -> dict[int, int] | None:
        """Records not yet committed, per assigned partition; None until partitions are assigned.

        End = the larger of ListOffsets and the fetch high-water mark (ListOffsets can trail the true
        end by a batch on some brokers, Tansu among them); lag = end - committed offset (the position
        where nothing was committed yet), never below 0.
        """
        consumer = self._consumer
        if consumer is None:
            return None
        assigned = list(consumer.assignment())
        if not assigned:
            return None
        ends = consumer.end_offsets(assigned, timeout_ms=LAG_TIMEOUT_MS)
        lags: dict[int, int] = {}
        for partition in assigned:
            done = consumer.committed(partition, timeout_ms=LAG_TIMEOUT_MS)
            if done is None:
                done = consumer.position(partition, timeout_ms=LAG_TIMEOUT_MS)
            if done is None:
                return None
            end = max(ends.get(partition) or 0, consumer.highwater(partition) or 0)
            lags[partition.partition] = max(end - done, 0)
        return lags

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=5)
        if consumer is not None:
            consumer.close(autocommit=False, timeout_ms=5000)


def produce_raw(config: KafkaConfig, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    """Produces (key, value) records in order and waits until the brokers acknowledged all of them."""
    producer = _connect(KafkaProducer, **client_settings(config), acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in records]
        producer.flush()
        for future in futures:
            future.get(timeout=DLQ_SEND_TIMEOUT_S)
    finally:
        producer.close()


def produce_tickets(config: KafkaConfig, topic: str, tickets: list[dict]) -> None:
    """Produces canonical ticket dicts as JSON, keyed by ticket id (what `produce-sample` sends)."""
    produce_raw(
        config,
        topic,
        [(str(t["ticket_id"]).encode(), json.dumps(t, ensure_ascii=False).encode("utf-8")) for t in tickets],
    )
