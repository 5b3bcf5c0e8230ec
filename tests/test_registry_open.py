"""Opening a local MLflow store: created aside and renamed, so a process killed while MLflow builds its
schema leaves no half-built database behind; a damaged database is a RegistryError naming the setting."""

import sqlite3

import pytest

from connectors.registry import AdapterRegistry, RegistryError


def test_a_new_sqlite_store_is_created_whole_and_what_a_killed_creation_left_is_cleared(tmp_path):
    stale = tmp_path / ".mlflow.db.creating-12345"  # a creation killed halfway
    stale.write_bytes(b"half a schema")
    registry = AdapterRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", "open-test")
    assert registry.champion_version() is None
    assert not stale.exists() and not list(tmp_path.glob(".mlflow.db.creating-*"))
    tables = {row[0] for row in sqlite3.connect(tmp_path / "mlflow.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"experiments", "runs", "model_versions", "alembic_version"} <= tables
    # and it opens again as it is
    assert AdapterRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", "open-test").champion_version() is None


def test_a_half_built_database_is_a_registry_error_naming_the_setting(tmp_path):
    db = sqlite3.connect(tmp_path / "mlflow.db")  # what an older ticketune killed mid-migration could leave
    db.execute("CREATE TABLE trace_info (request_id TEXT PRIMARY KEY)")
    db.commit()
    db.close()
    with pytest.raises(RegistryError, match="registry.tracking_uri"):
        AdapterRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}", "open-test")
