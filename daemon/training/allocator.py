"""The worker's memory allocator: glibc malloc tuned for a training process, set before Python starts.

A training step allocates and frees activations of megabytes each, thousands of times a step. glibc's
defaults serve each block over its mmap threshold with its own mmap and hand it back with munmap when freed,
so every step faults its activations in again page by page (4 KiB each, zeroed by the kernel): on
SmolLM2-135M in bf16 on CPU, 1.5 million page faults in a 20-second profiling run. With no mmap threshold and
no trim the blocks come from the heap and stay there for the next step: 0.76 million faults, and the
worker 3 to 8% faster on SmolLM2 (alternating runs; bench/RESULTS.md). What the heap keeps goes back every
TRIM_EVERY_STEPS steps and after training (memory_plan.return_freed_memory), before the probe loads its
own copy of the model. Transparent huge pages for the heap (glibc.malloc.hugetlb) cut the faults further
in a profiling script but made the worker slower (321-344 against 362-373 tokens/s), so they stay off.

glibc reads GLIBC_TUNABLES only when a process starts, so the worker's entry point sets it and execs the
same command again, once. An operator's own GLIBC_TUNABLES that already tunes malloc is left alone, and
TICKETUNE_ALLOCATOR=system turns this off. Other C libraries (musl) ignore it.
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
