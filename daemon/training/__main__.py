"""Command line of the training worker: `python -m daemon.training make-base-model DIR | train --spec SPEC |
export-merged ... | probe ... | run-job --tracking-uri URI --run-id RUN` (the worker in a Kubernetes Job).

`train` always leaves `output_dir/result.json` (written atomically, by rank 0 under torchrun) when the
spec names an output_dir: status ok and exit 0; status failed with a one-sentence error and exit 2
(spec, model or data problem the user can fix) or 1 (anything else); or status interrupted and exit 3
(SIGTERM: a checkpoint was saved, and a retry of the same cycle resumes from it). Progress goes to
stderr and the spec's progress file, without ticket text.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if __name__ == "__main__":
    from daemon.training.allocator import exec_with_tuned_allocator

    exec_with_tuned_allocator()  # glibc reads its malloc tunables at start: once, before torch is imported

from pydantic import ValidationError  # noqa: E402

from daemon.training.base_model import DEFAULT_PRETRAIN_STEPS, make_base_model  # noqa: E402
from daemon.training.contract import (  # noqa: E402
    EXIT_BAD_SPEC,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    RESULT_FILE,
    TrainResult,
    failure_result,
)
from daemon.training.contract import write_result as write_result_file  # noqa: E402
from daemon.training.lifeline import die_with_parent  # noqa: E402
from daemon.training.lora_recipe import run_training  # noqa: E402
from daemon.training.preparation import versions  # noqa: E402
from daemon.training.spec import SpecError, load_spec, load_spec_json  # noqa: E402
from daemon.training.train_loop import Interrupted  # noqa: E402

log = logging.getLogger("daemon.training")


def main(argv: list[str] | None = None) -> int:
    summary = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="python -m daemon.training", description=summary)
    verbs = parser.add_subparsers(dest="verb", required=True)
    base = verbs.add_parser("make-base-model", help="build a base model directory into DIR: the tiny random one, "
                                                   "or a real pre-trained one from a GGUF file")
    base.add_argument("dir", type=Path)
    source = base.add_mutually_exclusive_group()
    source.add_argument("--pretrained", metavar="NAME", help="a packaged real model, e.g. smollm2-135m-instruct")
    source.add_argument("--from-gguf", type=Path, metavar="FILE", help="a Llama-architecture GGUF file")
    base.add_argument("--seed", type=int, default=0)
    base.add_argument("--steps", type=int, default=DEFAULT_PRETRAIN_STEPS, help="pretraining steps")
    train = verbs.add_parser("train", help="train and evaluate an adapter as the spec says")
    train.add_argument("--spec", type=Path, required=True)
    merged = verbs.add_parser("export-merged", help="merge an adapter into its full-precision base and save it")
    merged.add_argument("--base", required=True, help="the base model directory or hub id")
    merged.add_argument("--revision", default=None)
    merged.add_argument("--adapter", type=Path, required=True, help="an adapter directory the worker saved")
    merged.add_argument("--out", type=Path, required=True)
    probe = verbs.add_parser("probe", help="load base + adapter as a server would and answer prompts greedily")
    probe.add_argument("--base", required=True, help="the base model directory or hub id")
    probe.add_argument("--revision", default=None)
    probe.add_argument("--adapter", type=Path, required=True, help="the adapter directory to probe")
    probe.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                       help="another adapter to answer the same prompts (repeatable), e.g. champion=DIR")
    probe.add_argument("--prompts", type=Path, required=True, help="JSON list of {id, messages}")
    probe.add_argument("--out", type=Path, required=True, help="where to write the probe's JSON")
    probe.add_argument("--max-new-tokens", type=int, default=96)
    probe.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    probe.add_argument("--samples", type=Path, default=None,
                       help="JSON list of {id, messages, reference}: sampled questions whose answers are scored")
    probe.add_argument("--sample-max-new-tokens", type=int, default=64)
    probe.add_argument("--with-base", action="store_true", help="the base model (adapter disabled) answers too")
    probe.add_argument("--embedding-model", type=Path, default=None,
                       help="sentence-embedding model directory scoring the sampled answers")
    job = verbs.add_parser("run-job", help="inside a Kubernetes Job: train on the spec and data of an MLflow run "
                                           "and log the result, adapter and checkpoints back to it")
    job.add_argument("--tracking-uri", required=True)
    job.add_argument("--run-id", required=True)
    job.add_argument("--scratch", type=Path, default=Path("/scratch"), help="where the inputs and outputs live")
    job.add_argument("--base-model", default=None, help="model.base as this container sees it (default: the spec's)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if args.verb in ("train", "probe", "run-job", "export-merged"):
        from daemon.training.threads import apply_cpu_threads

        apply_cpu_threads()
    if args.verb == "make-base-model" and (args.pretrained or args.from_gguf):
        return pretrained_command(args.dir, args.pretrained, args.from_gguf)
    if args.verb == "make-base-model":
        if args.steps < 0:
            parser.error("--steps must be 0 or more")
        description = make_base_model(args.dir, seed=args.seed, steps=args.steps)
        log.info(
            "base model written dir=%s parameters=%d final_loss=%s seconds=%.1f",
            args.dir,
            description["parameters"],
            description["final_loss"],
            description["seconds"],
        )
        return 0
    if args.verb == "export-merged":
        return export_command(args.base, args.revision, args.adapter, args.out)
    if args.verb == "probe":
        from daemon.training.probe import probe_command

        compare = dict(item.split("=", 1) for item in args.compare if "=" in item)
        if len(compare) != len(args.compare) or args.max_new_tokens < 1:
            parser.error("--compare takes NAME=DIR and --max-new-tokens 1 or more")
        return probe_command(args.base, args.revision, args.adapter, {k: Path(v) for k, v in compare.items()},
                             args.prompts, args.out, args.max_new_tokens, args.device, samples_file=args.samples,
                             sample_max_new_tokens=args.sample_max_new_tokens, with_base=args.with_base,
                             embedding_model=args.embedding_model)
    if args.verb == "run-job":
        from daemon.training.job import run_job

        return run_job(args.tracking_uri, args.run_id, args.scratch, base_model=args.base_model)
    return train_command(args.spec)


def pretrained_command(out_dir: Path, name: str | None, gguf_file: Path | None) -> int:
    from daemon.training.pretrained import make_pretrained_model, packaged_gguf

    try:
        source = name or str(gguf_file)
        description = make_pretrained_model(out_dir, gguf_file=packaged_gguf(name) if name else gguf_file,
                                            source=source)
    except SpecError as exc:
        log.error("make-base-model failed: %s", exc)
        return EXIT_BAD_SPEC
    log.info("base model written dir=%s source=%s parameters=%d seconds=%.1f", out_dir, source,
             description["parameters"], description["seconds"])
    return 0


def export_command(base: str, revision: str | None, adapter_dir: Path, out_dir: Path) -> int:
    from daemon.training.adapters import export_merged
    from daemon.training.methods import UnsupportedAdapter

    try:
        path = export_merged(base, adapter_dir, out_dir, revision=revision)
    except (SpecError, UnsupportedAdapter) as exc:
        log.error("export failed: %s", exc)
        return EXIT_BAD_SPEC
    log.info("merged model written dir=%s", path)
    return 0


def train_command(spec_path: Path) -> int:
    started = time.perf_counter()
    output_dir: Path | None = None
    cycle_id = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # checkpoint at the end of the step, then exit 3
    die_with_parent()
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        raw = load_spec_json(spec_path)  # where to report a spec that does not validate
        if isinstance(raw.get("output_dir"), str):
            Path(raw["output_dir"]).mkdir(parents=True, exist_ok=True)
            output_dir = Path(raw["output_dir"])
            if main_rank:  # a killed run must not leave an old one
                (output_dir / RESULT_FILE).unlink(missing_ok=True)
        cycle_id = raw.get("cycle_id")
        result = run_training(load_spec(spec_path), stop_requested=stop.is_set)
    except SpecError as exc:
        return _fail(output_dir if main_rank else None, cycle_id, str(exc), EXIT_BAD_SPEC)
    except Interrupted as exc:
        return _fail(output_dir if main_rank else None, cycle_id, str(exc), EXIT_INTERRUPTED, "interrupted")
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        reason = (str(exc).strip().splitlines() or [""])[0]
        return _fail(
            output_dir if main_rank else None,
            cycle_id,
            f"training failed with {type(exc).__name__}: {reason}",
            EXIT_FAILED,
        )
    if result is None:  # not rank 0: rank 0 writes the result
        return EXIT_OK
    try:
        result = TrainResult.model_validate(result)
    except ValidationError as exc:  # a worker bug: say so in the result rather than leave none
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        return _fail(output_dir, cycle_id, f"the worker's result does not match contract.TrainResult: {where}: "
                     f"{first['msg']}", EXIT_FAILED)
    write_result(output_dir, result)
    log.info("done cycle_id=%s seconds=%.1f", cycle_id, time.perf_counter() - started)
    return EXIT_OK


def _fail(output_dir: Path | None, cycle_id: Any, error: str, code: int, status: str = "failed") -> int:
    log.error("%s: %s", status, error)
    if output_dir is not None:
        try:
            write_result(output_dir, failure_result(status, error, code, cycle_id, versions()))
        except OSError as exc:
            log.error("could not write result.json into %s: %s", output_dir, exc)
    return code


def write_result(output_dir: Path, result: TrainResult | dict[str, Any]) -> None:
    """Validated against `contract.TrainResult`, then temp file and rename, so a reader sees either no
    result.json or a whole one."""
    write_result_file(output_dir, result)


if __name__ == "__main__":
    sys.exit(main())
