"""Text tables for people: the version history that `ticketune history` and the demo print."""

from __future__ import annotations


def history_table(rows: list[dict]) -> str:
    """Newest first: version, created, objective, verdict, key metrics (feedback: the candidate's feedback
    accuracy on held-out feedback), the champion and since when; a line
    marks where a new base model started a new lineage."""
    from daemon.champion.vocabulary import TAG_BASE_MODEL, TAG_PROMOTION_FORCED

    if not rows:
        return "no versions registered yet"

    def number(metrics: dict, key: str) -> str:
        value = metrics.get(key)
        return f"{value:.4f}" if isinstance(value, (int, float)) else "-"

    header = (f"{'version':<8} {'created (UTC)':<21} {'objective':<9} {'verdict':<18} {'eval loss':>9} "
              f"{'reference':>9} {'gain':>8} {'feedback':>8}  champion")
    lines = [header, "-" * len(header)]
    for index, row in enumerate(rows):
        m = row.get("metrics") or {}
        reference = m.get("champion_eval_loss", m.get("base_eval_loss"))
        loss = m.get("candidate_eval_loss")
        gain = f"{reference - loss:+.4f}" if isinstance(reference, (int, float)) and isinstance(loss, (int, float)) \
            else "-"
        verdict = row.get("verdict") or "-"
        if row.get("state") not in (None, "complete"):
            verdict = row["state"]
        if (row.get("tags") or {}).get(TAG_PROMOTION_FORCED) == "true":
            verdict += " (forced)"
        champion = f"<- champion since {row['champion_since'] or '?'}" if row.get("champion") else ""
        lines.append(f"v{row['version']:<7} {(row.get('created_at') or '-'):<21} {row.get('objective') or 'sft':<9} "
                     f"{verdict:<18} {number(m, 'candidate_eval_loss'):>9} {number({'r': reference}, 'r'):>9} "
                     f"{gain:>8} {number(m, 'feedback_accuracy_candidate'):>8}  {champion}")
        older = rows[index + 1] if index + 1 < len(rows) else None
        if older is not None and row.get("base_model_fingerprint") and older.get("base_model_fingerprint") \
                and row["base_model_fingerprint"] != older["base_model_fingerprint"]:
            base = (row.get("tags") or {}).get(TAG_BASE_MODEL, "?")
            lines.append(f"{'':8} ---- new base model from v{row['version']} on: {base} "
                         f"({row['base_model_fingerprint']}); earlier versions are another lineage ----")
    return "\n".join(lines)
