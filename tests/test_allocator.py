"""The worker's malloc tunables: set once, before the worker starts for real; an operator's own left alone."""

from __future__ import annotations

from daemon.training.allocator import ALLOCATOR_ENV, MALLOC_TUNABLES, TUNABLES_ENV, tuned_environment


def test_the_tunables_are_added_once_under_glibc_only():
    tuned = tuned_environment({"PATH": "/bin"}, "glibc")
    assert tuned == {"PATH": "/bin", TUNABLES_ENV: MALLOC_TUNABLES}
    assert "glibc.malloc.mmap_threshold=4294967296" in MALLOC_TUNABLES and "hugetlb" not in MALLOC_TUNABLES
    assert tuned_environment(tuned, "glibc") is None  # after the exec: nothing more to do, no exec loop
    assert tuned_environment({"PATH": "/bin"}, "") is None  # musl and the like: glibc's tunables mean nothing


def test_other_tunables_are_kept_and_an_operators_malloc_choice_wins():
    other = tuned_environment({TUNABLES_ENV: "glibc.pthread.rseq=0"}, "glibc")
    assert other[TUNABLES_ENV] == f"glibc.pthread.rseq=0:{MALLOC_TUNABLES}"
    assert tuned_environment({TUNABLES_ENV: "glibc.malloc.arena_max=2"}, "glibc") is None
    assert tuned_environment({ALLOCATOR_ENV: "system"}, "glibc") is None
    assert tuned_environment({ALLOCATOR_ENV: "System "}, "glibc") is None
