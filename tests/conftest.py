"""Test configuration, set before jax starts: 4 simulated CPU devices, so every sharding path
runs, XLA:CPU compiling for speed of compilation, and one XLA compilation cache for the whole
test run.

Compilation: the suite's programs are many and small, so compiling them dominates running them.
`JAX_DISABLE_MOST_OPTIMIZATIONS=1` skips LLVM's optimisation of the generated machine code
(XLA's own HLO passes, fusion and layout, still run): a compile-bound sample of the suite went
from 107 to 81 s. `--xla_cpu_use_fusion_emitters=false` emits fused loops with XLA:CPU's older
emitters, which compile faster: the density-target tests 55 -> 37 CPU s, the site-pattern tests
50 -> 34 s (2026-12-08). A test marked `optimized_xla` (hundreds of steps of few programs, the
toy recoveries) turns the first back on: ResidMLP recovery 81 -> 71 CPU s. The numbers the tests
compare are the same programs' results; a caller's own settings are left as they are.
Benchmarks (`make bench`) never run with them.

The cache: many tests compile the same step (a run, its resumed twin, the CLI subprocesses,
the xdist workers); the first compile of a program is stored and the others load it. The
folder is made fresh by the process that starts the run (inherited by the xdist workers and
every subprocess through the environment) and removed when that process ends, so no run
sees another run's programs. A caller's own JAX_COMPILATION_CACHE_DIR is left as it is. Every
program is stored, however fast it compiles: a tiny run compiles about 80 programs of 0.1-0.3 s
each, and the CLI tests start dozens of processes that compile the same ones (a tiny TMS
decompose: 25 -> 17 s of CPU with the pycs below).

Bytecode: the suite starts about a hundred Python processes (xdist workers, CLI and
multi-process subprocesses). Where PYTHONDONTWRITEBYTECODE is set (some machine images do, and
uv installs no .pyc), each of them compiles jax, flax and orbax from source again, 5-6 s of CPU
per process; the suite's processes write the .pyc files once instead (Python's default).
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

DEVICES_FLAG = "--xla_force_host_platform_device_count=4"
if DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + DEVICES_FLAG).strip()
# JAX's switch (not an XLA flag) so that a test marked `optimized_xla` can turn it off; its
# subprocesses read it from the environment
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if "--xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

OWN_COMPILE_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if OWN_COMPILE_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="param_decomp_xla_cache_")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from collections.abc import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDENS_DIR = REPO_ROOT.parent / "shared" / "goldens"
FIXTURES = REPO_ROOT / "tests" / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "runs_long(seconds): a module that takes about this long; scheduled first (see below)",
    )
    config.addinivalue_line(
        "markers",
        "optimized_xla: compile with XLA's optimisations (a test that runs hundreds of steps "
        "of few programs, where running them costs more than compiling them)",
    )


@pytest.fixture(autouse=True)
def _optimized_xla(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked `optimized_xla` (hundreds of steps, few programs) compiles with XLA's
    optimisations on, in this process and in the processes it starts."""
    if request.node.get_closest_marker("optimized_xla") is None:
        yield
        return
    import jax

    before = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"]
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0"
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = before
        jax.config.update("jax_disable_most_optimizations", before == "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first. xdist's --dist loadfile hands out files in collection order (with
    `--no-loadscope-reorder`, which `make test` passes: by default xdist re-sorts files by
    their number of tests, and a long file of few tests then starts last), so a long file
    collected last keeps one worker busy while the other idles; starting with the files
    marked `runs_long` (largest estimate first, a mark on the module or on any of its tests)
    shortens that tail. A scheduling hint only: the estimates are never asserted, and the
    order inside a file is unchanged."""

    def file_of(item: pytest.Item) -> str:
        return item.nodeid.split("::")[0]

    per_file: dict[str, float] = {}
    for item in items:
        marks = item.iter_markers("runs_long")
        seconds = max((m.kwargs.get("seconds", 0) for m in marks), default=0)
        per_file[file_of(item)] = max(per_file.get(file_of(item), 0), seconds)
    # stable: the files keep their own order, and so do the tests inside a file
    items.sort(key=lambda item: -per_file[file_of(item)])


def pytest_unconfigure(config: pytest.Config) -> None:
    """The process that made the cache folder removes it (xdist workers did not make one)."""
    if OWN_COMPILE_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def goldens_dir() -> Path:
    assert GOLDENS_DIR.is_dir(), f"goldens not found at {GOLDENS_DIR} (../shared beside the repo)"
    return GOLDENS_DIR


@pytest.fixture(scope="session")
def trained_targets(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`install(runs_dir, *target_yamls)`: the targets trained (or pretrained) once per test
    process, by the same jobs a decomposition runs, then copied into `runs_dir/targets/`
    where `decompose` finds them cached. Tests of the target training itself do not use it."""
    from param_decomp.config.pretrain_schema import PretrainConfig
    from param_decomp.jobs.pretrain import load_pretrained
    from param_decomp.jobs.train_target import load_or_train_target
    from param_decomp.runconfig.any_config import load_any_config
    from param_decomp.train.run_dir import target_run_dir

    cache = tmp_path_factory.mktemp("trained_targets")

    def install(runs_dir: Path, *target_yamls: Path) -> Path:
        for target_yaml in target_yamls:
            cfg = load_any_config(target_yaml)
            trained = target_run_dir(cfg.run_name, cache)
            if not trained.is_dir():
                train = load_pretrained if isinstance(cfg, PretrainConfig) else load_or_train_target
                train(cfg, cache, str(target_yaml))
            shutil.copytree(trained, target_run_dir(cfg.run_name, runs_dir), dirs_exist_ok=True)
        return runs_dir

    return install
