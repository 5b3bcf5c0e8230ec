"""Issue 7, item 3: an MLflow outage during a cycle of a real `ticketune run`.

A loopback proxy (`mlflow_proxy.py`) sits between the service and its own real `mlflow server`, and
is cut at a chosen point of a cycle: mid-registration (right after `model-versions/create` was
answered, so a version exists and the rest of its registration cannot happen), during training
(the server gone before the worker finishes) and, in the full profile, on the adapter's upload
(before any version exists). Each time: the cycle ends `failed` with a reason naming MLflow, the
service keeps its pid and answers /healthz 200 throughout, the champion alias (read from MLflow
directly, not through the proxy) does not move; once MLflow is back the next cycle reaches a
verdict, and no version is left `registering` (the half-registered one is marked abandoned).
The full profile also cuts MLflow after the verdict (on the upload of the worker's files): the
cycle keeps its verdict, its version is complete and the alias is where the verdict put it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fixture_broker import produce
from fixture_mlflow import _stop as stop_server
from harness import (
    LOSS_ONLY_GATE,
    HealthWatch,
    ServiceProcess,
    cycle_rows,
    free_port,
    kafka_section,
    pick,
    record_figures,
    store_count,
    trigger_cycle,
    wait_for,
    write_config,
)
from mlflow_proxy import MlflowProxy

MODEL = "outage-test"
TOKEN = "outage-admin-token"
CYCLE_TIMEOUT_S = 240
CUT_POINTS = {
    # the answer to create went back: version N exists, its report upload and `complete` tag cannot happen
    "registration": ("after", r"^POST /api/2\.0/mlflow/model-versions/create"),
    # the server goes away while the worker trains; the cycle meets it when it logs the worker's metrics
    "training": ("training", None),
    # the adapter's first file never reaches MLflow: no version is created at all
    "upload": ("on", r"^PUT /api/2\.0/mlflow-artifacts/artifacts/.*/adapter/"),
    # after the verdict (version complete, alias moved or not): only the worker's files cannot be attached,
    # which must not turn a decided cycle into a failed one
    "after_verdict": ("on", r"^PUT /api/2\.0/mlflow-artifacts/artifacts/.*/worker/"),
}


@pytest.fixture
def own_mlflow(tmp_path: Path):
    """A real `mlflow server` of this test alone (sqlite backend, proxied artifacts): (url, process)."""
    root = tmp_path / "mlflow-server"
    root.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )

    def healthy() -> bool:
        assert proc.poll() is None, (root / "server.log").read_text(errors="replace")[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 90, "the test's own mlflow server")
        yield url, port
    finally:
        stop_server(proc)
        log.close()


def finished_cycles(service: ServiceProcess) -> list[dict]:
    return [row for row in cycle_rows(service.store_path) if row["ended_at"]]


SKIPPED = 'ticketune_cycles_total{verdict="skipped"}'


def wait_cycle_end(service: ServiceProcess, ended_before: int, what: str, skipped_before: float) -> dict:
    """Waits until one more cycle run (a new cycle, or another attempt of one) has ended; returns its row.
    A skipped cycle leaves no row: the service's counter of skipped cycles says so, and that fails at once."""
    def ended() -> dict | None:
        assert service.alive(), f"the service died:\n{service.log_tail()}"
        assert service.metric(SKIPPED) <= skipped_before, f"{what} was skipped:\n{service.log_tail(1500)}"
        rows = cycle_rows(service.store_path)
        done = sum(row["attempts"] for row in rows if row["ended_at"])
        return rows[-1] if done > ended_before and rows[-1]["ended_at"] else None

    return wait_for(ended, CYCLE_TIMEOUT_S, what, interval_s=0.2, on_timeout=service.log_tail)


def runs_ended(service: ServiceProcess) -> int:
    return sum(row["attempts"] for row in finished_cycles(service))


def registry_view(client, model: str) -> tuple[str | None, dict[str, dict[str, str]]]:
    """(champion, {version: tags}) read from MLflow directly."""
    try:
        registered = client.get_registered_model(model)
    except Exception:
        return None, {}
    champion = (registered.aliases or {}).get("champion")
    versions = {str(v.version): dict(v.tags) for v in client.search_model_versions(f"name = '{model}'")}
    return (str(champion) if champion is not None else None), versions


def test_an_mlflow_outage_fails_the_cycle_cleanly_and_the_next_cycle_recovers(
    tmp_path, broker, unique_topic, tiny_model_dir, own_mlflow
):
    from mlflow import MlflowClient

    from daemon.demo.samples import generate_tickets

    mlflow_url, mlflow_port = own_mlflow
    direct = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    proxy = MlflowProxy(mlflow_port)
    cut_points = pick(["registration"], ["registration", "training", "upload", "after_verdict"])
    topic = unique_topic("outage")
    config = write_config(tmp_path / "config.yaml", {
        "kafka": kafka_section(broker.bootstrap_servers, topic, "outage"),
        "model": {"base": str(tiny_model_dir)},
        "training": {"max_steps": 6, "learning_rate": 0.01, "max_seq_len": 256, "row_tokens": 512,
                     "eval_every_steps": 3, "checkpoint_every_steps": 2, "work_dir": "./cycles"},
        "schedule": {"enabled": False, "min_new_examples": 10},
        "gate": LOSS_ONLY_GATE,
        "registry": {"tracking_uri": proxy.url, "model_name": MODEL, "poll_seconds": 2},
        "server": {"admin_token": TOKEN},
    })
    figures: dict = {"cut_points": {}, "profile_cut_points": cut_points}
    batch, next_id = 40, 70000

    def produce_batch() -> None:
        nonlocal next_id
        before = store_count(service.store_path)
        tickets = generate_tickets(batch, seed=next_id, start_id=next_id)
        next_id += batch
        produce(broker.bootstrap_servers, topic, [(t["ticket_id"], t) for t in tickets])
        wait_for(lambda: store_count(service.store_path) >= before + batch * 0.8, 60, "the new tickets stored",
                 on_timeout=service.log_tail)

    with ServiceProcess(config) as service:
        service.start()
        service.wait_healthy(90)
        watch = HealthWatch(service)
        try:
            # a champion to protect: the first cycle runs with MLflow up
            produce_batch()
            skipped = service.metric(SKIPPED)
            trigger_cycle(service.port, TOKEN)
            first = wait_cycle_end(service, runs_ended(service), "the first cycle", skipped)
            assert first["verdict"] in ("promoted", "rejected"), first
            champion_start, _ = registry_view(direct, MODEL)
            figures["first_cycle"] = first["verdict"]

            for name in cut_points:
                mode, pattern = CUT_POINTS[name]
                produce_batch()
                champion_before, versions_before = registry_view(direct, MODEL)
                ended, skipped = runs_ended(service), service.metric(SKIPPED)
                if mode == "after":
                    proxy.cut_after(pattern)
                elif mode == "on":
                    proxy.cut_on(pattern)
                trigger_cycle(service.port, TOKEN)
                if mode == "training":
                    wait_for(lambda: service.metric("ticketune_training_step") > 0, CYCLE_TIMEOUT_S,
                             "the worker's first training step", on_timeout=service.log_tail)
                    proxy.cut_now("while the worker trains")
                failed = wait_cycle_end(service, ended, f"the cycle cut at {name}", skipped)
                observed = time.monotonic()
                assert proxy.down, f"the cycle ended before the cut at {name} happened: {failed}"
                if name == "after_verdict":
                    decided, version = failed, failed["model_version"]
                    assert decided["verdict"] in ("promoted", "rejected") and version, decided
                    champion_during, versions_during = registry_view(direct, MODEL)
                    assert versions_during[version].get("ticketune.state") == "complete", versions_during[version]
                    assert versions_during[version].get("ticketune.verdict") == decided["verdict"]
                    assert champion_during == (version if decided["verdict"] == "promoted" else champion_before)
                    proxy.restore()
                    figures["cut_points"][name] = {
                        "cycle_verdict": decided["verdict"], "version": version, "champion_before": champion_before,
                        "champion_during_outage": champion_during,
                        "connections_refused_while_down": proxy.refused,
                    }
                    continue
                seconds_to_fail = observed - proxy.cut_at
                reasons = json.loads(failed["reasons_json"] or "[]")
                assert failed["verdict"] == "failed", (name, failed)
                assert any("MLflow" in r and "unreachable" in r for r in reasons), (name, reasons)
                assert seconds_to_fail < 60, f"the cycle took {seconds_to_fail:.0f} s to fail after the cut"
                assert service.alive() and service.pid == watch.pid

                # MLflow is still down here; what the server itself holds, read past the proxy
                champion_during, versions_during = registry_view(direct, MODEL)
                assert champion_during == champion_before, (name, champion_before, champion_during)
                new_versions = sorted(set(versions_during) - set(versions_before), key=int)
                if name == "registration":  # the cut landed right after the version was created
                    assert len(new_versions) == 1, new_versions
                    assert versions_during[new_versions[0]].get("ticketune.state") == "registering"
                else:
                    assert new_versions == [], (name, new_versions)

                proxy.restore()
                ended, skipped = runs_ended(service), service.metric(SKIPPED)
                trigger_cycle(service.port, TOKEN)
                recovered = wait_cycle_end(service, ended, f"the cycle after the cut at {name}", skipped)
                assert recovered["verdict"] in ("promoted", "rejected"), (name, recovered)
                champion_after, versions_after = registry_view(direct, MODEL)
                registering = [v for v, tags in versions_after.items() if tags.get("ticketune.state") == "registering"]
                assert registering == [], (name, {v: versions_after[v] for v in registering})
                for version in new_versions:  # the half-registered one never becomes promotable
                    assert versions_after[version].get("ticketune.state") == "abandoned", versions_after[version]
                    assert versions_after[version].get("ticketune.verdict") == "abandoned"
                if recovered["verdict"] == "rejected":
                    assert champion_after == champion_before
                else:
                    assert champion_after == recovered["model_version"]
                figures["cut_points"][name] = {
                    "seconds_from_cut_to_failed_cycle": round(seconds_to_fail, 1),
                    "failed_reason": reasons[-1][:200],
                    "versions_created_during_outage": new_versions,
                    "champion_before": champion_before, "champion_during_outage": champion_during,
                    "champion_after_recovery": champion_after,
                    "recovery_verdict": recovered["verdict"], "recovery_attempt": recovered["attempts"],
                    "recovery_is_retry_of_failed_cycle": recovered["cycle_id"] == failed["cycle_id"],
                    "versions_left_registering": len(registering),
                    "connections_refused_while_down": proxy.refused,
                }
        finally:
            watch.stop()
            proxy.close()
        assert not watch.died and watch.failures == 0, (watch.failures, watch.polls, service.log_tail())
        assert service.pid == watch.pid and service.starts == 1
        figures.update({
            "champion_at_start": champion_start, "healthz_polls": watch.polls, "healthz_non_200": watch.failures,
            "service_restarts": service.starts - 1,
            "cycle_verdicts": [(row["cycle_id"], row["verdict"], row["attempts"])
                               for row in cycle_rows(service.store_path)],
        })
    record_figures("mlflow_outage", figures)
