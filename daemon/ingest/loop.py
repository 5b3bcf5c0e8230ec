"""The ingest loop: ticket source → parse → chat example → store → commit, with no Kafka knowledge.

Per poll batch the dead letters are sent and the store is written (one transaction) before the
source commits, so a crash only ever redelivers records, which the idempotent store absorbs.
Bad input never stops the loop: it becomes a dead letter with a reason. An unreachable broker or
store is retried with capped backoff and shows in the metrics.
"""

from __future__ import annotations

import gc
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from daemon import metrics
from daemon.ingest.feedback import FeedbackRules
from daemon.ingest.filters import REASON_LOW_CSAT, QualityFilter
from daemon.ingest.filters import REASONS as QUALITY_REASONS
from daemon.ingest.outcomes import outcome_row
from daemon.ingest.pairs import SKIP_REASONS as PAIR_SKIP_REASONS
from daemon.ingest.pairs import Example, Skip, ticket_to_example
from daemon.ingest.privacy import DEFAULT_POLICY, PrivacyPolicy
from daemon.store import Deletion, OutcomeRow
from daemon.store import examples as stored_as  # the store's outcome names
from daemon.tickets import PARSE_REASONS, Ticket, TicketParseError

log = logging.getLogger(__name__)

REASON_TOO_LARGE = "too_large"
REASON_INTERNAL_ERROR = "internal_error"
REASON_TOMBSTONE_WITHOUT_KEY = "tombstone_without_key"
REASON_INVALID_KEY = "invalid_key"
DEAD_LETTER_REASONS = (*PARSE_REASONS, REASON_TOO_LARGE, REASON_INTERNAL_ERROR, REASON_TOMBSTONE_WITHOUT_KEY,
                       REASON_INVALID_KEY)
ERROR_KIND_START = "start"  # the service could not start the loop (counted by the service)
ERROR_KINDS = (ERROR_KIND_START, "poll", "dead_letter", "store", "commit", "lag", "undecodable")
SKIP_DUPLICATE = "duplicate"
SKIP_STALE_REVISION = "stale_revision"
SKIP_ERASED = "erased"  # the ticket or its requester asked to be forgotten
SKIP_REASONS = (*PAIR_SKIP_REASONS, *QUALITY_REASONS, SKIP_DUPLICATE, SKIP_STALE_REVISION, SKIP_ERASED)

T = TypeVar("T")

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
LAG_INTERVAL_S = 1.0
# a broker call without an answer for this long is reported as an outage while it still waits (a paused
# or partitioned broker leaves sockets open: a dead-letter send or a commit can wait 10 s or more)
BROKER_SILENT_S = 4.0


def set_broker_up(up: bool) -> None:
    """The one writer of ticketune_kafka_up: the ingest loop's broker tracker, and the service when the
    loop cannot start at all."""
    metrics.KAFKA_UP.set(1 if up else 0)


@dataclass(frozen=True)
class SourceRecord:
    """One message of the ticket topic, as the source hands it over."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


class TicketSource(Protocol):
    """Where tickets come from (Kafka in production: `connectors.kafka.KafkaTicketSource`)."""

    max_value_bytes: int | None  # larger values are dead-lettered as too_large

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[SourceRecord]: ...

    def dead_letter(self, record: SourceRecord, reason: str, detail: str) -> None:
        """Durable when it returns."""

    def commit(self) -> None:
        """Marks everything returned by `poll` so far as done."""

    def lag(self) -> dict[int, int] | None:
        """Records not yet committed per partition, or None while unknown (no partitions assigned yet)."""

    def assigned(self) -> bool:
        """Whether the source has partitions to read yet (a consumer group's first join can take half the
        session timeout); the idle timeout counts from the first time it has."""

    def close(self) -> None: ...


class UndecodableRecords(Exception):
    """The source holds records it cannot hand over (a compression codec it cannot read): retrying cannot
    help until an operator acts, so the loop says so once, shows it in readiness and the metrics, and
    waits (nothing is skipped: the records are read once the cause is fixed)."""


class ExampleSink(Protocol):
    """`daemon.store.ExampleStore`: one durable transaction per call, an outcome per change."""

    def apply(self, changes: Sequence[Example | Deletion]) -> list[str]: ...


@dataclass
class IngestReport:
    consumed: int = 0
    stored: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0
    deleted: int = 0
    source_errors: int = 0  # failed polls, dead letters, store writes, commits (all retried)
    unassigned: bool = False  # the run ended because no partition was assigned in time

    def to_json(self) -> dict:
        return {
            "consumed": self.consumed,
            "stored": self.stored,
            "skipped": dict(sorted(self.skipped.items())),
            "dead_lettered": self.dead_lettered,
            "deleted": self.deleted,
        }


@dataclass(frozen=True)
class _Rejected:
    reason: str
    detail: str


class _Stopped(Exception):
    """`stop` was set while an operation was being retried."""


class _Retrier:
    """Retries one operation with capped exponential backoff until it succeeds or `stop` is set."""

    def __init__(self, stop: threading.Event, report: IngestReport,
                 on_broker: Callable[[bool, str], None] | None = None,
                 on_store: Callable[[bool, str], None] | None = None) -> None:
        self.stop = stop
        self.report = report
        self.delay_s = BACKOFF_INITIAL_S
        self.on_broker = on_broker
        self.on_store = on_store
        self.in_flight: tuple[str, float] | None = None  # the broker or store call under way, since when
        self._silence_reported = False
        self._undecodable_said = ""

    @contextmanager
    def tracking(self, kind: str) -> Iterator[None]:
        """Marks a call as under way, for `check_silence`."""
        self.in_flight, self._silence_reported = (kind, time.monotonic()), False
        try:
            yield
        finally:
            self.in_flight = None

    def check_silence(self) -> None:
        """Run by the watchdog thread: a broker call unanswered for BROKER_SILENT_S is an outage now."""
        current = self.in_flight
        if current is None or current[0] == "store" or self._silence_reported:
            return
        waited = time.monotonic() - current[1]
        if waited >= BROKER_SILENT_S:
            self._silence_reported = True
            log.warning("no answer from the Kafka brokers for %.0f s (%s); still waiting", waited, current[0])
            self.broker(False, f"no answer from the brokers for {waited:.0f} s ({current[0]})")

    def broker(self, up: bool, detail: str = "") -> None:
        """Whether the loop reaches the broker: the gauges, and the caller's `on_broker` (readiness details)."""
        set_broker_up(up)
        if self.on_broker is not None:
            self.on_broker(up, detail)

    def failed(self, kind: str, exc: Exception) -> None:
        self.report.source_errors += 1
        if isinstance(exc, UndecodableRecords):
            metrics.INGEST_ERRORS.labels(kind="undecodable").inc()
            self.broker(False, str(exc))
            if str(exc) != self._undecodable_said:  # one clear line, not one a retry
                self._undecodable_said = str(exc)
                log.error("ingest is stuck: %s", exc)
            self.stop.wait(self.delay_s)
            self.delay_s = min(self.delay_s * 2, BACKOFF_MAX_S)
            return
        metrics.INGEST_ERRORS.labels(kind=kind).inc()
        if kind != "store":
            self.broker(False, f"{type(exc).__name__}: {exc}")
        elif self.on_store is not None:
            self.on_store(False, f"{type(exc).__name__}: {exc}")
        log.warning(
            "ingest %s failed (%s: %s); retrying in %.1f s", kind, type(exc).__name__, exc, self.delay_s
        )
        self.stop.wait(self.delay_s)
        self.delay_s = min(self.delay_s * 2, BACKOFF_MAX_S)

    def succeeded(self, kind: str, *, reached_broker: bool = True) -> None:
        self.delay_s = BACKOFF_INITIAL_S
        if reached_broker and kind != "store":
            self.broker(True)
        if kind == "store" and self.on_store is not None:
            self.on_store(True, "")

    def call(self, kind: str, operation: Callable[[], T]) -> T:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                with self.tracking(kind):
                    result = operation()
            except Exception as exc:
                self.failed(kind, exc)
                continue
            self.succeeded(kind)
            return result


def classify(
    record: SourceRecord,
    parse: Callable[[bytes], Ticket],
    system_prompt: str | None,
    max_value_bytes: int | None,
    quality: QualityFilter | None = None,
    scrub: bool = True,
    privacy: PrivacyPolicy = DEFAULT_POLICY,
    feedback: FeedbackRules | None = None,
    outcomes: list[OutcomeRow] | None = None,
    dedupe: bool = True,
) -> Example | Deletion | Skip | _Rejected:
    """What one record asks for; bad input is a `_Rejected` (a dead letter), never an exception.

    A ticket whose first answer an adapter version drafted also gives an outcome row for online probation,
    appended to `outcomes` before the quality filters judge it (a dropped low-CSAT ticket is the signal).

    Under a preference objective (`feedback.keep_undesirable`) a ticket that `quality.min_csat` drops but
    whose CSAT is at most `feedback.bad_csat` is kept as an undesirable example the SFT part never sees.

    It only judges: a kept example comes back signed for dedupe, and `_ingest_batch` records it (or a
    deletion) in the quality filter's index. `dedupe=False` leaves out the duplicate checks, which
    `_ingest_batch` runs for the whole batch afterwards (`QualityFilter.duplicate_reason`).
    """
    if record.value is None:
        if not record.key:
            return _Rejected(REASON_TOMBSTONE_WITHOUT_KEY, "a null value needs the ticket id as its key")
        try:
            ticket_id = record.key.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _Rejected(REASON_INVALID_KEY, f"a tombstone key must be a UTF-8 ticket id: {exc}")
        return Deletion(ticket_id)
    if max_value_bytes is not None and len(record.value) > max_value_bytes:
        return _Rejected(REASON_TOO_LARGE, f"{len(record.value)} bytes, the limit is {max_value_bytes}")
    try:
        ticket = parse(record.value)
    except TicketParseError as exc:
        return _Rejected(exc.reason, exc.detail)
    if outcomes is not None and (row := outcome_row(ticket)) is not None:
        outcomes.append(row)
    sft = True
    if quality is not None and (reason := quality.check_ticket(ticket)):
        keep = (reason == REASON_LOW_CSAT and feedback is not None and feedback.keep_undesirable
                and ticket.csat is not None and ticket.csat <= feedback.bad_csat)
        if not keep:
            return Skip(ticket.ticket_id, reason)
        if other := quality.check_ticket(ticket, csat=False):
            return Skip(ticket.ticket_id, other)
        sft = False
    item = ticket_to_example(ticket, system_prompt, scrub=scrub, privacy=privacy, feedback=feedback, sft=sft)
    if quality is not None and isinstance(item, Example):
        reason, item = quality.judge(item) if dedupe else quality.screen(item)
        if reason:
            return Skip(item.ticket_id, reason)
    return item


def _update_index(quality: QualityFilter, item: Example | Deletion | Skip | _Rejected) -> None:
    """What the batch keeps counts in the dedupe index from now on, so that a copy later in the same
    batch is caught, and a deleted ticket's text is free; the store writes its part with the batch."""
    if isinstance(item, Example):
        quality.record(item)
    elif isinstance(item, Deletion):
        quality.forget(item.ticket_id)


def declare_series() -> None:
    """Creates the ingest counters' known series at 0, so that they exist before their first event
    (a rate over a missing series is no data, not 0)."""
    for reason in SKIP_REASONS:
        metrics.TICKETS_SKIPPED.labels(reason=reason)
    for reason in DEAD_LETTER_REASONS:
        metrics.DEAD_LETTERED.labels(reason=reason)
    for kind in ERROR_KINDS:
        metrics.INGEST_ERRORS.labels(kind=kind)


def run_ingest(
    source: TicketSource,
    parse: Callable[[bytes], Ticket],
    store: ExampleSink,
    *,
    system_prompt: str | None = None,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
    assignment_timeout_s: float | None = None,
    stop: threading.Event | None = None,
    on_batch: Callable[[IngestReport], None] | None = None,
    poll_timeout_s: float = 1.0,
    quality: QualityFilter | None = None,
    scrub: bool = True,
    privacy: PrivacyPolicy = DEFAULT_POLICY,
    on_broker: Callable[[bool, str], None] | None = None,
    on_store: Callable[[bool, str], None] | None = None,
    feedback: FeedbackRules | None = None,
) -> IngestReport:
    """Runs until `max_records` are consumed, `idle_timeout_s` passes without a record, or `stop` is set.

    The idle clock starts when the source first has partitions assigned; a source still unassigned after
    `assignment_timeout_s` (default: the idle timeout) ends the run with `report.unassigned` set.

    `on_batch` gets the running report after each committed batch. `scrub=False` (the config's
    `privacy.scrub: false`) stores text unscrubbed: only for testing the gate's PII check; `privacy` is
    the rest of the `privacy:` section (phone regions, the keep list, NER).
    `on_broker(up, detail)` hears whether the broker is reached (the detail says why not), and
    `on_store(ok, detail)` whether the store takes the writes (a full disk: the detail says which store).
    `feedback`: the thresholds that turn CSAT and drafts into preference data (`FeedbackRules.from_settings`).
    """
    if not scrub:
        log.warning("privacy.scrub is false: personal data is stored and trained on unscrubbed")
    stop = stop if stop is not None else threading.Event()
    report = IngestReport()
    retrier = _Retrier(stop, report, on_broker, on_store)
    started = time.monotonic()
    if assignment_timeout_s is None:
        assignment_timeout_s = idle_timeout_s
    last_record_at: float | None = None  # the idle clock: from the first assignment, then each record
    last_lag_at = float("-inf")
    lag_behind = False  # records were committed since the lag was last read
    _freeze_long_lived()
    with _silence_watchdog(retrier):
        while not stop.is_set():
            if max_records is not None and report.consumed >= max_records:
                break
            if last_record_at is None and source.assigned():
                last_record_at = time.monotonic()
            if idle_timeout_s is not None and last_record_at is not None \
                    and time.monotonic() - last_record_at >= idle_timeout_s:
                break
            if last_record_at is None and assignment_timeout_s is not None \
                    and time.monotonic() - started >= assignment_timeout_s:
                report.unassigned = True
                log.error("no partition of the topic was assigned within %.0f s; is the topic there, and is "
                          "another consumer of the group holding every partition?", assignment_timeout_s)
                break
            remaining = None if max_records is None else max_records - report.consumed
            try:
                with retrier.tracking("poll"):
                    records = source.poll(poll_timeout_s, remaining)
            except Exception as exc:  # broker unreachable, bad credentials, ...: never fatal
                retrier.failed("poll", exc)
                continue
            retrier.succeeded("poll", reached_broker=bool(records))  # an empty poll proves nothing
            if records:
                last_record_at = time.monotonic()
                try:
                    _ingest_batch(records, source, parse, store, system_prompt, report, retrier, quality, scrub,
                                  privacy, feedback)
                except _Stopped:
                    log.info("ingest stopped before a batch was stored; its records will be redelivered")
                    break
                if on_batch is not None:
                    on_batch(report)
            # at most once a LAG_INTERVAL_S (each reading is a few broker round trips), and once more at the end
            lag_behind = lag_behind or bool(records)
            if time.monotonic() - last_lag_at >= LAG_INTERVAL_S:
                last_lag_at = time.monotonic()
                lag_behind = False
                _update_lag(source, report, retrier)
        if lag_behind and not stop.is_set():  # the gauge says where this run left the partitions
            _update_lag(source, report, retrier)
    return report


def _freeze_long_lived() -> None:
    """Moves every object alive when the loop starts (modules, compiled patterns, the phone metadata, the
    clients, the configuration) out of the cyclic garbage collector's generations: they live as long as the
    process, and every full collection would walk them again while a batch's tickets come and go (about 5%
    of ingest's CPU). Reference counting still frees them; only their cycles are never looked for."""
    gc.freeze()


@contextmanager
def _silence_watchdog(retrier: _Retrier) -> Iterator[None]:
    """A thread that reports a broker call left unanswered (see `_Retrier.check_silence`)."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(1.0):
            retrier.check_silence()

    thread = threading.Thread(target=watch, name="ingest-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5.0)


def _ingest_batch(
    records: list[SourceRecord],
    source: TicketSource,
    parse: Callable[[bytes], Ticket],
    store: ExampleSink,
    system_prompt: str | None,
    report: IngestReport,
    retrier: _Retrier,
    quality: QualityFilter | None,
    scrub: bool = True,
    privacy: PrivacyPolicy = DEFAULT_POLICY,
    feedback: FeedbackRules | None = None,
) -> None:
    changes: list[Example | Deletion] = []
    skipped: Counter[str] = Counter()
    dead_lettered: Counter[str] = Counter()
    record_outcomes = getattr(store, "record_outcomes", None)  # ExampleStore: online probation's records
    outcomes: list[OutcomeRow] | None = [] if record_outcomes is not None else None
    # judged in two passes: each record alone (parse, scrub, the checks of one example, its signature), then
    # the duplicate checks in record order against the store's answers, read in a few queries for them all
    judged: list[Example | Deletion | Skip | _Rejected] = []
    for record in records:
        try:
            judged.append(classify(record, parse, system_prompt, source.max_value_bytes, quality, scrub, privacy,
                                   feedback, outcomes, dedupe=False))
        except Exception as exc:  # a bug met by one odd record must not stop the stream
            judged.append(_internal_error(record, exc))
    if quality is not None:
        try:
            quality.prefetch([item for item in judged if isinstance(item, Example)])
        except sqlite3.Error as exc:  # the per-example lookups still answer; the store's own failure shows there
            log.warning("dedupe lookups for the batch failed (%s); judging example by example", exc)
    for record, item in zip(records, judged, strict=True):
        if quality is not None and not isinstance(item, _Rejected):
            try:
                if isinstance(item, Example) and (reason := quality.duplicate_reason(item)):
                    item = Skip(item.ticket_id, reason)
                _update_index(quality, item)  # judged, now counted: before the next record is judged
            except Exception as exc:
                item = _internal_error(record, exc)
        if isinstance(item, _Rejected):
            retrier.call("dead_letter", lambda r=record, i=item: source.dead_letter(r, i.reason, i.detail))
            log.info("dead-lettered %s/%d@%d: %s", record.topic, record.partition, record.offset, item.reason)
            dead_lettered[item.reason] += 1
        elif isinstance(item, Skip):
            skipped[item.reason] += 1
        else:
            changes.append(item)

    results = retrier.call("store", lambda: store.apply(changes)) if changes else []
    if quality is not None:
        quality.committed()  # the store holds the batch now, its dedupe entries too
    if outcomes:  # before the commit: a redelivery records them again (an upsert), nothing is lost
        written = retrier.call("store", lambda: record_outcomes(outcomes))
        metrics.ONLINE_OUTCOMES.inc(written)
    stored = deleted = 0
    for outcome in results:
        if outcome in (stored_as.OUTCOME_STORED, stored_as.OUTCOME_REVISED):
            stored += 1
        elif outcome == stored_as.OUTCOME_UNCHANGED:
            skipped[SKIP_DUPLICATE] += 1
        elif outcome == stored_as.OUTCOME_STALE:
            skipped[SKIP_STALE_REVISION] += 1
        elif outcome == stored_as.OUTCOME_SUPPRESSED:
            skipped[SKIP_ERASED] += 1
        elif outcome == stored_as.OUTCOME_DELETED:
            deleted += 1

    try:
        with retrier.tracking("commit"):
            source.commit()
    except Exception as exc:  # the next commit covers these records; a restart redelivers them
        retrier.failed("commit", exc)

    report.consumed += len(records)
    report.stored += stored
    report.deleted += deleted
    report.dead_lettered += sum(dead_lettered.values())
    for reason, count in skipped.items():
        report.skipped[reason] = report.skipped.get(reason, 0) + count
    metrics.TICKETS_CONSUMED.inc(len(records))
    metrics.EXAMPLES_STORED.inc(stored)
    metrics.TICKETS_DELETED.inc(deleted)
    for reason, count in skipped.items():
        metrics.TICKETS_SKIPPED.labels(reason=reason).inc(count)
    for reason, count in dead_lettered.items():
        metrics.DEAD_LETTERED.labels(reason=reason).inc(count)


def _internal_error(record: SourceRecord, exc: Exception) -> _Rejected:
    log.exception("internal error on record %s/%d@%d", record.topic, record.partition, record.offset, exc_info=exc)
    return _Rejected(REASON_INTERNAL_ERROR, f"{type(exc).__name__} while turning the record into an example")


def _update_lag(source: TicketSource, report: IngestReport, retrier: _Retrier) -> None:
    try:
        with retrier.tracking("lag"):
            lag = source.lag()
    except Exception as exc:  # an unreachable broker shows here first: a poll just returns nothing
        report.source_errors += 1
        metrics.INGEST_ERRORS.labels(kind="lag").inc()
        retrier.broker(False, f"{type(exc).__name__}: {exc}")
        log.warning("consumer lag unavailable (%s: %s)", type(exc).__name__, exc)
        return
    retrier.broker(True)
    if lag is not None:
        metrics.CONSUMER_LAG.set(sum(lag.values()))
        for partition, records in lag.items():
            metrics.CONSUMER_LAG_BY_PARTITION.labels(partition=str(partition)).set(records)
