"""CPU threads for the worker: no more than the container's CPU quota allows.

torch sizes its thread pool from the machine's cores. In a container with a CPU limit (a Kubernetes pod
with `limits.cpu: 2` on a 64-core node) that is far more threads than the quota lets run, and each step
then waits on threads the kernel throttles. So, unless OMP_NUM_THREADS says otherwise, the worker
uses at most the quota's CPUs (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`),
rounded up, and never more than the CPUs it may be scheduled on.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)
CGROUP = Path("/sys/fs/cgroup")


def quota_cpus(root: Path = CGROUP) -> int | None:
    """The CPUs the cgroup's quota allows, rounded up; None when no quota is set (or none is readable)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def worker_threads(current: int, root: Path = CGROUP) -> int | None:
    """The thread count to set instead of `current` (torch's), or None to leave it: OMP_NUM_THREADS set by
    the user, or no quota and no affinity below it."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or current
    limit = min(filter(None, (quota_cpus(root), allowed)))
    return limit if limit < current else None


def apply_cpu_threads() -> int:
    """Sets torch's thread count to the container's CPUs where that is fewer; returns the count in use."""
    import torch

    current = torch.get_num_threads()
    wanted = worker_threads(current)
    if wanted is not None:
        torch.set_num_threads(wanted)
        log.info("torch threads %d (the CPU quota or affinity; torch would use %d); OMP_NUM_THREADS overrides it",
                 wanted, current)
        return wanted
    return current
