"""Does preference tuning help? An `sft` cycle and an `sft+kto` (or `sft+dpo`) cycle on the same data.

Pinned: `produce-sample --feedback` tickets (seed 11; `--tickets`, default 160): a quarter answered with
another intent's answer and rated 1-2 (undesirable), the rest rated 3-5, four in ten with a model draft
sent as is, edited or discarded. Each objective runs one real cycle (the service's CycleRunner: snapshot,
worker, gate, MLflow registration) in its own store and MLflow store, from the same tickets, on the base
model (`--base`, default /work/models/smollm2: SmolLM2-135M-Instruct), with the same training settings.
The figure is the gate's `feedback_accuracy` on held-out feedback (the batch's held-out part: good vs bad
answers by AUC, sent answers vs drafts by accuracy), for each cycle's candidate and for the base model.
Only the preference check and the loss checks run (no probe: this measures likelihoods, not generations).
Each cycle's gate reasons are printed under its figure. The last line printed is a JSON object:
{"sft_feedback_accuracy": x, "<objective>_feedback_accuracy": y, "<objective>_gain": y - x,
"<objective>_verdict": v, "base_feedback_accuracy": b, ...} for each preference objective run.

    python bench/feedback_accuracy.py [--base DIR] [--tickets N] [--objective sft+kto|sft+dpo|both] [--max-steps N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.app.wiring import build_cycle_runner, build_registry  # noqa: E402
from daemon.config import load_settings  # noqa: E402
from daemon.demo.samples import generate_tickets  # noqa: E402
from daemon.ingest.feedback import FeedbackRules  # noqa: E402
from daemon.ingest.pairs import Example, ticket_to_example  # noqa: E402
from daemon.store import ExampleStore  # noqa: E402
from daemon.tickets import ticket_from_dict  # noqa: E402

TICKET_SEED = 11


def run_cycle(base: str, work: Path, objective: str, tickets: list[dict], max_steps: int) -> dict:
    env = {
        "TICKETUNE_STORE__PATH": str(work / "examples.db"), "TICKETUNE_MODEL__BASE": base,
        "TICKETUNE_REGISTRY__TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "TICKETUNE_TRAINING__WORK_DIR": str(work / "cycles"), "TICKETUNE_TRAINING__OBJECTIVE": objective,
        "TICKETUNE_TRAINING__MAX_STEPS": str(max_steps), "TICKETUNE_TRAINING__MAX_SEQ_LEN": "512",
        "TICKETUNE_TRAINING__ROW_TOKENS": "2048", "TICKETUNE_TRAINING__LEARNING_RATE": "0.0002",
        "TICKETUNE_TRAINING__EARLY_STOP_PATIENCE": "0", "TICKETUNE_GATE__MIN_EVAL_EXAMPLES": "8",
        "TICKETUNE_GATE__MIN_FEEDBACK_EXAMPLES": "4", "TICKETUNE_GATE__CHECK_SERVABLE": "false",
        "TICKETUNE_GATE__CHECK_BEHAVIOUR": "false", "TICKETUNE_GATE__CHECK_ANSWERS": "false",
        "TICKETUNE_GATE__CHECK_RELEVANCE": "false", "TICKETUNE_GATE__MAX_GENERAL_LOSS_INCREASE": "null",
    }
    settings = load_settings(environ=env)
    store = ExampleStore(settings.store.path, settings.store.eval_fraction)
    rules = FeedbackRules.from_settings(settings)
    made = [ticket_to_example(ticket_from_dict(raw), settings.model.system_prompt, feedback=rules) for raw in tickets]
    store.apply([item for item in made if isinstance(item, Example)])
    started = time.perf_counter()
    try:
        outcome = build_cycle_runner(settings, store, build_registry(settings)).run(trigger="bench", force=True)
    finally:
        store.close()
    if "feedback_accuracy_candidate" not in outcome.metrics:
        raise SystemExit(f"{objective}: the cycle scored no feedback ({outcome.verdict}: {outcome.reasons})")
    return {"verdict": outcome.verdict, "reasons": list(outcome.reasons),
            "seconds": round(time.perf_counter() - started, 1), **outcome.metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="/work/models/smollm2")
    parser.add_argument("--tickets", type=int, default=160)
    parser.add_argument("--objective", default="sft+kto", choices=("sft+kto", "sft+dpo", "both"),
                        help="the preference objective run beside sft; both: sft+kto and sft+dpo")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--without-sft", action="store_true",
                        help="leave out the sft cycle (its figure from an earlier run of the same tickets)")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ticketune-feedback-bench-"))
    tickets = generate_tickets(args.tickets, seed=TICKET_SEED, feedback=True)
    runs = {}
    preference = ("sft+kto", "sft+dpo") if args.objective == "both" else (args.objective,)
    for objective in (*(() if args.without_sft else ("sft",)), *preference):
        runs[objective] = run_cycle(args.base, work / objective.replace("+", "-"), objective, tickets, args.max_steps)
        found = runs[objective]
        print(f"{objective}: feedback accuracy candidate {found['feedback_accuracy_candidate']:.4f}, "
              f"base {found['feedback_accuracy_reference']:.4f} on {found['feedback_examples']:.0f} "
              f"held-out examples ({found['verdict']}, {found['seconds']} s)", flush=True)
        for reason in found["reasons"]:
            print(f"  {objective} gate: {reason}", flush=True)
    first = runs[next(iter(runs))]
    sft = runs["sft"]["feedback_accuracy_candidate"] if "sft" in runs else None
    figures = {"sft_feedback_accuracy": sft, "sft_verdict": runs["sft"]["verdict"] if "sft" in runs else None,
               "base_feedback_accuracy": first["feedback_accuracy_reference"]}
    for objective in preference:
        figures[f"{objective}_feedback_accuracy"] = runs[objective]["feedback_accuracy_candidate"]
        if sft is not None:
            figures[f"{objective}_gain"] = round(runs[objective]["feedback_accuracy_candidate"] - sft, 4)
        figures[f"{objective}_verdict"] = runs[objective]["verdict"]
    print(json.dumps({**figures, "feedback_examples": first["feedback_examples"],
                      "tickets": args.tickets, "max_steps": args.max_steps, "base": args.base}))


if __name__ == "__main__":
    main()
