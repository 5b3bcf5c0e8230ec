"""Security: the admin API's token, personal data and secrets end to end, on real processes.

- The admin API is off (403 on every admin path) without `server.admin_token`; with one, a missing or
  wrong token (wrong scheme, empty bearer, a prefix or an extension of the token, the token in the
  query string) answers 401 and changes nothing: no cycle starts, the champion does not move.
- The labelled PII corpus (tests/data/pii/corpus.jsonl), turned into tickets whose customer messages,
  internal notes and agent answers carry the snippets and whose people are the corpus' requesters and
  agents, goes through the broker: in the full profile with `ticketune demo --extra-tickets`, in the
  quick one through a `ticketune run` service and one cycle. Afterwards no labelled value may appear in
  the logs (service and training worker), `/metrics`, MLflow (params, tags, metric keys, version tags,
  the report and every other text artifact), nor, for the types the scrubber claims to catch
  (`MIN_RECALL` of tests/test_pii_corpus.py) and the tickets' own people, in the store.
- Sentinel secrets in every secret config field (from the file and from `TICKETUNE_<SECTION>__<KEY>`
  env vars), an MLflow URL password and the MLflow/HF token env vars, in a run they do not break: none
  appears in the service log, `ticketune status --json`, `/v1/status`, `/metrics`, `validate-config
  --show`, MLflow or what the serving targets receive.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from harness import (
    PROFILE,
    REPO,
    ServiceProcess,
    http_get,
    kafka_section,
    pick,
    record_figures,
    wait_for,
    write_config,
)

CORPUS = REPO / "tests" / "data" / "pii" / "corpus.jsonl"
MIN_VALUE_CHARS = 6  # a shorter value ("Ana", "Sam", "Lee") matches ordinary text by chance
TEXT_SUFFIXES = (".json", ".md", ".html", ".txt", ".log", ".yaml", ".yml", ".jsonl", ".csv")
MAX_ARTIFACT_BYTES = 20 * 2**20
CLEAN_TICKETS = 120  # ordinary sample tickets beside the corpus, so the cycle has a normal batch too
FIGURES: dict[str, object] = {}


def record(**figures: object) -> None:
    """Adds to this file's figures and writes them all (each test adds its own, before its assertions)."""
    FIGURES.update(figures)
    leaks = sum(int(FIGURES.get(key, 0)) for key in ("pii_leaks_found", "secrets_leaks_found"))
    cases = sum(int(FIGURES.get(key, 0)) for key in ("admin_off_cases", "admin_token_cases"))
    record_figures("security", {**FIGURES, "leaks_found": leaks, "admin_api_cases_checked": cases})


# the PII corpus as tickets, and what to look for -------------------------------------------------------------
def load_corpus() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def corpus_tickets(corpus: list[dict]) -> list[dict]:
    """One resolved canonical ticket per labelled snippet: the customer writes it, an internal note and the
    public agent answer quote it; the corpus' requester and agent are the ticket's own people."""
    tickets = []
    for index, snippet in enumerate(corpus):
        if not snippet["spans"]:
            continue  # negative snippets hold nothing to leak
        requester = dict(snippet.get("requester") or {})
        agent = dict(snippet.get("agent") or {})
        text = snippet["text"]
        tickets.append({
            "ticket_id": f"pii-{index:04d}", "status": "solved", "channel": "email",
            "subject": "Question about my account", "category": "account", "language": "en",
            "created_at": "2026-11-02T10:15:00Z", "resolved_at": "2026-11-02T12:01:00Z",
            "requester": ({"id": f"pii-user-{index}"} | requester) if requester else None,
            "agents": [agent] if agent else [],
            "messages": [
                {"author_role": "customer", "author_name": requester.get("name"),
                 "author_email": requester.get("email"), "public": True,
                 "body": f"{text}\n\nCould you look into this for me, please? It is about case {index}."},
                {"author_role": "agent", "author_name": agent.get("name"), "author_email": agent.get("email"),
                 "public": False, "body": f"internal: customer wrote {text}"},
                {"author_role": "agent", "author_name": agent.get("name"), "author_email": agent.get("email"),
                 "public": True,
                 "body": f"Thanks for writing in. For the record, your message said: {text}\n"
                         "I have updated the case and you will get a confirmation shortly."},
            ],
        })
    return tickets


@dataclass(frozen=True)
class Needle:
    kind: str  # EMAIL, PHONE, ..., or PEOPLE_EMAIL / PEOPLE_PHONE for the tickets' own people
    value: str
    forms: tuple[str, ...]  # casefolded spellings to look for: as written, JSON- and HTML-escaped, compact


def needle(kind: str, value: str) -> Needle:
    forms = {value, json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1], html.escape(value)}
    if kind in ("CARD", "IBAN"):
        forms.add("".join(value.split()).replace("-", ""))  # the number without its grouping
    return Needle(kind, value, tuple(sorted(form.casefold() for form in forms)))


def pii_needles(corpus: list[dict]) -> tuple[list[Needle], dict[str, int]]:
    """Every labelled value worth looking for, and how many were left out by which rule.

    Rules: a value shorter than MIN_VALUE_CHARS characters is left out (it matches ordinary text by
    chance); a PERSON value of one word ("Will", "Rose", "Okafor") is left out, since a single name is an
    ordinary word in some other text (and a log line may name a library or a host); full names stay.
    The tickets' own people add their emails and phones (PEOPLE_*), and their full names (PERSON).
    """
    found: dict[tuple[str, str], Needle] = {}
    left_out = {"shorter_than_min": 0, "one_word_person": 0}
    for snippet in corpus:
        values = [(span["type"], span["value"]) for span in snippet["spans"]]
        for person in (snippet.get("requester") or {}, snippet.get("agent") or {}):
            if person.get("email"):
                values.append(("PEOPLE_EMAIL", person["email"]))
            if person.get("phone"):
                values.append(("PEOPLE_PHONE", person["phone"]))
            if person.get("name"):
                values.append(("PERSON", person["name"]))
        for kind, value in values:
            if len(value) < MIN_VALUE_CHARS:
                left_out["shorter_than_min"] += 1
            elif kind == "PERSON" and len(value.split()) < 2:
                left_out["one_word_person"] += 1
            else:
                found.setdefault((kind, value), needle(kind, value))
    return sorted(found.values(), key=lambda n: (n.kind, n.value)), left_out


def flow_needles(corpus: list[dict]) -> tuple[list[Needle], dict[str, int]]:
    """pii_needles less the scrubber's own misses (counted in left_out as scrubber_misses)."""
    needles, left_out = pii_needles(corpus)
    misses = set(scrubber_misses(corpus, needles))
    left_out["scrubber_misses"] = len(misses)
    return [n for n in needles if n not in misses], left_out


def store_kinds() -> set[str]:
    """The types tests/test_pii_corpus.py holds the scrubber to (MIN_RECALL), and the tickets' own people."""
    return set(pii_corpus_module().MIN_RECALL) | {"PEOPLE_EMAIL", "PEOPLE_PHONE"}


def pii_corpus_module():
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import test_pii_corpus
    finally:
        sys.path.remove(str(REPO / "tests"))
    return test_pii_corpus


def scrubber_misses(corpus: list[dict], needles: list[Needle]) -> list[Needle]:
    """The needles the scrubber itself leaves in its own snippet (scrubbed alone, as tests/test_pii_corpus.py
    does, which holds each kind's recall to MIN_RECALL). The flow is held to leak nothing else: a value the
    scrubber catches alone must not reach the store, a log, a metric or an artifact by any other path."""
    module = pii_corpus_module()
    scrubbed = "\n".join(module.scrub_record(snippet) for snippet in corpus)
    return [n for n in needles if find_leaks([n], {"scrubbed corpus": scrubbed})]


def find_leaks(needles: list[Needle], places: dict[str, str]) -> list[str]:
    """Each needle found in a place, as a whole word (no letter or digit on either side, as the corpus labels
    them), so that a 6-digit code does not match inside a hex digest."""
    patterns = [(item, re.compile("|".join(rf"(?<!\w){re.escape(form)}(?!\w)" if form[0].isalnum() and
                                            form[-1].isalnum() else re.escape(form) for form in item.forms)))
                for item in needles]
    leaks = []
    for place, text in places.items():
        folded = text.casefold()
        for item, pattern in patterns:
            found = pattern.search(folded)
            if found is not None:
                context = folded[max(0, found.start() - 80): found.end() + 80].replace("\n", " ")
                leaks.append(f"{item.kind} {item.value!r} in {place}: ...{context}...")
    return leaks


# readers of the places ---------------------------------------------------------------------------------------
def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def log_places(*paths: Path, work_dir: Path | None = None) -> dict[str, str]:
    """The service log(s) and every training worker's log under `work_dir`."""
    places = {f"log {path.name}": read_text(path) for path in paths if path.exists()}
    if work_dir is not None and work_dir.exists():
        places |= {f"worker log {path.relative_to(work_dir)}": read_text(path) for path in work_dir.rglob("*.log")}
    return places


def mlflow_places(tracking_uri: str, download_dir: Path) -> tuple[dict[str, str], int]:
    """Every run's params, tags and metric keys, every model version's tags and description, registered
    model tags and aliases, and every text artifact of every run (the report first of all); and how many
    report pages (report.html / report.md) were among them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    places: dict[str, str] = {}
    reports = 0
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], max_results=1000)
    for run in runs:
        rid = run.info.run_id
        places[f"mlflow run {rid} params"] = json.dumps(run.data.params, ensure_ascii=False)
        places[f"mlflow run {rid} tags"] = json.dumps(run.data.tags, ensure_ascii=False)
        places[f"mlflow run {rid} metric keys"] = " ".join(run.data.metrics)
        places[f"mlflow run {rid} name"] = run.info.run_name or ""
        local = Path(client.download_artifacts(rid, "", str(download_dir / rid)))
        for path in sorted(local.rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and path.stat().st_size <= MAX_ARTIFACT_BYTES:
                places[f"mlflow artifact {rid}/{path.relative_to(local)}"] = read_text(path)
                reports += path.name in ("report.html", "report.md")
    for model in client.search_registered_models():
        places[f"mlflow model {model.name}"] = json.dumps(
            {"tags": model.tags, "aliases": model.aliases, "description": model.description}, ensure_ascii=False)
        for version in client.search_model_versions(f"name='{model.name}'"):
            places[f"mlflow version {version.version}"] = json.dumps(
                {"tags": version.tags, "description": version.description, "source": version.source},
                ensure_ascii=False)
    return places, reports


def store_text(path: Path) -> str:
    """Every value of every row of every table, as text."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        tables = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        parts = []
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):
                parts.append(" | ".join(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                                        for value in row))
        return "\n".join(parts)
    finally:
        con.close()


def count_examples(path: Path, prefix: str) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("SELECT COUNT(*) FROM examples WHERE ticket_id LIKE ?", (prefix + "%",)).fetchone()[0]
    finally:
        con.close()


FILE_PLACES = ("log ", "worker log ", "mlflow artifact ")
def placeholders_of_kind(kind: str) -> set[str]:
    """The placeholders a value of this corpus kind becomes."""
    if kind in ("PEOPLE_EMAIL", "PEOPLE_PHONE"):
        return {"<CUSTOMER_EMAIL>", "<AGENT_EMAIL>"} if kind == "PEOPLE_EMAIL" else {"<CUSTOMER_PHONE>"}
    return {p for p, k in pii_corpus_module().TYPE_OF_PLACEHOLDER.items() if k == kind}


def scan_all(needles: list[Needle], places: dict[str, str], store: dict[str, str],
             kinds_in_store: set[str]) -> list[str]:
    """The leaks; first, that the store is what was scanned: each scanned kind's placeholder is in it."""
    missing = sorted(kind for kind in kinds_in_store
                     if not any(placeholder in store["store"] for placeholder in placeholders_of_kind(kind)))
    assert not missing, f"the store holds no placeholder for {missing}: did the corpus tickets reach it?"
    leaks = find_leaks(needles, places)
    leaks += find_leaks([n for n in needles if n.kind in kinds_in_store], store)
    return leaks


def test_the_scanner_finds_a_planted_value_in_every_spelling():
    needles, _ = pii_needles(load_corpus())
    kinds = {n.kind for n in needles}
    assert kinds >= {"EMAIL", "PHONE", "CARD", "IBAN", "SSN", "IP", "SECRET", "ADDRESS", "PERSON", "PEOPLE_EMAIL"}
    planted = {}
    for kind in sorted(kinds):
        item = next(n for n in needles if n.kind == kind)
        planted[f"plain {kind}"] = f"... {item.value} ..."
        planted[f"json {kind}"] = json.dumps({"msg": f"x {item.value.upper()} y"})
        planted[f"html {kind}"] = f"<td>{html.escape(item.value)}</td>"
    card = next(n for n in needles if n.kind == "CARD" and " " in n.value)
    planted["compact card"] = "".join(card.value.split())
    leaks = find_leaks(needles, planted)
    assert {leak.split(" in ", 1)[1].split(":", 1)[0] for leak in leaks} == set(planted)
    assert find_leaks(needles, {"clean": "cycle c-1: version 3 promoted; <EMAIL> <CARD_NUMBER>"}) == []
    code = next(n for n in needles if n.value.isdigit())
    assert find_leaks([code], {"digest": f"04b54a70c63cf68d{code.value}", "word": f"code {code.value}."}) == [
        f"{code.kind} {code.value!r} in word: ...code {code.value}...."]


# a recording serving endpoint --------------------------------------------------------------------------------
class Recorder:
    """A local HTTP endpoint that answers 200 to every POST and keeps (path, headers, body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.requests.append((self.path, dict(self.headers), body))
                answer = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# admin API helpers -------------------------------------------------------------------------------------------
def http_call(port: int, method: str, path: str, headers: dict[str, str] | None = None,
              body: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def admin_paths(port: int) -> list[tuple[str, str]]:
    """(method, path) of every admin operation in the service's own OpenAPI document."""
    status, body = http_get(port, "/v1/openapi.json")
    assert status == 200, body
    paths = [(method.upper(), path) for path, ops in json.loads(body)["paths"].items() for method in ops
             if path != "/v1/openapi.json"]
    return paths


def wrong_authorizations(token: str) -> dict[str, dict[str, str]]:
    import base64

    return {
        "missing": {},
        "wrong token": {"Authorization": "Bearer " + secrets.token_hex(16)},
        "wrong scheme (Basic)": {"Authorization": "Basic " + base64.b64encode(f"admin:{token}".encode()).decode()},
        "wrong scheme (Token)": {"Authorization": f"Token {token}"},
        "bare token": {"Authorization": token},
        "empty bearer": {"Authorization": "Bearer "},
        "bearer only": {"Authorization": "Bearer"},
        "prefix of the token": {"Authorization": f"Bearer {token[:-1]}"},
        "token plus more": {"Authorization": f"Bearer {token}x"},
        "token in another header": {"X-Admin-Token": token},
    }


def store_rows(store: Path, sql: str) -> int:
    if not store.exists():
        return 0
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


# the run the quick PII scan, the secrets and the admin API share ---------------------------------------------
def sentinel(name: str) -> str:
    return f"sentinel{name}{secrets.token_hex(8)}"  # letters and digits only: valid in a URL's userinfo too


@pytest.fixture(scope="module")
def secured_run(tmp_path_factory, broker, tiny_model_dir, mlflow_server_uri):
    """A `ticketune run` service with a sentinel in every secret field, fed the PII corpus and sample
    tickets through the broker; the admin API's refusals are checked before its one cycle and after."""
    from fixture_broker import produce

    from daemon.demo.samples import generate_tickets

    root = tmp_path_factory.mktemp("security")
    topic = f"tickets.security.{secrets.token_hex(4)}"
    broker.create_topics([topic, topic + ".dlq"])
    recorder = Recorder()
    sentinels = {name: sentinel(name) for name in (
        "admintoken", "identitykey", "saslpassword", "webhooksecret", "targetsecret", "vllmapikey", "targetapikey",
        "mlflowpassword", "mlflowtoken", "hftoken")}
    env = {"TICKETUNE_STORE__IDENTITY_KEY": sentinels["identitykey"],
           "TICKETUNE_SERVING__WEBHOOK_SECRET": sentinels["webhooksecret"],
           "TICKETUNE_SERVING__VLLM_API_KEY": sentinels["vllmapikey"],
           "MLFLOW_TRACKING_TOKEN": sentinels["mlflowtoken"], "HF_TOKEN": sentinels["hftoken"]}
    host = mlflow_server_uri.removeprefix("http://")
    tracking_uri = f"http://ticketune:{sentinels['mlflowpassword']}@{host}"
    serving_url = f"http://127.0.0.1:{recorder.port}"
    config = write_config(root / "config.yaml", {
        "kafka": kafka_section(broker.bootstrap_servers, topic, "security", sasl_mechanism="PLAIN",
                               sasl_username="ticketune", sasl_password=sentinels["saslpassword"]),
        "model": {"base": str(tiny_model_dir)},
        "training": {"max_steps": 4, "learning_rate": 0.01, "max_seq_len": 512, "row_tokens": 1024,
                     "work_dir": "./cycles", "eval_every_steps": 2},
        "gate": {"profile": "demo", "min_eval_examples": 10, "bootstrap_samples": 200, "max_new_tokens": 16,
                 "approval": "manual"},
        "registry": {"tracking_uri": tracking_uri, "model_name": f"security-{secrets.token_hex(3)}",
                     "poll_seconds": 5},
        "serving": {"targets": [
            {"kind": "webhook", "name": "hook-env", "url": serving_url + "/hook-env"},
            {"kind": "webhook", "name": "hook-own", "url": serving_url + "/hook-own",
             "secret": sentinels["targetsecret"]},
            {"kind": "vllm", "name": "vllm", "url": serving_url + "/vllm", "api_key": sentinels["targetapikey"]},
        ], "attempts": 1, "retry_interval_seconds": 3600},
        "server": {"admin_token": sentinels["admintoken"]},
        "log": {"format": "json", "level": "DEBUG"},
    })
    service = ServiceProcess(config, env=env)
    token = sentinels["admintoken"]
    auth = {"Authorization": f"Bearer {token}"}
    corpus = load_corpus()
    tickets = corpus_tickets(corpus)
    clean = generate_tickets(CLEAN_TICKETS, seed=5, start_id=70000)
    admin_cases = 0
    try:
        service.start()
        service.wait_healthy()
        produce(broker.bootstrap_servers, topic, [(t["ticket_id"], json.dumps(t).encode()) for t in clean + tickets],
                batched=True)
        wait_for(lambda: service.metric("ticketune_tickets_consumed_total") >= len(clean) + len(tickets), 180,
                 "ingest of the corpus", interval_s=1.0, on_timeout=service.log_tail)

        # refusals before the cycle: a wrong token must not start one
        for name, headers in wrong_authorizations(token).items():
            for path in ("/v1/cycles", "/v1/cycles?token=" + token):
                status, body = http_call(service.port, "POST", path, headers, {"force": True})
                assert status == 401, (name, path, status, body)
                assert json.loads(body)["error"]["code"] == "unauthorized"
                admin_cases += 1
        time.sleep(2.0)
        assert store_rows(service.store_path, "SELECT COUNT(*) FROM cycles") == 0, "a refused request started a cycle"
        assert sum(v for k, v in service.metrics().items() if k.startswith("ticketune_cycles_total")) == 0

        status, body = http_call(service.port, "POST", "/v1/cycles", auth, {"force": True})
        assert status == 202, body
        admin_cases += 1

        def cycle_done() -> dict | None:
            code, text = http_call(service.port, "GET", "/v1/status", auth)
            data = json.loads(text) if code == 200 else {}
            last = data.get("last_cycle") or {}
            return data if last.get("verdict") and not data.get("cycle_running") else None

        status_doc = wait_for(cycle_done, pick(420, 900), "the admin cycle", interval_s=2.0,
                              on_timeout=service.log_tail)
        verdict, version = status_doc["last_cycle"]["verdict"], status_doc["last_cycle"]["model_version"]
        assert version and status_doc["champion_version"] is None, status_doc  # gate.approval: manual

        # refusals after the cycle, where each would make the candidate the champion if it were let through
        moves = "SELECT COUNT(*) FROM champion_moves"
        for name, headers in wrong_authorizations(token).items():
            for method, path, body in (("POST", "/v1/approve", {"version": version}),
                                       ("POST", "/v1/promote", {"version": version, "force": True}),
                                       ("POST", "/v1/rollback", {"to": version, "force": True}),
                                       ("GET", "/v1/status", None), ("GET", "/v1/history", None)):
                status, text = http_call(service.port, method, path, headers, body)
                assert status == 401, (name, path, status, text)
                assert token not in text
                admin_cases += 1
        time.sleep(1.0)
        assert store_rows(service.store_path, moves) == 0, "a refused request moved the champion"
        assert json.loads(http_call(service.port, "GET", "/v1/status", auth)[1])["champion_version"] is None
        assert not recorder.requests, "a refused request notified serving"

        # the right token moves it
        if verdict == "awaiting_approval":
            status, text = http_call(service.port, "POST", "/v1/approve", auth, {"version": version})
        else:
            status, text = http_call(service.port, "POST", "/v1/promote", auth, {"version": version, "force": True})
        assert status == 200 and json.loads(text)["moved"], text
        admin_cases += 1
        champion = json.loads(http_call(service.port, "GET", "/v1/status", auth)[1])["champion_version"]
        assert champion == version and store_rows(service.store_path, moves) == 1
        wait_for(lambda: len(recorder.requests) >= 3, 60, "the serving notifications")
        status, _ = http_call(service.port, "GET", "/v1/history", auth)
        assert status == 200
        admin_cases += 1

        metrics_text = http_get(service.port, "/metrics")[1]
        v1_status = http_call(service.port, "GET", "/v1/status", auth)[1]
        others = {path: http_get(service.port, path)[1] for path in ("/readyz", "/healthz", "/v1/openapi.json")}
        cli_env = dict(os.environ, **env, MLFLOW_DISABLE_TELEMETRY="true")
        cli = {}
        for name, args in (("status --json", ["status", "--json", "--config", str(config)]),
                           ("status", ["status", "--config", str(config)]),
                           ("validate-config --show", ["validate-config", str(config), "--show"]),
                           ("validate-config --show --json", ["validate-config", str(config), "--show", "--json"])):
            done = subprocess.run([sys.executable, "-m", "daemon.app.cli", *args], cwd=REPO, env=cli_env,
                                  capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, (name, done.stderr[-3000:])
            cli[name] = done.stdout + "\n" + done.stderr
        assert json.loads(cli["status --json"].split("\n", 1)[0])["examples"] > 0
    finally:
        if service.alive():
            service.terminate(timeout_s=60)
        recorder.close()
    yield {
        "root": root, "config": config, "service": service, "sentinels": sentinels, "env": env,
        "tracking_uri": tracking_uri, "mlflow_uri": mlflow_server_uri, "recorder": recorder, "champion": champion,
        "metrics": metrics_text, "v1_status": v1_status, "others": others, "cli": cli, "corpus": corpus,
        "tickets": tickets, "admin_cases": admin_cases, "verdict": verdict,
    }


def test_admin_api_is_off_without_a_token(tmp_path, broker, tiny_model_dir, mlflow_sqlite_uri):
    topic = f"tickets.security-off.{secrets.token_hex(4)}"
    config = write_config(tmp_path / "config.yaml", {
        "kafka": kafka_section(broker.bootstrap_servers, topic, "security-off"),
        "model": {"base": str(tiny_model_dir)}, "registry": {"tracking_uri": mlflow_sqlite_uri},
    })
    cases = 0
    with ServiceProcess(config) as service:
        service.start()
        service.wait_healthy()
        paths = admin_paths(service.port)
        assert {path for _, path in paths} >= {"/v1/status", "/v1/cycles", "/v1/rollback", "/v1/promote"}
        for method, path in paths:
            for tried_method in {method, "GET", "POST"}:
                for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
                    status, body = http_call(service.port, tried_method, path, headers)
                    assert status == 403, (tried_method, path, headers, status, body)
                    assert json.loads(body)["error"]["code"] == "admin_api_off"
                    cases += 1
        time.sleep(1.0)
        assert store_rows(service.store_path, "SELECT COUNT(*) FROM cycles") == 0
        assert http_get(service.port, "/metrics")[0] == 200 and http_get(service.port, "/healthz")[0] == 200
    record(admin_off_cases=cases)


def test_admin_api_refuses_missing_and_wrong_tokens_and_they_change_nothing(secured_run):
    # the refusals themselves are asserted inside the run (before its cycle, and after it while a refused
    # approve, promote or rollback would have moved the champion); here: the right token did both, and only it
    run = secured_run
    store = run["service"].store_path
    record(admin_token_cases=run["admin_cases"])
    assert store_rows(store, "SELECT COUNT(*) FROM cycles") == 1
    assert run["verdict"] in ("awaiting_approval", "rejected")
    assert store_rows(store, "SELECT COUNT(*) FROM champion_moves WHERE actor = 'admin'") == 1


def test_no_secret_from_config_or_env_appears_anywhere(secured_run):
    run = secured_run
    sentinels = run["sentinels"]
    recorder = run["recorder"]
    # the sentinels were in effect: the webhook carries the env secret's signature, vLLM the target's key
    hooks = {path: (headers, body) for path, headers, body in recorder.requests}
    for path, secret in (("/hook-env", "webhooksecret"), ("/hook-own", "targetsecret")):
        headers, body = hooks[path]
        signature = "sha256=" + hmac.new(sentinels[secret].encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Ticketune-Signature"] == signature, path
    vllm = [headers for path, headers, _ in recorder.requests if path.startswith("/vllm")]
    assert vllm and all(h.get("Authorization") == f"Bearer {sentinels['targetapikey']}" for h in vllm)
    # and the store's identity hashes are keyed with the env's identity key
    email = next(t["requester"]["email"] for t in run["tickets"] if (t["requester"] or {}).get("email"))
    keyed = hmac.new(sentinels["identitykey"].encode(), f"email:{email.strip().lower()}".encode(),
                     hashlib.sha256).hexdigest()[:32]
    assert store_rows(run["service"].store_path,
                      f"SELECT COUNT(*) FROM example_identities WHERE identity = '{keyed}'") >= 1

    needles = [Needle("SECRET", value, (value.casefold(),)) for value in sentinels.values()]
    service = run["service"]
    places = log_places(service.log_path, work_dir=run["root"] / "cycles")
    places |= {"/metrics": run["metrics"], "/v1/status": run["v1_status"]}
    places |= {f"GET {path}": text for path, text in run["others"].items()}
    places |= {f"ticketune {name}": text for name, text in run["cli"].items()}
    for index, (path, headers, body) in enumerate(recorder.requests):  # vLLM's own key is meant for it
        shown_headers = {k: v for k, v in headers.items() if not (path.startswith("/vllm") and k == "Authorization")}
        places[f"serving request {index} {path}"] = body.decode("utf-8", "replace") + json.dumps(shown_headers)
    mlflow, _ = mlflow_places(run["mlflow_uri"], run["root"] / "secrets-artifacts")
    places |= mlflow
    leaks = find_leaks(needles, places)
    shown = run["cli"]["validate-config --show"]
    assert "**********" in shown and "ticketune:***@" in shown, shown
    record(secrets_sentinels=len(sentinels), secrets_places_scanned=len(places),
           secrets_bytes_scanned=sum(len(text.encode()) for text in places.values()), secrets_leaks_found=len(leaks))
    assert not leaks, "\n".join(leaks)


def pii_figures(needles: list[Needle], left_out: dict, places: dict[str, str], store: dict[str, str],
                kinds_in_store: set[str], leaks: list[str], reports: int, extra: dict) -> None:
    record(**{
        "pii_flow": extra.pop("flow"), "pii_values_scanned": len(needles),
        "pii_values_scanned_in_store": sum(1 for n in needles if n.kind in kinds_in_store),
        "pii_values_left_out": left_out, "pii_places_scanned": len(places) + len(store),
        "pii_files_scanned": len(store) + sum(1 for name in places if name.startswith(FILE_PLACES)),
        "pii_bytes_scanned": sum(len(text.encode()) for text in [*places.values(), *store.values()]),
        "pii_report_pages_scanned": reports, "pii_leaks_found": len(leaks), **extra,
    })


def test_the_pii_corpus_fed_through_the_broker_leaks_nowhere(request, tmp_path):
    """Quick profile: a service, its ingest and one cycle; full profile: `ticketune demo --extra-tickets`."""
    if PROFILE == "full":
        demo_flow(tmp_path)
    else:
        service_flow(request.getfixturevalue("secured_run"))


def service_flow(run: dict) -> None:
    needles, left_out = flow_needles(run["corpus"])
    kinds_in_store = store_kinds()
    service = run["service"]
    places = log_places(service.log_path, work_dir=run["root"] / "cycles")
    places |= {"/metrics": run["metrics"], "/v1/status": run["v1_status"]}
    mlflow, reports = mlflow_places(run["mlflow_uri"], run["root"] / "pii-artifacts")
    places |= mlflow
    store = {"store": store_text(service.store_path)}
    stored = count_examples(service.store_path, "pii-")
    assert stored > 0 and reports >= 2
    leaks = scan_all(needles, places, store, kinds_in_store)
    pii_figures(needles, left_out, places, store, kinds_in_store, leaks, reports,
                {"flow": "service + ingest + one admin cycle", "pii_tickets": len(run["tickets"]),
                 "pii_examples_stored": stored, "cycle_verdict": run["verdict"]})
    assert not leaks, "\n".join(leaks[:50])


def poll_metrics(log_path: Path, done: threading.Event, bodies: dict[str, None]) -> None:
    """The demo's service prints its metrics URL; every distinct /metrics line it serves is kept."""
    port = None
    while not done.is_set():
        if port is None and log_path.exists():
            for line in read_text(log_path).splitlines():
                if "metrics http://127.0.0.1:" in line:
                    port = int(line.split("metrics http://127.0.0.1:", 1)[1].split("/", 1)[0])
        if port is not None:
            status, body = http_get(port, "/metrics", timeout_s=2.0)
            if status == 200:
                bodies.update(dict.fromkeys(body.splitlines()))
        done.wait(2.0)


def demo_flow(tmp_path: Path) -> None:
    corpus = load_corpus()
    tickets = corpus_tickets(corpus)
    extra = tmp_path / "pii-tickets.jsonl"
    extra.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tickets), "utf-8")
    work = tmp_path / "demo"
    log_path = tmp_path / "demo.log"
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", TICKETUNE_LOG__LEVEL="DEBUG",
               TICKETUNE_LOG__FORMAT="json")
    bodies: dict[str, None] = {}
    done = threading.Event()
    poller = threading.Thread(target=poll_metrics, args=(log_path, done, bodies), daemon=True)
    poller.start()
    started = time.monotonic()
    try:
        with open(log_path, "wb") as log:
            completed = subprocess.run(
                [sys.executable, "-m", "daemon.app.cli", "demo", "--json", "--work-dir", str(work), "--model", "tiny",
                 "--extra-tickets", str(extra)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, timeout=3600)
    finally:
        done.set()
        poller.join(timeout=10)
    seconds = round(time.monotonic() - started, 1)
    assert completed.stdout.strip(), f"the demo printed no report (exit {completed.returncode}):\n" + \
        read_text(log_path)[-4000:]
    report = json.loads(completed.stdout.decode())
    assert len(report["cycles"]) == 3, report
    assert report["ingest"]["consumed"] >= len(tickets) + 3 * 160, report["ingest"]
    assert bodies, "no /metrics read from the demo's service"

    needles, left_out = flow_needles(corpus)
    kinds_in_store = store_kinds()
    places = log_places(log_path, work_dir=work / "data" / "cycles")
    places |= {"/metrics (every line served)": "\n".join(bodies), "demo --json report": completed.stdout.decode()}
    mlflow, reports = mlflow_places(f"sqlite:///{work / 'data' / 'mlflow.db'}", tmp_path / "artifacts")
    places |= mlflow
    store_path = work / "data" / "examples.db"
    store = {"store": store_text(store_path)}
    stored = count_examples(store_path, "pii-")
    assert stored > 0 and reports >= 2 * sum(1 for c in report["cycles"] if c.get("version"))
    leaks = scan_all(needles, places, store, kinds_in_store)
    pii_figures(needles, left_out, places, store, kinds_in_store, leaks, reports,
                {"flow": "ticketune demo --extra-tickets", "pii_tickets": len(tickets), "pii_examples_stored": stored,
                 "demo_seconds": seconds, "demo_as_expected": report["as_expected"],
                 "demo_verdicts": [c["verdict"] for c in report["cycles"]]})
    assert not leaks, "\n".join(leaks[:50])
