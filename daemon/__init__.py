"""ticketune: keeps a LoRA adapter up to date with resolved customer-support tickets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__version__ = "0.1.0"


def code_version() -> str:
    """`TICKETUNE_CODE_VERSION` (set by image builds), else the version plus the git commit if known."""
    if os.environ.get("TICKETUNE_CODE_VERSION"):
        return os.environ["TICKETUNE_CODE_VERSION"]
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            sha = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout.strip()
            return f"{__version__}+g{sha}"
        except (OSError, subprocess.SubprocessError):
            pass
    return __version__
