"""The worker's torch threads follow the container's CPU quota (cgroup v2 and v1 files written here)."""

from __future__ import annotations

import os

from daemon.training.threads import quota_cpus, worker_threads


def test_the_quota_is_read_from_cgroup_v2_and_v1_and_rounded_up(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert quota_cpus(v2) == 2
    (v2 / "cpu.max").write_text("max 100000\n")
    assert quota_cpus(v2) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert quota_cpus(tmp_path / "v1") == 3
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert quota_cpus(tmp_path / "v1") is None
    assert quota_cpus(tmp_path / "none") is None


def test_threads_drop_to_the_quota_unless_omp_num_threads_is_set(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # one CPU
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert worker_threads(64, tmp_path) == 1
    assert worker_threads(1, tmp_path) is None  # already there: nothing to change
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert worker_threads(64, tmp_path) is None  # the user's setting wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert worker_threads(10_000, tmp_path) == len(os.sched_getaffinity(0))  # no quota: the CPUs it may run on
