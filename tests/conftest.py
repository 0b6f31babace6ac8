"""Test configuration: 4 simulated CPU devices, so every sharding path runs (set before jax)."""

import os
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDENS_DIR = REPO_ROOT.parent / "shared" / "goldens"


@pytest.fixture(scope="session")
def goldens_dir() -> Path:
    assert GOLDENS_DIR.is_dir(), f"goldens not found at {GOLDENS_DIR} (../shared beside the repo)"
    return GOLDENS_DIR
