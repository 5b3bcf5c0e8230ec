"""Every Prometheus metric of the service, declared once; other modules import and update them.

Label values are bounded (reasons and verdicts from fixed vocabularies), never ids or text.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TICKETS_CONSUMED = Counter("ticketune_tickets_consumed_total", "Kafka records consumed from the ticket topic.")
EXAMPLES_STORED = Counter("ticketune_examples_stored_total", "Chat examples written (new or revised) to the store.")
TICKETS_SKIPPED = Counter(
    "ticketune_tickets_skipped_total", "Tickets that produced no example, by reason.", ["reason"]
)
TICKETS_DELETED = Counter("ticketune_tickets_deleted_total", "Deletion requests (tombstones) applied.")
DEAD_LETTERED = Counter(
    "ticketune_dead_lettered_total", "Records sent to the dead-letter topic, by reason.", ["reason"]
)
CONSUMER_LAG = Gauge("ticketune_consumer_lag_records", "Records on the ticket topic not yet committed.")
CONSUMER_LAG_BY_PARTITION = Gauge(
    "ticketune_consumer_lag_partition_records", "Records not yet committed, per assigned partition.", ["partition"]
)
INGEST_ERRORS = Counter(
    "ticketune_ingest_errors_total", "Ingest loop iterations that failed and were retried, by kind.", ["kind"]
)
KAFKA_UP = Gauge("ticketune_kafka_up", "1 while the ingest loop reaches the Kafka brokers, else 0 (an outage).")
STORE_EXAMPLES = Gauge("ticketune_store_examples", "Examples in the store.")
FEEDBACK_EXAMPLES = Gauge(
    "ticketune_feedback_examples", "Stored examples by kind of preference data (desirable, undesirable, pair).",
    ["kind"],
)
STORE_NEWEST_EXAMPLE_AGE = Gauge(
    "ticketune_store_newest_example_age_seconds", "Seconds since the newest example was stored (freshness)."
)
STORE_EXAMPLES_BY_CATEGORY = Gauge(
    "ticketune_store_examples_by_category",
    "Examples in the store per ticket category (the 20 largest; the rest as 'other').",
    ["category"],
)
STORE_PENDING_EXAMPLES = Gauge(
    "ticketune_store_pending_examples", "Examples stored since the last cycle that promoted or rejected."
)

ERASURES_PENDING = Gauge(
    "ticketune_erasures_pending",
    "Erasure requests whose model versions are not yet tagged in the registry as trained on erased data.",
)
RETENTION_DELETED = Counter("ticketune_retention_deleted_total", "Examples deleted by the retention policy.")

CYCLES = Counter("ticketune_cycles_total", "Retrain cycles by verdict.", ["verdict"])
CYCLE_RUNNING = Gauge("ticketune_cycle_running", "1 while a retrain cycle is running.")
CYCLE_DURATION = Histogram(
    "ticketune_cycle_duration_seconds",
    "Wall time of retrain cycles that trained.",
    buckets=(30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800),
)
LAST_SUCCESSFUL_CYCLE = Gauge(
    "ticketune_last_successful_cycle_timestamp_seconds",
    "Unix time the last cycle reached the gate's decision (promoted, rejected or awaiting approval), read from the "
    "store's journal: it survives restarts and counts cycles run by the CLI (0: none yet).",
)
CHAMPION_EVAL_LOSS = Gauge(
    "ticketune_champion_eval_loss_nats",
    "Eval loss of the current champion on its trusted set, as recorded at its cycle (nats/token; NaN: no champion, "
    "or one without the figure). It follows every move, whichever process or tool made it.",
)
CANDIDATE_EVAL_LOSS = Gauge(
    "ticketune_candidate_eval_loss_nats", "Eval loss of the last candidate on the trusted set (nats/token)."
)
CHAMPION_VERSION = Gauge("ticketune_champion_version", "Registered model version serving as champion (0: none).")
# The training gauges describe the running worker's last training step; all read 0 while no worker trains
# (a finished cycle's figures are in its MLflow run).
TRAINING_TOKENS_PER_SECOND = Gauge(
    "ticketune_training_tokens_per_second", "Training throughput of the running worker (0: none runs)."
)
TRAINING_STEP = Gauge("ticketune_training_step", "Optimizer step the running training worker reached (0: none runs).")
TRAINING_TOTAL_STEPS = Gauge(
    "ticketune_training_total_steps", "Optimizer steps planned for the running worker (0: none runs)."
)
TRAINING_LOSS = Gauge(
    "ticketune_training_loss_nats", "Training loss of the running worker at its last step (nats/token; 0: none runs)."
)
TRAINING_ETA = Gauge(
    "ticketune_training_eta_seconds", "Estimated seconds until the running worker finishes training (0: none runs)."
)

SERVING_NOTIFICATIONS = Counter(
    "ticketune_serving_notifications_total",
    "Champion changes sent to serving targets, by target kind and outcome "
    "(delivered, failed: kept for a retry, refused: the target cannot load that adapter, superseded).",
    ["target_kind", "outcome"],
)
SERVING_PENDING = Gauge(
    "ticketune_serving_notifications_pending",
    "Champion changes a serving target has not accepted yet; the service re-sends them until it does.",
)
SERVING_LAST_SUCCESS = Gauge(
    "ticketune_serving_last_success_timestamp_seconds",
    "Unix time a serving target last accepted a champion change, by target kind.",
    ["target_kind"],
)

CHAMPION_MOVES = Counter(
    "ticketune_champion_moves_total",
    "Moves of the champion alias, by action (promote, approve, rollback, outside_move).",
    ["action"],
)
OUTSIDE_MOVES = Counter(
    "ticketune_outside_alias_moves_total",
    "Champion alias moves made outside ticketune (the MLflow UI or API), by whether the new champion passed the gate.",
    ["gate"],
)
CHAMPION_FAILED_GATE = Gauge(
    "ticketune_champion_failed_gate",
    "1 while the champion is a version the gate did not pass (forced by an operator); alert on it.",
)
AWAITING_APPROVAL = Gauge(
    "ticketune_candidates_awaiting_approval",
    "Candidates that passed the gate and wait for `ticketune approve` (gate.approval: manual).",
)

# online probation (daemon/champion/online.py): each new champion's served outcomes against its predecessor's
ONLINE_OUTCOMES = Counter(
    "ticketune_online_outcomes_total",
    "Resolved tickets recorded with the adapter version that drafted their first answer.",
)
ONLINE_CSAT = Gauge(
    "ticketune_online_csat",
    "Mean CSAT over the probation's compared tickets of the champion and of the version it replaced.", ["role"],
)
ONLINE_DRAFT_ACCEPTANCE = Gauge(
    "ticketune_online_draft_acceptance",
    "Share of drafts sent as is or barely edited, over the probation's compared tickets, by role.", ["role"],
)
ONLINE_PROBATION_TICKETS = Gauge(
    "ticketune_online_probation_tickets",
    "Resolved tickets drafted by the champion since it took over (its probation's sample so far).",
)
ONLINE_CHAMPION_WORSE = Gauge(
    "ticketune_online_champion_worse",
    "1 while the champion's online probation finds it worse than the version it replaced by more than a margin.",
)
