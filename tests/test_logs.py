"""Structured logs: one JSON object per line with cycle_id/version, no ticket text or PII, no secrets."""

import io
import json
import logging
import threading

from fixture_broker import canonical_ticket
from test_ingest import MemorySource, record

from daemon.config import LogConfig, load_settings
from daemon.ingest.loop import run_ingest
from daemon.logs import ContextFilter, JsonFormatter, log_context, mask_url_password
from daemon.store import ExampleStore
from daemon.tickets import parse_canonical


def capture(level: int = logging.DEBUG) -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    handler.setLevel(level)
    return handler, stream


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_ts_level_logger_msg_and_the_cycle_and_version_named():
    handler, stream = capture()
    parent, log = logging.getLogger("ticketune"), logging.getLogger("ticketune.test")
    old_level = parent.level
    parent.addHandler(handler)
    parent.setLevel(logging.DEBUG)
    try:
        log.info("outside any cycle")
        with log_context():
            log.info("champion %s was trained elsewhere", "2")  # before the cycle id is known
            log.info("cycle %s: training on %s (champion %s)", "c-20260101-000000-abcd", {"train": 3}, "2")
            logging.getLogger("ticketune.champion").info("champion %s -> %s", "2", "3")
            log.info("cycle %s: version %s %s", "c-20260101-000000-abcd", "3", "promoted")
        log.warning("after the cycle, %d%% done", 100)
        log.info("explicit", extra={"cycle_id": "c-x", "version": "9"})
    finally:
        parent.removeHandler(handler)
        parent.setLevel(old_level)
    rows = lines(stream)
    assert all(set(row) >= {"ts", "level", "logger", "msg"} for row in rows)
    assert rows[0] == {**rows[0], "level": "info", "logger": "ticketune.test", "msg": "outside any cycle"}
    assert "cycle_id" not in rows[0] and "cycle_id" not in rows[1]
    assert rows[2]["cycle_id"] == "c-20260101-000000-abcd" and "version" not in rows[2]
    assert rows[3]["cycle_id"] == "c-20260101-000000-abcd"  # another module's line inside the cycle
    assert rows[4]["cycle_id"] == "c-20260101-000000-abcd" and rows[4]["version"] == "3"
    assert "cycle_id" not in rows[5] and rows[5]["msg"] == "after the cycle, 100% done"
    assert rows[6]["cycle_id"] == "c-x" and rows[6]["version"] == "9"


def test_the_context_of_one_thread_does_not_leak_into_another():
    handler, stream = capture()
    log = logging.getLogger("ticketune.test.threads")
    log.addHandler(handler)
    try:
        with log_context(cycle_id="c-mine"):
            other = threading.Thread(target=lambda: log.warning("from another thread"))
            other.start()
            other.join()
            log.warning("from the cycle's thread")
    finally:
        log.removeHandler(handler)
    rows = lines(stream)
    assert "cycle_id" not in rows[0] and rows[1]["cycle_id"] == "c-mine"


def test_url_passwords_are_masked_in_messages():
    assert mask_url_password("MLflow at http://bob:hunter2@mlflow:5000 is down") == \
        "MLflow at http://bob:***@mlflow:5000 is down"
    assert mask_url_password("http://mlflow:5000 and sqlite:///x.db") == "http://mlflow:5000 and sqlite:///x.db"
    handler, stream = capture()
    log = logging.getLogger("ticketune.test.mask")
    log.addHandler(handler)
    try:
        log.warning("registry %s unreachable", "https://u:p4ss@host/mlflow")
    finally:
        log.removeHandler(handler)
    assert "p4ss" not in stream.getvalue() and "https://u:***@host/mlflow" in stream.getvalue()


def test_configure_logging_json_writes_one_object_per_line(capsys):
    from daemon.logs import configure_logging

    configure_logging(LogConfig(level="INFO", format="json"))
    try:
        logging.getLogger("ticketune.test.cfg").info("hello %s", "world")
    finally:
        configure_logging(LogConfig())
    out = capsys.readouterr().err.strip().splitlines()
    assert json.loads(out[-1])["msg"] == "hello world"


def test_an_ingest_of_tickets_with_personal_data_logs_none_of_it(tmp_path):
    people = [("Ana Ruiz", "ana.ruiz@example.com", "+1 415 555 0134"),
              ("Jonas Weber", "jonas.weber@example.org", "+49 30 1234 5678")]
    records = []
    for offset, (name, email, phone) in enumerate(people):
        ticket = canonical_ticket(f"t-{offset}", requester=name)
        ticket["requester"]["email"] = email
        ticket["messages"][0]["body"] = f"I am {name}, reach me at {email} or {phone}. I was charged twice."
        records.append(record(offset, ticket["ticket_id"], ticket))
    broken = canonical_ticket("t-bad", requester="Ana Ruiz")
    del broken["messages"]  # a dead letter: its detail must not quote the ticket either
    broken["subject"] = "call Ana Ruiz at +1 415 555 0134"
    records.append(record(2, "t-bad", broken))
    records.append(record(3, "t-raw", b'{"requester": {"email": "ana.ruiz@example.com"}, "status": '))
    source = MemorySource([records[:2], records[2:]])

    handler, stream = capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        report = run_ingest(source, parse_canonical, ExampleStore(tmp_path / "s.db"), idle_timeout_s=0.5,
                            poll_timeout_s=0.01)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert report.stored == 2 and report.dead_lettered == 2
    text = stream.getvalue()
    assert "dead-lettered" in text  # the loop did log about the records
    for name, email, phone in people:
        for secret in (name, email, phone, name.split()[0], email.split("@")[0]):
            assert secret not in text, secret
    assert "charged twice" not in text


def test_config_dumps_mask_every_secret(tmp_path, capsys):
    from daemon.app.cli import main, masked_config

    config = tmp_path / "c.yaml"
    config.write_text(
        "server: {admin_token: tok-123}\n"
        "kafka: {security_protocol: SASL_SSL, sasl_mechanism: PLAIN, sasl_username: u, sasl_password: pw-123}\n"
        "registry: {tracking_uri: 'http://bob:hunter2@mlflow:5000'}\n"
        "serving: {webhook_secret: whs-123, vllm_api_key: vk-123}\n"
        "store: {identity_key: ik-123}\n"
    )
    shown = json.dumps(masked_config(load_settings(config, environ={})))
    assert main(["validate-config", "--show", "--json", str(config)]) == 0
    printed = capsys.readouterr().out
    for text in (shown, printed):
        for secret in ("tok-123", "pw-123", "hunter2", "whs-123", "vk-123", "ik-123"):
            assert secret not in text
        assert "http://bob:***@mlflow:5000" in text
    assert json.loads(printed)["server"]["admin_token"] == "**********"
