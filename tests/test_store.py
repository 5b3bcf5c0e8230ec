import json
import multiprocessing
import time
from dataclasses import replace

import pytest

from daemon.ingest.pairs import Example
from daemon.store import Deletion, ExampleStore, LockBusy, store_lock


def example(ticket_id: str, revision: str = "2026-11-01T10:00:00+00:00", group: str | None = None,
            answer: str = "We refunded it.") -> Example:
    return Example(
        ticket_id=ticket_id,
        revision=revision,
        messages=[{"role": "user", "content": f"question {ticket_id}"}, {"role": "assistant", "content": answer}],
        category="billing",
        group_key=group or f"g-{ticket_id}",
    )


@pytest.fixture
def store(tmp_path):
    s = ExampleStore(tmp_path / "examples.db", eval_fraction=0.25)
    yield s
    s.close()


def test_upserts_are_idempotent_and_later_revisions_win_whatever_the_arrival_order(store):
    assert store.apply([example("1")]) == ["stored"]
    assert store.apply([example("1")]) == ["unchanged"]
    newer = example("1", "2026-11-02T10:00:00+00:00", answer="Refund sent again.")
    older = example("1", "2026-10-01T10:00:00+00:00", answer="old")
    assert store.apply([newer, older]) == ["revised", "stale"]
    assert store.get_example("1")["messages"][1]["content"] == "Refund sent again."
    assert store.counts()["examples"] == 1


def test_a_deletion_removes_the_ticket_and_a_redelivered_old_revision_stays_deleted(store):
    store.apply([example("1"), example("2")])
    assert store.apply([Deletion("1"), Deletion("404")]) == ["deleted", "absent"]
    assert store.get_example("1") is None
    assert store.apply([example("1")]) == ["stale"]
    assert store.apply([example("1", "2026-12-01T00:00:00+00:00")]) == ["stored"]


def test_a_batch_that_changes_a_ticket_several_times_gives_the_outcomes_of_one_change_at_a_time(tmp_path):
    """`apply` reads the batch's tickets up front and keeps that view as the batch changes them: the same
    outcomes and the same rows as applying each change in its own batch."""
    day = "2026-11-0{}T10:00:00+00:00".format

    def ex(ticket_id: str, revision: str, **options) -> Example:
        return replace(example(ticket_id, revision, **options), identities=(f"email:{revision}@example.org", "id:7"))

    changes = [ex("1", day(1)), ex("1", day(2), answer="second"), ex("1", day(2), answer="second"),
               ex("1", day(1)), Deletion("1"), ex("1", day(2)), ex("1", day(3), answer="third"),
               ex("2", day(1)), Deletion("2"), Deletion("2"), Deletion("3"), ex("3", day(1))]
    together = ExampleStore(tmp_path / "together.db", identity_key=b"k" * 32)
    one_by_one = ExampleStore(tmp_path / "one.db", identity_key=b"k" * 32)
    outcomes = together.apply(changes)
    assert outcomes == [one_by_one.apply([change])[0] for change in changes]
    assert outcomes == ["stored", "revised", "unchanged", "stale", "deleted", "stale", "stored",
                        "stored", "deleted", "absent", "absent", "stored"]
    for ticket in ("1", "2", "3"):
        assert together.get_example(ticket) == one_by_one.get_example(ticket)
    assert together._db.execute("SELECT count(*) FROM example_identities").fetchone()[0] == 4
    rows = "SELECT ticket_id, identity FROM example_identities ORDER BY 1, 2"
    assert together._db.execute(rows).fetchall() == one_by_one._db.execute(rows).fetchall()
    together.close()
    one_by_one.close()


def test_the_batch_check_of_what_the_store_would_discard_agrees_with_the_single_one(store):
    store.apply([example("1", "2026-11-05T00:00:00+00:00"), example("2"), example("gone")])
    store.apply([Deletion("gone")])
    store.forget(ticket_id="2")
    asked = [example("1"), example("1", "2026-11-06T00:00:00+00:00"), example("2", "2026-12-01T00:00:00+00:00"),
             example("gone"), example("gone", "2026-12-01T00:00:00+00:00"), example("new")]
    assert store.discards(asked) == [store.would_discard(e) for e in asked] == [True, False, True, True, False,
                                                                               False]


def test_apply_reuses_what_discards_read_only_while_nothing_was_written_since(store, monkeypatch):
    """`apply` takes the rows `discards` read for the batch instead of reading them again, unless the store
    changed in between: an erasure on another thread (another connection) or a write on this one."""
    import threading

    from daemon.store import examples as examples_module

    reads = []
    real_read = examples_module._BatchState.read
    monkeypatch.setattr(examples_module._BatchState, "read",
                        classmethod(lambda cls, s, exs: reads.append(len(exs)) or real_read(s, exs)))
    batch = [person_example("1", "ana@example.com"), person_example("2", "bo@example.com")]
    assert store.discards(batch) == [False, False]
    assert store.apply(batch[:1]) == ["stored"]  # part of what was read: no second read
    assert reads == [2]

    later = [person_example("3", "ana@example.com"), person_example("4", "cy@example.com")]
    assert store.discards(later) == [False, False]
    erasure = threading.Thread(target=lambda: store.forget(requester_email="ana@example.com"))
    erasure.start()
    erasure.join()
    assert store.apply(later) == ["suppressed", "stored"]  # the erasure is seen: read again
    assert reads == [2, 2, 2]

    again = [person_example("5", "dee@example.com")]
    assert store.discards(again) == [False]
    store.forget(requester_email="dee@example.com")  # on this thread's connection: `data_version` stays
    assert store.apply(again) == ["suppressed"]  # read again all the same
    assert reads == [2, 2, 2, 1, 1]
    assert store.apply([person_example("6", "eve@example.com")]) == ["stored"]  # not asked about: read
    assert reads == [2, 2, 2, 1, 1, 1]


def test_the_split_is_deterministic_and_keeps_a_group_on_one_side(tmp_path, store):
    store.apply([example(str(i), group=f"req-{i % 40}") for i in range(400)])
    other = ExampleStore(tmp_path / "other.db", eval_fraction=0.25)
    other.apply([example(str(i), group=f"req-{i % 40}") for i in reversed(range(400))])
    rows = {r[0]: (r[1], r[2]) for r in store._db.execute("SELECT ticket_id, split, group_key FROM examples")}
    rows2 = {r[0]: r[1] for r in other._db.execute("SELECT ticket_id, split FROM examples")}
    assert {t: s for t, (s, _) in rows.items()} == rows2
    by_group: dict[str, set[str]] = {}
    for split, group in rows.values():
        by_group.setdefault(group, set()).add(split)
    assert all(len(splits) == 1 for splits in by_group.values())
    eval_share = sum(1 for s, _ in rows.values() if s == "eval") / len(rows)
    assert 0.05 < eval_share < 0.5
    other.close()


def test_first_snapshot_uses_the_batch_held_out_part_as_the_trusted_set(store):
    store.apply([example(str(i)) for i in range(200)])
    snap = store.create_snapshot("c1", None, replay_fraction=0.25)
    assert len(snap.batch_train) + len(snap.batch_eval) == 200
    assert snap.trusted_eval == snap.batch_eval and snap.batch_eval
    assert snap.replay == []  # nothing promoted yet


def test_promotion_closes_the_batch_and_freezes_the_trusted_set_with_the_version(store):
    store.apply([example(str(i)) for i in range(200)])
    snap = store.create_snapshot("c1", None, replay_fraction=0.25)
    store.apply([example("late")])  # arrives while the cycle runs: stays pending
    assert store.freeze_trusted_set("1", snap.id, None, cap=1000) == len(snap.batch_eval)
    store.close_batch(snap.id, verdict="promoted", model_version="1")
    assert store.pending_count() == 1

    store.apply([example(f"b{i}") for i in range(200)])
    snap2 = store.create_snapshot("c2", "1", replay_fraction=0.25)
    assert {e["ticket_id"] for e in snap2.trusted_eval} == {e["ticket_id"] for e in snap.batch_eval}
    assert not {e["ticket_id"] for e in snap2.batch_eval} & {e["ticket_id"] for e in snap2.trusted_eval}
    expected_replay = round(len(snap2.batch_train) * 0.25 / 0.75)
    assert len(snap2.replay) == expected_replay
    assert {e["ticket_id"] for e in snap2.replay} <= {e["ticket_id"] for e in snap.batch_train}


def test_a_rejected_batch_is_quarantined_never_replayed_and_can_be_released(store):
    store.apply([example(str(i)) for i in range(100)])
    first = store.create_snapshot("c1", None, replay_fraction=0.0)
    store.freeze_trusted_set("1", first.id, None, cap=1000)
    store.close_batch(first.id, verdict="promoted", model_version="1")
    store.apply([example(f"bad{i}") for i in range(100)])
    bad = store.create_snapshot("c2", "1", replay_fraction=0.5)
    batch_id = store.close_batch(bad.id, verdict="rejected", model_version="2")
    assert store.counts()["quarantined"] == 100 and store.pending_count() == 0

    store.apply([example(f"new{i}") for i in range(100)])
    nxt = store.create_snapshot("c3", "1", replay_fraction=0.5)
    ids = {e["ticket_id"] for e in nxt.batch_train + nxt.replay + nxt.trusted_eval}
    assert not any(i.startswith("bad") for i in ids)

    assert store.release_batch(batch_id) == 100
    assert store.pending_count() == 200
    with pytest.raises(ValueError):
        store.release_batch(batch_id)


def test_the_trusted_set_is_capped_by_a_stable_reservoir_sample(store):
    store.apply([example(str(i)) for i in range(400)])
    snap = store.create_snapshot("c1", None, replay_fraction=0.0)
    kept = store.freeze_trusted_set("1", snap.id, None, cap=10)
    assert kept == 10
    again = store.freeze_trusted_set("1b", snap.id, None, cap=10)
    rows = lambda v: {r[0] for r in store._db.execute(  # noqa: E731
        "SELECT ticket_id FROM trusted_sets WHERE model_version = ?", (v,))}
    assert again == 10 and rows("1") == rows("1b")


def test_snapshot_files_hold_train_trusted_and_batch_heldout(store, tmp_path):
    store.apply([example(str(i)) for i in range(50)])
    snap = store.create_snapshot("c1", None, replay_fraction=0.0)
    files = snap.write_jsonl(tmp_path / "snap")
    train = [json.loads(line) for line in files["train"].read_text().splitlines()]
    assert len(train) == len(snap.batch_train)
    assert train[0]["messages"][-1]["role"] == "assistant"
    assert len(files["trusted"].read_text().splitlines()) == len(snap.trusted_eval)


def _hold_lock(path, started):
    with store_lock(path, "cycle"):
        started.set()
        time.sleep(3)


def test_the_cycle_lock_is_held_across_processes(tmp_path):
    path = tmp_path / "examples.db"
    started = multiprocessing.Event()
    proc = multiprocessing.Process(target=_hold_lock, args=(path, started))
    proc.start()
    assert started.wait(10)
    with pytest.raises(LockBusy, match="cycle lock") as refused:
        with store_lock(path, "cycle", wait_seconds=0.3):
            pass
    assert f"process {proc.pid} (" in str(refused.value)  # the refusal names the holder
    proc.join()
    with store_lock(path, "cycle", wait_seconds=0.3):
        pass


def test_a_store_made_by_an_older_schema_is_migrated_at_open(tmp_path):
    import sqlite3

    from daemon.store import MIGRATIONS

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO examples (ticket_id, revision, example_json, category, group_key, split, stored_at)"
               " VALUES ('7', 'r', '{}', 'billing', 'g', 'train', '2026-01-01T00:00:00+00:00')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = ExampleStore(path)
    assert store.schema_version == len(MIGRATIONS)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert store._db.execute("SELECT pipeline_version FROM examples WHERE ticket_id = '7'").fetchone()[0] == "1"
    assert store.apply([example("8")]) == ["stored"]
    store.close()
    ExampleStore(path).close()  # reopening a current store migrates nothing and works


def test_a_store_from_a_newer_ticketune_is_refused(tmp_path):
    import sqlite3

    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 999")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this ticketune"):
        ExampleStore(path)


def test_freshness_reports_the_newest_example_and_bounded_categories(store):
    store.apply([Example(ticket_id=str(i), revision="r", messages=[], category=f"cat{i % 25}",
                         group_key=str(i)) for i in range(50)])
    fresh = store.freshness(top_categories=20)
    assert fresh["newest_stored_at"] is not None
    assert len(fresh["by_category"]) == 21 and sum(fresh["by_category"].values()) == 50
    assert fresh["by_category"]["other"] == 10


def person_example(ticket_id: str, email: str, revision: str = "2026-11-01T10:00:00.000000+00:00") -> Example:
    return Example(ticket_id=ticket_id, revision=revision,
                   messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                   group_key=f"g-{email}", identities=(f"email:{email}", f"id:{email[:3]}"))


def test_forget_by_requester_email_erases_everywhere_and_suppresses_replays(store):
    store.apply([person_example("1", "ana@example.com"), person_example("2", "ana@example.com"),
                 person_example("3", "bo@example.com")])
    snap = store.create_snapshot("c1", None, replay_fraction=0.0)
    store.start_cycle("c1", "test")
    store.finish_cycle("c1", verdict="promoted", model_version="1", snapshot_id=snap.id, reasons=[], metrics={})
    store.freeze_trusted_set("1", snap.id, None, cap=100)

    result = store.forget(requester_email="  ANA@example.com ")
    assert result["tickets_removed"] == 2
    trained = {e["ticket_id"] for e in snap.batch_train}
    assert result["affected_versions"] == (["1"] if trained & {"1", "2"} else [])
    assert store.get_example("1") is None and store.get_example("2") is None and store.get_example("3")
    for table in ("snapshot_items", "trusted_sets", "example_identities"):
        assert store._db.execute(f"SELECT count(*) FROM {table} WHERE ticket_id IN ('1', '2')").fetchone()[0] == 0
    # a replay of the same tickets, or a new ticket of the same requester, is not stored again
    later = "2027-01-01T00:00:00.000000+00:00"
    assert store.apply([person_example("1", "ana@example.com", later),
                        person_example("9", "ana@example.com")]) == ["suppressed", "suppressed"]
    dump = b"".join(row[0].encode() for row in store._db.execute("SELECT subject FROM erasures"))
    assert b"ana" not in dump.lower() and len(dump) == 32


def test_forget_by_ticket_id_and_the_erasure_tagging_queue(store):
    store.apply([person_example("7", "cy@example.com")])
    snap = store.create_snapshot("c1", None, replay_fraction=0.0)
    store.start_cycle("c1", "test")
    store.finish_cycle("c1", verdict="promoted", model_version="4", snapshot_id=snap.id, reasons=[], metrics={})
    in_training = bool(snap.batch_train)
    result = store.forget(ticket_id="7")
    assert result["tickets_removed"] == 1
    pending = store.pending_erasures()
    if in_training:
        assert pending[0]["affected_versions"] == ["4"] and store.versions_trained_on_erased_data() == {"4"}
        store.mark_erasure_tagged(pending[0]["erasure_id"])
    assert store.pending_erasures() == []
    assert store.apply([person_example("7", "cy@example.com", "2030-01-01T00:00:00.000000+00:00")]) == ["suppressed"]
    with pytest.raises(ValueError):
        store.forget(ticket_id="1", requester_email="x@example.com")


def test_identities_and_group_keys_are_kept_only_as_keyed_hashes(tmp_path):
    a = ExampleStore(tmp_path / "a.db", identity_key=b"k1")
    b = ExampleStore(tmp_path / "b.db", identity_key=b"k2")
    for s in (a, b):
        s.apply([person_example("1", "ana@example.com")])
    raw = (tmp_path / "a.db").read_bytes() + (tmp_path / "a.db-wal").read_bytes()
    assert b"ana@example.com" not in raw
    key_a = a._db.execute("SELECT group_key FROM examples").fetchone()[0]
    key_b = b._db.execute("SELECT group_key FROM examples").fetchone()[0]
    assert key_a != key_b and "ana" not in key_a
    a.close()
    b.close()


def test_retention_deletes_examples_older_than_the_limit(store):
    store.apply([example("old", "2020-01-01T00:00:00.000000+00:00"), example("new", "2099-01-01T00:00:00.000000+00:00"),
                 example("undated", "")])
    assert store.purge_older_than(365) == 1
    assert store.get_example("old") is None and store.get_example("new") and store.get_example("undated")


def test_a_newer_pipeline_version_rebuilds_the_same_revision(store, monkeypatch):
    import daemon.store as store_module

    store.apply([example("1")])
    assert store.apply([example("1")]) == ["unchanged"]
    newer = str(int(store_module.examples.PIPELINE_VERSION) + 1)
    monkeypatch.setattr(store_module.examples, "PIPELINE_VERSION", newer)  # what the upsert compares with
    assert store.apply([example("1")]) == ["revised"]
    assert store.apply([example("1")]) == ["unchanged"]


def test_the_validation_slice_is_a_stable_part_of_the_new_batch_and_leaves_train(store, tmp_path):
    store.apply([example(str(i)) for i in range(100)])
    first = store.create_snapshot("c1", None, replay_fraction=0.0)
    store.freeze_trusted_set("1", first.id, None, cap=1000)
    store.close_batch(first.id, verdict="promoted", model_version="1")
    store.apply([example(f"b{i}") for i in range(300)])
    snap = store.create_snapshot("c2", "1", replay_fraction=0.25)
    assert snap.replay

    files = snap.write_jsonl(tmp_path / "a", validation_fraction=0.1)
    again = store.load_snapshot(snap.id).write_jsonl(tmp_path / "b", validation_fraction=0.1)
    read = lambda path: [json.loads(line)["ticket_id"] for line in path.read_text().splitlines()]  # noqa: E731
    validation, train = read(files["validation"]), read(files["train"])
    assert read(again["validation"]) == validation and read(again["train"]) == train
    batch_train = {e["ticket_id"] for e in snap.batch_train}
    assert 8 <= len(validation) < 0.2 * len(batch_train) and set(validation) <= batch_train
    assert not set(validation) & set(train)
    assert set(validation) | set(train) == batch_train | {e["ticket_id"] for e in snap.replay}
    assert not set(validation) & {e["ticket_id"] for e in snap.batch_eval + snap.trusted_eval}


def test_a_validation_slice_under_eight_examples_stays_empty_and_everything_trains(store, tmp_path):
    store.apply([example(str(i)) for i in range(30)])
    snap = store.create_snapshot("c1", None, replay_fraction=0.0)
    files = snap.write_jsonl(tmp_path / "snap", validation_fraction=0.1)
    assert files["validation"].read_text() == ""
    assert len(files["train"].read_text().splitlines()) == len(snap.batch_train)
    assert snap.write_jsonl(tmp_path / "none")["validation"].read_text() == ""


def test_a_snapshot_loads_back_as_it_was_created(store):
    store.apply([example(str(i)) for i in range(60)])
    snap = store.create_snapshot("c1", None, replay_fraction=0.0)
    assert store.load_snapshot(snap.id) == snap
    with pytest.raises(KeyError):
        store.load_snapshot("snap-nope")


def test_starting_a_cycle_again_counts_the_attempt_and_clears_its_end(store):
    assert store.start_cycle("c1", "schedule") == 1
    store.finish_cycle("c1", verdict="failed", model_version=None, snapshot_id=None, reasons=["boom"], metrics={})
    assert store.start_cycle("c1", "admin") == 2
    row = store.cycles()[0]
    assert (row["attempts"], row["trigger"], row["ended_at"], row["verdict"], row["reasons"]) == (
        2, "admin", None, "running", [])  # a cycle under way shows as running


def _failed_after_snapshot(store, cycle_id="c1", *, retryable=True):
    store.start_cycle(cycle_id, "test")
    snap = store.create_snapshot(cycle_id, None, replay_fraction=0.0)
    store.finish_cycle(cycle_id, verdict="failed", model_version=None, snapshot_id=snap.id, reasons=["x"],
                       metrics={}, retryable=retryable)
    return snap


def test_the_retryable_cycle_is_the_last_one_when_it_failed_retryably_with_its_batch_open(store):
    from daemon.store import RetryableCycle

    store.apply([example(str(i)) for i in range(40)])
    assert store.retryable_cycle() is None
    snap = _failed_after_snapshot(store)
    assert store.retryable_cycle() == RetryableCycle("c1", snap.id, 1)
    store.start_cycle("c1", "test")
    store.fail_unfinished_cycles("the service stopped while the cycle ran")  # a crash is retryable too
    assert store.retryable_cycle() == RetryableCycle("c1", snap.id, 2)

    store.record_skip("c-busy", "schedule", "process 7 holds the cycle lock on the store")
    assert store.retryable_cycle() == RetryableCycle("c1", snap.id, 2)  # a skip ran nothing: c1 still resumes

    store.close_batch(snap.id, verdict="rejected", model_version="1")
    assert store.retryable_cycle() is None  # its batch is closed


def test_no_retry_for_a_cycle_that_failed_for_good_was_followed_or_lost_snapshot_examples(store):
    store.apply([example(str(i)) for i in range(40)])
    _failed_after_snapshot(store, retryable=False)
    assert store.retryable_cycle() is None

    snap = _failed_after_snapshot(store, "c2")
    store.start_cycle("c3", "test")
    store.finish_cycle("c3", verdict="rejected", model_version="1", snapshot_id=None, reasons=[], metrics={})
    assert store.retryable_cycle() is None  # not the most recent cycle any more

    snap = _failed_after_snapshot(store, "c4")
    assert store.retryable_cycle() is not None
    store.forget(ticket_id=snap.batch_train[0]["ticket_id"])
    assert store.retryable_cycle() is None  # its data files on disk still hold the erased example


def test_the_attempts_migration_keeps_old_cycles_and_never_retries_them(tmp_path):
    import sqlite3

    from daemon.store import MIGRATIONS

    path = tmp_path / "v4.db"
    db = sqlite3.connect(path)
    for statements in MIGRATIONS[:4]:
        for statement in statements:
            db.execute(statement)
    db.execute("INSERT INTO snapshots (id, cycle_id, champion_version, counts_json, created_at)"
               " VALUES ('snap-c0', 'c0', NULL, '{}', '2026-01-01T00:00:00+00:00')")
    db.execute("INSERT INTO cycles (cycle_id, trigger, started_at, ended_at, verdict, snapshot_id)"
               " VALUES ('c0', 'schedule', '2026-01-01T00:00:00+00:00', '2026-01-01T01:00:00+00:00', 'failed',"
               " 'snap-c0')")
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    store = ExampleStore(path)
    assert store.schema_version == len(MIGRATIONS) == 8
    old = store.cycles()[0]
    assert (old["cycle_id"], old["verdict"], old["attempts"], old["retryable"]) == ("c0", "failed", 1, 0)
    assert store.retryable_cycle() is None
    assert store.start_cycle("c0", "test") == 2
    store.close()


def test_the_band_table_keeps_the_keys_it_is_given_and_they_come_and_go_with_the_example(store):
    from dataclasses import replace

    signature = b"\x02" + bytes(range(16)) + bytes(512)  # the store keeps a signature as given
    store.apply([replace(example("1"), quality_signature=signature, dedupe_keys=(11, 12, 13))])
    assert store.band_candidates([99, 12, 99]) == {"1"}  # band 1, bucket 12
    assert store.band_candidates([12, 99, 99]) == set()  # the same bucket in another band is another key
    assert store.exact_owners(bytes(range(16))) == {"1"} and store.signatures_of(["1", "2"]) == {"1": signature}
    store.apply([replace(example("1", "2026-11-02T00:00:00+00:00"), quality_signature=signature, dedupe_keys=(21,))])
    assert store.band_candidates([11, 12, 13]) == set() and store.band_candidates([21]) == {"1"}  # replaced
    store.set_band_keys([("1", None)])
    assert store.indexed_count() == 0
    store.set_band_keys([("1", (31, 32))])
    assert store.apply([Deletion("1")]) == ["deleted"]
    assert store.indexed_count() == 0 and store.band_candidates([31, 32]) == set()


def test_a_batch_that_fails_leaves_no_band_keys_behind(store):
    from dataclasses import replace

    kept = replace(example("1"), quality_signature=b"\x02" + bytes(528), dedupe_keys=(1, 2))
    with pytest.raises(AttributeError):
        store.apply([kept, object()])  # the second change breaks the batch's one transaction
    assert store.get_example("1") is None and store.indexed_count() == 0


def test_the_band_layout_is_recorded_apart_and_a_rebuild_forgets_it_until_it_is_done(store):
    assert store.band_layout() is None
    store.apply([example("1")])
    store.set_band_keys([("1", (5,))])
    store.set_band_layout("1x128")
    assert store.band_layout() == "1x128" and store.indexed_count() == 1
    assert [[(t, s, indexed) for t, s, indexed in page] for page in store.signature_pages()] == [[("1", None, True)]]
    store.clear_bands()
    assert store.band_layout() is None and store.indexed_count() == 0
    store.apply([example(str(i)) for i in range(2, 7)])
    pages = list(store.signature_pages(rows=2))
    assert [len(page) for page in pages] == [2, 2, 2] and [t for page in pages for t, _, _ in page] == [
        "1", "2", "3", "4", "5", "6"]
