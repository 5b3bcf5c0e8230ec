"""The rules of a version's life, as pure functions of its tags and the audit log's rows.

- a version may become champion only when its registration is complete, and one the gate
  rejected only with --force (`refusal`, `check_promotable`);
- which moves are recorded as forced (`is_forced`);
- when approving is a repeat, and when it is refused (`approval_is_repeat`);
- where a rollback goes (`rollback_target`): by default to the champion the current one replaced
  when it was promoted; repeated rollbacks walk back like an undo stack. The stack is replayed from
  the store's audit log (`champion_stack`), moves made outside ticketune included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from connectors.registry import RegistryError
from daemon.champion.vocabulary import (
    ACTION_APPROVE,
    ACTION_OBSERVED,
    ACTION_OUTSIDE_MOVE,
    ACTION_PROMOTE,
    ACTION_ROLLBACK,
    STATE_COMPLETE,
    TAG_APPROVED_BY,
    TAG_ONLINE_ROLLED_BACK,
    TAG_STATE,
    TAG_VERDICT,
    VERDICT_AWAITING_APPROVAL,
    VERDICT_PROMOTED,
    VERDICT_REJECTED,
)


class NoChampionError(RegistryError):
    """There is no champion, or no earlier champion to roll back to."""


class PromotionRefusedError(RegistryError):
    """The version may not become champion (rejected by the gate and not forced, or not complete)."""


class ApprovalError(ValueError):
    """The version is not awaiting approval (the message says what it is)."""


# A refusal names the CLI's flag that overrides it; the admin API says the request field instead.
_API_WORDS = (("`ticketune promote --force`", 'POST /v1/promote with "force": true'),
              ("--force", '"force": true'), ("--to VERSION", '"to": "VERSION"'))


def in_api_words(message: str) -> str:
    """A refusal's message as the admin API says it: each CLI flag becomes the request field that does the same."""
    for cli, api in _API_WORDS:
        message = message.replace(cli, api)
    return message


def version_state(tags: Mapping[str, str]) -> str:
    """A version's registration state; versions registered before the state tag existed are complete."""
    return tags.get(TAG_STATE) or STATE_COMPLETE


def refusal(version: str, tags: Mapping[str, str], *, force: bool) -> str | None:
    """Why `version` may not become champion, or None. An incomplete version is refused even when forced."""
    state = version_state(tags)
    if state != STATE_COMPLETE:
        return (f"version {version} is {state}: its registration did not finish, so it never becomes champion "
                "(`ticketune history` shows it).")
    if tags.get(TAG_VERDICT) == VERDICT_REJECTED and not force:
        return f"version {version} was rejected by the gate; promote it with --force to override."
    if tags.get(TAG_ONLINE_ROLLED_BACK) and not force:
        return (f"version {version} was rolled back by the online monitor (its customers were worse off: "
                f"{tags[TAG_ONLINE_ROLLED_BACK]}); promote it with --force to override.")
    return None


def check_promotable(version: str, tags: Mapping[str, str], *, force: bool) -> None:
    """Raises `PromotionRefusedError` unless `version` may become champion."""
    why_not = refusal(version, tags, force=force)
    if why_not:
        raise PromotionRefusedError(why_not)


def is_forced(action: str, tags: Mapping[str, str] | None, *, force: bool = False) -> bool:
    """Whether a move to a version with `tags` is recorded as forced.

    A promotion or approval is forced when --force was given; a rollback also when it goes to a
    version the gate rejected; a move outside ticketune when the version did not pass the gate
    (an alias removed outside, `tags` None, is not forced).
    """
    if action == ACTION_OUTSIDE_MOVE:
        return tags is not None and tags.get(TAG_VERDICT) not in (VERDICT_PROMOTED, VERDICT_AWAITING_APPROVAL)
    if action == ACTION_ROLLBACK:
        return force or (tags or {}).get(TAG_VERDICT) == VERDICT_REJECTED
    return force


def approval_is_repeat(version: str, tags: Mapping[str, str]) -> bool:
    """True when `version` was approved before (a repeat, or a crash before the move); False when it
    awaits approval now; raises `ApprovalError` for any other version."""
    verdict = tags.get(TAG_VERDICT)
    if verdict == VERDICT_PROMOTED and tags.get(TAG_APPROVED_BY):
        return True
    if verdict != VERDICT_AWAITING_APPROVAL:
        raise ApprovalError(
            f"version {version} is {verdict or 'not judged'}, not awaiting approval; "
            + ("`ticketune promote --force` overrides the gate." if verdict == VERDICT_REJECTED
               else "only a candidate that passed the gate under gate.approval: manual waits for it.")
        )
    return False


# ---- the undo stack ----------------------------------------------------------------------------

def _arrive(stack: list[str], version: str, action: str) -> None:
    """Puts the champion a move made on the stack of champions (the newest on top)."""
    if stack and stack[-1] == version:
        return
    if action in (ACTION_PROMOTE, ACTION_APPROVE):
        stack.append(version)
    elif version in stack:  # back to an earlier champion: what was above it is undone
        del stack[len(stack) - stack[::-1].index(version):]
    elif action == ACTION_ROLLBACK:  # `rollback --to` a version never champion: it takes the top's place
        stack[-1:] = [version]
    else:  # an outside move to a new version is the operator's promotion
        stack.append(version)


def champion_stack(moves: Iterable[Mapping], current: str | None = None) -> list[str]:
    """The champions, oldest first, that rollbacks walk back through, replayed from the audit log's
    rows (oldest first; only `done` moves count), then from `current` (the alias now).

    A promotion or approval pushes its version; a rollback or an outside move to an earlier
    champion pops back to it; an outside move to another version pushes it; the first look
    (`observed`) starts the stack. A move whose `previous` is not the top (a move nobody recorded)
    is first taken as an outside move to that previous champion, and so is `current`.
    """
    stack: list[str] = []
    for move in moves:
        version = move.get("version")
        if move.get("state") != "done" or version is None:
            continue
        version = str(version)
        if move.get("action") == ACTION_OBSERVED:
            stack = [version]
            continue
        previous = move.get("previous")
        if previous is not None and (not stack or stack[-1] != str(previous)):
            _arrive(stack, str(previous), ACTION_OUTSIDE_MOVE)
        _arrive(stack, version, str(move.get("action")))
    if current is not None:
        _arrive(stack, str(current), ACTION_OUTSIDE_MOVE)
    return stack


def previous_champion(moves: Iterable[Mapping], current: str) -> str:
    """The champion `current` replaced when it was promoted, walking back over earlier rollbacks."""
    stack = champion_stack(moves, current)
    if len(stack) < 2:
        raise NoChampionError(
            f"version {current} was the first champion recorded in the audit log; there is no earlier one to "
            "roll back to (name a version with --to VERSION)."
        )
    return stack[-2]


def rollback_target(current: str | None, to_version: str | None, *, moves: Iterable[Mapping],
                    tags_of: Callable[[str], Mapping[str, str]], force: bool = False,
                    model: str = "the model", alias: str = "champion") -> str:
    """The version a rollback from `current` moves to: `to_version`, else `previous_champion`.

    `tags_of` reads a version's tags (raising for an unknown version). A version the gate rejected
    is a target only with `force` when named as `to_version`; the previous champion was champion
    before (forced or not), so it is not checked for that.
    """
    if current is None:
        raise NoChampionError(f"model {model} has no {alias!r} version to roll back from.")
    target = str(to_version) if to_version is not None else previous_champion(moves, current)
    if target == current:
        raise RegistryError(f"version {target} is already the champion; nothing to roll back.")
    why_not = refusal(target, tags_of(target), force=force or to_version is None)
    if why_not:
        raise PromotionRefusedError(why_not.replace("promote it with", "roll back to it with"))
    return target


def champion_move(moves: Iterable[Mapping], champion: str | None) -> Mapping | None:
    """The newest done move in the audit log (oldest first) that made `champion` the champion."""
    found = None
    for move in moves:
        if champion is not None and move.get("state") == "done" and str(move.get("version")) == champion:
            found = move
    return found


def champion_since(moves: Iterable[Mapping], champion: str | None) -> str | None:
    """When `champion` last became the champion: the time of the newest done move to it."""
    move = champion_move(moves, champion)
    return move.get("at") if move is not None else None
