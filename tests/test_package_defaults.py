"""Importing param_decomp sets the XLA:CPU scheduler default, and never overrides the user's."""

import os
import subprocess
import sys

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def _flags_after_import(xla_flags: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    code = "import os, param_decomp; print(os.environ['XLA_FLAGS'])"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_import_turns_off_the_cpu_concurrency_scheduler() -> None:
    assert _flags_after_import(None) == f"{FLAG}=false"
    kept = _flags_after_import("--xla_force_host_platform_device_count=4")
    assert kept == f"--xla_force_host_platform_device_count=4 {FLAG}=false"


def test_a_user_setting_wins() -> None:
    assert _flags_after_import(f"{FLAG}=true") == f"{FLAG}=true"
