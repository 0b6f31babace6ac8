"""Where a study's numbers came from: the code's commit and the machine, stored in each run's
JSON so a rendered table can say what produced it (SPEC S16.1)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import jax

_SOURCE = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=_SOURCE, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def commit() -> dict[str, Any] | None:
    """The package's git commit and whether tracked files differ from it; None outside git."""
    head = _git("rev-parse", "HEAD")
    if not head:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"sha": head, "dirty": bool(status)}


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    devices = jax.devices()
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "jax_version": jax.__version__,
        "platform": platform.platform(),
    }
