"""A new base model starts a new lineage: the first cycle on it trains a fresh adapter, is judged
against the new base model on the old champion's trusted eval set, never loads the old champion,
and `history` draws the break. Real worker, real MLflow store, two real tiny base models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_cycle import examples

from daemon.app.tables import history_table
from daemon.app.wiring import build_cycle_runner, build_registry
from daemon.champion.versions import history
from daemon.config import load_settings
from daemon.cycle.runner import base_model_fingerprint
from daemon.store import ExampleStore

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_new_base_model_is_judged_against_the_new_base_on_the_old_trusted_set(
    tmp_path: Path, tiny_model_dir: Path, mlflow_sqlite_uri: str
) -> None:
    other_base = tmp_path / "other-base"
    built = subprocess.run([sys.executable, "-m", "daemon.training", "make-base-model", str(other_base),
                            "--steps", "60", "--seed", "5"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    assert base_model_fingerprint(str(other_base), None) != base_model_fingerprint(str(tiny_model_dir), None)
    env = {
        "TICKETUNE_STORE__PATH": str(tmp_path / "examples.db"),
        "TICKETUNE_MODEL__BASE": str(tiny_model_dir),
        "TICKETUNE_REGISTRY__TRACKING_URI": mlflow_sqlite_uri,
        "TICKETUNE_TRAINING__WORK_DIR": str(tmp_path / "cycles"),
        "TICKETUNE_TRAINING__EPOCHS": "4",
        "TICKETUNE_TRAINING__LEARNING_RATE": "0.01",
        "TICKETUNE_TRAINING__MAX_SEQ_LEN": "384",
        "TICKETUNE_TRAINING__ROW_TOKENS": "1024",
        "TICKETUNE_SCHEDULE__MIN_NEW_EXAMPLES": "20",
        "TICKETUNE_GATE__MIN_EVAL_EXAMPLES": "8",
        "TICKETUNE_GATE__PROFILE": "demo",
    }
    settings = load_settings(environ=env)
    store = ExampleStore(settings.store.path, settings.store.eval_fraction)
    registry = build_registry(settings)
    try:
        store.apply(examples(80, seed=21, start_id=21_000))
        first = build_cycle_runner(settings, store, registry).run(trigger="test")
        assert first.verdict == "promoted", first.reasons
        trusted_before = store.trusted_set_size(first.version)

        moved = load_settings(environ=env | {"TICKETUNE_MODEL__BASE": str(other_base)})
        store.apply(examples(40, seed=22, start_id=22_000))
        second = build_cycle_runner(moved, store, registry).run(trigger="test")
        assert second.version == "2", second.reasons
        assert any("new lineage" in reason for reason in second.reasons), second.reasons
        assert "champion_eval_loss" not in second.metrics and "base_eval_loss" in second.metrics
        tags = registry.get_version_tags(second.version)
        assert tags["ticketune.reference"] == "base"
        assert tags["ticketune.lineage_break"].startswith("base model changed from")
        assert tags["ticketune.base_model_fingerprint"] == base_model_fingerprint(str(other_base), None)
        spec = json.loads((moved.training.work_dir / second.cycle_id / "spec.json").read_text())
        assert spec["init_adapter"] is None and spec["compare_adapters"] == {}  # the old champion is never loaded
        assert spec["base_model"] == str(other_base)
        # judged on the old champion's trusted set, plus replay of all trusted training data
        result = json.loads((moved.training.work_dir / second.cycle_id / "out" / "result.json").read_text())
        scored = result["eval"]["trusted"]["candidate"]
        assert scored["examples"] + scored["dropped_examples"] == trusted_before
        snapshot = store.load_snapshot(spec["snapshot_id"])
        assert snapshot.replay and len(snapshot.trusted_eval) == trusted_before

        table = history_table(history(registry, store)).splitlines()
        v2 = next(i for i, line in enumerate(table) if line.startswith("v2 "))
        assert "new base model" in table[v2 + 1] and str(other_base) in table[v2 + 1]
        assert table[v2 + 2].startswith("v1 ")
    finally:
        store.close()
