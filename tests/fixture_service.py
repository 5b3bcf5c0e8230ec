"""A real Service's config for tests: an empty store, a sqlite MLflow, Kafka down, no schedule, admin API on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

__all__ = ["ADMIN_TOKEN", "service_config"]

ADMIN_TOKEN = "s3cret-token"


@pytest.fixture
def service_config(tmp_path: Path, mlflow_sqlite_uri: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},  # nothing listens: Kafka is down all along
        "store": {"path": "./store/examples.db"},
        "registry": {"tracking_uri": mlflow_sqlite_uri, "poll_seconds": 0},
        "schedule": {"enabled": False},
        "server": {"host": "127.0.0.1", "port": 0, "admin_token": ADMIN_TOKEN, "shutdown_budget_seconds": 20},
    }))
    return config
