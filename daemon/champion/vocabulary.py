"""The words of a version's life: the `ticketune.*` tag names, verdicts, registration states, the
actions of the audit log. Defined here once; the registry adapter receives them as data, the cycle
and the keeper read them from here. Pure constants: importing this module imports nothing else.
"""

from __future__ import annotations

TAG_PREFIX = "ticketune."

# on a cycle's run and on the version registered from it
TAG_CYCLE_ID = "ticketune.cycle_id"
TAG_ATTEMPT = "ticketune.attempt"
TAG_SNAPSHOT_ID = "ticketune.snapshot_id"
TAG_EVAL_SNAPSHOT_ID = "ticketune.eval_snapshot_id"
TAG_BASE_MODEL = "ticketune.base_model"
TAG_BASE_REVISION = "ticketune.base_revision"
TAG_BASE_FINGERPRINT = "ticketune.base_model_fingerprint"
TAG_PARENT = "ticketune.parent_champion"
TAG_CONFIG_HASH = "ticketune.config_hash"
TAG_CODE_VERSION = "ticketune.code_version"

# the gate's judgement, on the version
TAG_STATE = "ticketune.state"  # registering -> complete (or abandoned)
TAG_VERDICT = "ticketune.verdict"
TAG_REASONS = "ticketune.reasons"
TAG_METRICS = "ticketune.metrics"
TAG_GATE = "ticketune.gate"
TAG_ADAPTER_METHOD = "ticketune.adapter_method"
TAG_OBJECTIVE = "ticketune.objective"  # training.objective: sft, kto, dpo, sft+kto, sft+dpo (absent: sft)
TAG_GATE_PROFILE = "ticketune.gate_profile"
TAG_GATE_APPROVAL = "ticketune.gate_approval"
TAG_REFERENCE = "ticketune.reference"
TAG_LINEAGE_BREAK = "ticketune.lineage_break"
TAG_REPORT = "ticketune.report"
TAG_ABANDONED_REASON = "ticketune.abandoned_reason"

# champion moves, on the version
TAG_PROMOTED_AT = "ticketune.promoted_at"
TAG_PROMOTED_BY = "ticketune.promoted_by"
TAG_PROMOTION_REASON = "ticketune.promotion_reason"
TAG_PROMOTION_FORCED = "ticketune.promotion_forced"
TAG_ROLLED_BACK_AT = "ticketune.rolled_back_at"
TAG_ROLLBACK_REASON = "ticketune.rollback_reason"
TAG_APPROVED_BY = "ticketune.approved_by"
TAG_APPROVED_AT = "ticketune.approved_at"
TAG_APPROVAL_REASON = "ticketune.approval_reason"
TAG_ONLINE_ROLLED_BACK = "ticketune.online_rolled_back"  # the figures, when the online monitor rolled it back
TAG_ONLINE_PROBATION = "ticketune.online_probation"  # the probation's latest figures (JSON), updated as it goes

# erasure (a version trained on examples erased since)
TAG_TRAINED_ON_ERASED = "ticketune.trained_on_erased_data"
TAG_ERASURE_REQUESTED_AT = "ticketune.erasure_requested_at"

# verdicts: a version's (promoted, rejected, awaiting_approval, abandoned) and a cycle's (also skipped, failed)
VERDICT_PROMOTED = "promoted"
VERDICT_REJECTED = "rejected"
VERDICT_AWAITING_APPROVAL = "awaiting_approval"  # passed the gate; gate.approval is manual
VERDICT_ABANDONED = "abandoned"
VERDICT_SKIPPED = "skipped"
VERDICT_FAILED = "failed"
CYCLE_VERDICTS = (VERDICT_PROMOTED, VERDICT_REJECTED, VERDICT_AWAITING_APPROVAL, VERDICT_SKIPPED, VERDICT_FAILED)

# registration states (TAG_STATE); a version without the tag predates it and is complete
STATE_REGISTERING = "registering"
STATE_COMPLETE = "complete"
STATE_ABANDONED = "abandoned"

# the audit log's actions and actors
ACTION_PROMOTE = "promote"
ACTION_APPROVE = "approve"
ACTION_ROLLBACK = "rollback"
ACTION_OUTSIDE_MOVE = "outside_move"
ACTION_OBSERVED = "observed"
COUNTED_ACTIONS = (ACTION_PROMOTE, ACTION_APPROVE, ACTION_ROLLBACK, ACTION_OUTSIDE_MOVE)  # champion_moves_total
OUTSIDE_ACTOR = "outside ticketune"
ONLINE_ACTOR = "online-monitor"  # the online probation's automatic rollback
