"""A version's life, in one place: registration and abandonment, erasure tagging, the champion's
moves (promote, approve, rollback, outside moves), their rules and their audit.

- vocabulary.py: the tag names, verdicts, states and audit actions (pure constants);
- rules.py: what may become champion, which moves are forced, approval repeats, the rollback
  target from the store's audit log (pure functions);
- versions.py: registering, completing, abandoning and erasure-tagging versions; the history view;
- keeper.py: `ChampionKeeper`, which makes, watches, audits and reconciles the champion's moves.

Kept free of imports here, so that connectors/registry.py can read the vocabulary without
pulling in the rest.
"""
