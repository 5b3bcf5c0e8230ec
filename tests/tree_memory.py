"""The resident memory of a process tree, sampled in a thread; the peak and who held it then."""

from __future__ import annotations

import re
import threading

import psutil

PEAK_RSS_LIMIT = 4 << 30  # a real-model (135M) cycle on CPU, the whole tree: service, worker, probe
ENGLISH_WORDS = {"the", "you", "your", "to", "and", "a", "we", "i", "is", "for", "it", "of", "can", "in", "on",
                 "with", "that", "this", "be", "have", "will", "our", "are", "thanks", "thank", "hi", "hello",
                 "please", "there", "out", "if", "me", "my", "us", "at", "as", "not", "get", "help", "sorry"}


def reads_as_english(text: str | None) -> bool:
    """At least four words, two different ones among the commonest English ones: an answer, not noise."""
    words = re.findall(r"[a-z']+", (text or "").lower())
    return len(words) >= 4 and len(ENGLISH_WORDS.intersection(words)) >= 2


class TreeMemory:
    """Samples the resident memory of `root` (default: this process) and all its descendants until stopped;
    keeps the peak of their sum and each process's share of it."""

    def __init__(self, root: int | None = None, interval: float = 0.2) -> None:
        self.root = root
        self.peak = 0
        self.peak_processes: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        try:
            top = psutil.Process(self.root)
        except psutil.Error:
            return
        while not self._stop.wait(interval):
            try:
                processes = [top, *top.children(recursive=True)]
            except psutil.Error:  # the root ended
                return
            rows = []
            for process in processes:
                try:
                    rows.append((" ".join(process.cmdline()[1:4])[:80], process.memory_info().rss))
                except psutil.Error:
                    continue
            total = sum(rss for _, rss in rows)
            if total > self.peak:
                self.peak, self.peak_processes = total, rows

    def start(self) -> TreeMemory:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> TreeMemory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        return f"peak {self.peak >> 20} MiB: " + ", ".join(f"{name} {rss >> 20} MiB" for name, rss in
                                                           self.peak_processes)
