"""The worker's memory allocator: glibc malloc tuned for a training process, set before Python starts.

A training step allocates and frees activations of megabytes each, thousands of times a step. glibc's
defaults serve each such block with its own mmap and hand it back with munmap when freed, so every step
faults its activations in again page by page (4 KiB each, zeroed by the kernel): on SmolLM2-135M in bf16
on CPU, 1.5 million page faults in a 20-second run. With the tunables below the blocks come from the heap
and stay there for the next step (no mmap threshold, no trim), and the heap is backed by transparent huge
pages where the kernel offers them (`madvise` mode, the common default): 0.19 million faults, and the step
about 15% faster on SmolLM2 and 5% on the tiny model (bench/RESULTS.md). What the heap keeps is handed back
after training (memory_plan.return_freed_memory), before the probe loads its own copy of the model.

glibc reads GLIBC_TUNABLES only when a process starts, so the worker's entry point sets it and execs the
same command again, once. An operator's own GLIBC_TUNABLES that already tunes malloc is left alone, and
TICKETUNE_ALLOCATOR=system turns this off. Other C libraries (musl) ignore it; so does a glibc that lacks
one of the tunables (hugetlb came in 2.35).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

ALLOCATOR_ENV = "TICKETUNE_ALLOCATOR"  # "system": glibc's defaults
TUNABLES_ENV = "GLIBC_TUNABLES"
_HEAP_ONLY = 1 << 32  # 4 GiB: larger than any block a step frees, so none is given its own mmap
MALLOC_TUNABLES = (
    f"glibc.malloc.mmap_threshold={_HEAP_ONLY}:glibc.malloc.trim_threshold={_HEAP_ONLY}"
)


def tuned_environment(environ: Mapping[str, str], libc: str) -> dict[str, str] | None:
    """The environment to exec the worker in, or None to run on as it is: not glibc, turned off, or malloc
    already tuned (by the operator, or by this worker before its exec)."""
    if libc != "glibc" or environ.get(ALLOCATOR_ENV, "").strip().lower() == "system":
        return None
    current = environ.get(TUNABLES_ENV, "")
    if "glibc.malloc." in current:
        return None
    return {**environ, TUNABLES_ENV: f"{current}:{MALLOC_TUNABLES}" if current else MALLOC_TUNABLES}


def allocator_in_use() -> str:
    """What result.json reports: `tuned` when this process started with the worker's malloc tunables,
    `operator` when GLIBC_TUNABLES tunes malloc otherwise, else `system`."""
    current = os.environ.get(TUNABLES_ENV, "")
    if MALLOC_TUNABLES in current:
        return "tuned"
    return "operator" if "glibc.malloc." in current else "system"


def _libc() -> str:
    """"glibc" under glibc (from its own confstr), else ""."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").split(" ")[0]
    except (ValueError, OSError, AttributeError):
        return ""


def exec_with_tuned_allocator() -> None:
    """Execs this same command line again with the tunables set; returns only where nothing is to be done.
    Call it first thing in the entry point, before torch is imported."""
    environment = tuned_environment(os.environ, _libc())
    if environment is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, environment)
    except OSError:  # the interpreter cannot be exec'd again (unusual sandboxes): run on with the defaults
        return
