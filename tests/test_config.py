import logging
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parent.parent


def test_defaults_validate_and_resolve_paths_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.store.path == tmp_path / "data" / "examples.db"
    assert settings.registry.tracking_uri == f"sqlite:///{tmp_path}/data/mlflow.db"
    assert settings.schedule.misfire_grace_seconds > 1


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "c.yaml").write_text("store: {path: ./db/x.db}\nmodel: {base: ./m}\n")
    settings = load_settings(conf_dir / "c.yaml", environ={})
    assert settings.store.path == conf_dir / "db" / "x.db"
    assert settings.model.base == str(conf_dir / "m")


def test_hub_ids_are_left_alone(tmp_path):
    (tmp_path / "c.yaml").write_text("model: {base: meta-llama/Llama-3.2-1B}\n")
    assert load_settings(tmp_path / "c.yaml", environ={}).model.base == "meta-llama/Llama-3.2-1B"


def test_env_overrides_win_over_the_file_and_are_typed(tmp_path):
    (tmp_path / "c.yaml").write_text("kafka: {bootstrap_servers: a:1}\ngate: {min_eval_examples: 5}\n")
    env = {
        "TICKETUNE_KAFKA__BOOTSTRAP_SERVERS": "b:2",
        "TICKETUNE_GATE__MIN_EVAL_EXAMPLES": "7",
        "TICKETUNE_SERVER__ADMIN_TOKEN": "s3cret",
    }
    settings = load_settings(tmp_path / "c.yaml", environ=env)
    assert settings.kafka.bootstrap_servers == "b:2"
    assert settings.gate.min_eval_examples == 7
    assert settings.server.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_every_problem_is_reported_with_its_field_path(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "kafka: {session_timeout_ms: 5, bogus: 1}\ngate: {profile: nope}\nschedule: {cron: 'every day'}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "c.yaml", environ={})
    text = "\n".join(err.value.problems)
    assert "kafka.session_timeout_ms:" in text
    assert "kafka.bogus:" in text
    assert "gate.profile:" in text
    assert "schedule:" in text and "crontab" in text


def test_fsdp_sharding_refuses_what_it_cannot_shard_and_names_the_fields(tmp_path):
    refused = {
        "training: {sharding: fsdp, compile: true}": "training: sharding fsdp does not run with compile: true",
        "training: {sharding: fsdp, objective: sft+kto}": "training: sharding fsdp trains objective sft only",
        "adapter: {method: prompt_tuning}\ntraining: {sharding: fsdp}":
            "training.sharding fsdp cannot train adapter.method prompt_tuning",
        "training: {sharding: zero3}": "training.sharding:",
    }
    for text, problem in refused.items():
        (tmp_path / "c.yaml").write_text(text + "\n")
        with pytest.raises(ConfigError) as err:
            load_settings(tmp_path / "c.yaml", environ={})
        assert problem in "\n".join(err.value.problems), text
    (tmp_path / "c.yaml").write_text("adapter: {method: dora}\n"
                                     "training: {sharding: fsdp, gpus: 4, quantization: nf4}\n")
    assert load_settings(tmp_path / "c.yaml", environ={}).training.sharding == "fsdp"


def test_sasl_without_credentials_is_rejected():
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"TICKETUNE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"})
    assert any(p.startswith("kafka:") and "sasl" in p for p in err.value.problems)


def test_validate_config_cli_prints_field_paths_and_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: {eval_fraction: 3}\nserver: {port: -1}\n")
    proc = subprocess.run([sys.executable, "-m", "daemon.app.cli", "validate-config", str(bad)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "store.eval_fraction:" in proc.stderr and "server.port:" in proc.stderr
    good = subprocess.run([sys.executable, "-m", "daemon.app.cli", "validate-config", "--no-file-checks",
                           str(REPO / "deploy/k8s/base/config.yaml")], capture_output=True, text=True, cwd=REPO)
    assert good.returncode == 0, good.stderr


def test_validate_config_names_each_missing_file_and_warns_about_a_hub_id(tmp_path, capsys):
    from daemon.app.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("model: {base: ./models/nowhere}\ngate: {golden_prompts: ./gp.yaml, general_text: ./gt.txt}\n")
    assert main(["validate-config", str(config)]) == 2
    said = capsys.readouterr().err
    assert f"model.base: directory {tmp_path / 'models/nowhere'} does not exist" in said
    assert "gate.golden_prompts: file" in said and "gate.general_text: file" in said
    (tmp_path / "models/nowhere").mkdir(parents=True)
    (tmp_path / "models/nowhere/config.json").write_text("{}")
    (tmp_path / "gp.yaml").write_text("[]")
    (tmp_path / "gt.txt").write_text("text")
    assert main(["validate-config", str(config)]) == 0
    hub = tmp_path / "hub.yaml"
    hub.write_text("model: {base: HuggingFaceTB/SmolLM2-135M-Instruct}\n")
    assert main(["validate-config", str(hub)]) == 0
    assert "taken as a hub id, which cannot be checked offline" in capsys.readouterr().err





def test_config_hash_ignores_secrets_but_not_training_knobs():
    a = load_settings(environ={})
    b = load_settings(environ={"TICKETUNE_SERVER__ADMIN_TOKEN": "x"})
    c = load_settings(environ={"TICKETUNE_TRAINING__LEARNING_RATE": "0.1"})
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_a_tick_skipped_while_a_cycle_runs_is_logged_at_info_not_warning(caplog):
    import threading
    import time

    from daemon.config import ScheduleConfig
    from daemon.cycle.scheduler import start_scheduler

    release, started = threading.Event(), threading.Event()

    def long_cycle() -> None:
        started.set()
        release.wait(10)

    caplog.set_level(logging.INFO, logger="apscheduler")
    scheduler = start_scheduler(ScheduleConfig(cron=None, interval_minutes=1 / 60), long_cycle)
    try:
        assert started.wait(5)
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and not any("running instances" in r.getMessage() for r in caplog.records):
            time.sleep(0.1)
    finally:
        release.set()
        scheduler.shutdown(wait=True)
    busy = [r for r in caplog.records if "maximum number of running instances" in r.getMessage()]
    assert busy and {r.levelname for r in busy} == {"INFO"}


def test_an_interval_schedule_shows_no_default_cron():
    settings = load_settings(environ={"TICKETUNE_SCHEDULE__INTERVAL_MINUTES": "30"})
    assert settings.schedule.cron is None and settings.schedule.interval_minutes == 30
    assert load_settings(environ={}).schedule.cron == "0 3 * * *"
