"""Running several real processes of one job together (the multi-process tests): start every
command at once, wait with a timeout, kill leftovers, and assert that all exited 0."""

from __future__ import annotations

import socket
import subprocess

TIMEOUT_S = 240
# the suite's LLVM level (tests/conftest.py), for children that set their own device count
FAST_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS of a child process with `devices` simulated CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"


def run_together(commands: list[list[str]], **popen_kwargs: object) -> None:
    procs = [
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen_kwargs
        )
        for cmd in commands
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n---\n".join(logs)[-4000:]


def free_port() -> int:
    """A port for the coordinator that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
