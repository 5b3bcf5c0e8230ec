"""The worker ends with the service that started it. A service killed outright (SIGKILL, the kernel's
out-of-memory killer) must not leave its worker training on, holding memory or a GPU, while the
restarted service starts another: the worker asks the kernel for SIGTERM when its parent dies, which
it answers as any SIGTERM (a checkpoint, exit 3), so the restarted service resumes the cycle."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from daemon.training.contract import PARENT_PID_ENV

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux only, and only when the executor named itself in `PARENT_PID_ENV` (a Kubernetes Job's or
    torchrun's worker has another parent); a parent already gone means SIGTERM at once."""
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(expected):
        os.kill(os.getpid(), signal.SIGTERM)
