"""Importing param_decomp leaves XLA_FLAGS as the user set them (bench/README.md, "XLA:CPU
flags": the scheduler default XLA ships is the faster one for the shared-product step)."""

import os
import subprocess
import sys


def _flags_after_import(xla_flags: str | None) -> str | None:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    code = "import os, param_decomp; print(os.environ.get('XLA_FLAGS', '<unset>'))"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_import_sets_no_xla_flag() -> None:
    assert _flags_after_import(None) == "<unset>"
    kept = "--xla_force_host_platform_device_count=4"
    assert _flags_after_import(kept) == kept
