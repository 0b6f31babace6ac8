"""Every broken config gives a one-screen ConfigError naming the file, the key and a fix."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pydantic
import pytest
from cli_runner import cli_command, run_cli

from param_decomp.config.errors import ConfigError, format_path, format_validation_error
from param_decomp.config.loading import (
    check_mesh,
    load_target_config,
    read_yaml,
    resolve_mesh_shape,
)
from param_decomp.config.schema import DecomposeConfig, Mesh, TargetConfig
from param_decomp.losses.registry import loss_list_adapter
from param_decomp.runconfig.any_config import load_any_config
from param_decomp.runconfig.decompose import load_decompose_config

HERE = Path(__file__).resolve().parent
BAD = HERE / "bad"
FIXTURES = HERE / "fixtures"
REPO_ROOT = HERE.parents[1]
N_DEVICES = 4  # conftest forces 4 host devices; mesh checks get the count explicitly
MAX_LINES = 25

# (bad file, dotted key path, hints the message must contain)
BAD_CASES: list[tuple[str, str, list[str]]] = [
    ("unknown_top_level_key", "chekpointing", ["unknown key", "Did you mean 'checkpointing'?"]),
    (
        "loss_type_typo",
        "losses[1].type",
        ["'importance_minimalty'", "Did you mean 'importance_minimality'?", "smooth_l0"],
    ),
    ("negative_coeff", "losses[0].coeff", ["greater than 0", "-1.0"]),
    ("missing_coeff", "losses[0].coeff", ["required key missing"]),
    ("c_zero", "decomposition.C", ["greater than 0", "got 0"]),
    ("missing_target", "target", ["required key missing"]),
    ("target_not_found", "target", ["no_such_target.yaml", "not found"]),
    ("wrong_type_batch_size", "train.batch_size", ["valid integer", "'lots'"]),
    (
        "unknown_loss_key",
        "losses[1].pnormm",
        ["Did you mean 'pnorm'?", "Allowed keys: coeff, pnorm,", "frequency"],
    ),
    ("legacy_beta", "losses[1]", ["beta", "frequency: {coeff: 0.0015", "reference_token_count"]),
    (
        "reference_token_count_zero",
        "losses[1].frequency.reference_token_count",
        ["greater than 0", "got 0"],
    ),
    ("pnorm_zero", "losses[1].pnorm", ["greater than 0", "got 0"]),
    ("gamma_negative", "losses[2].gamma", ["greater than 0", "got -1"]),
    ("target_model_key_typo", "model.n_feature", ["Did you mean 'n_features'?", "n_hidden"]),
    (
        "figures_every_without_figures",  # S14.7: no silently ignored figure schedule
        "eval",
        ["figures_every: 100", "figures is false", "figures: true or figures_every: 0"],
    ),
]

# Files that pass the schema but not the mesh check at 4 devices.
MESH_CASES: list[tuple[str, str, list[str]]] = [
    ("nondivisible_batch", "train.batch_size", ["10", "data x fsdp = 4"]),
    ("c_not_divisible_by_tensor", "decomposition.C", ["6", "tensor axis size 4"]),
    ("mesh_too_big", "mesh", ["8 devices", "4 are visible"]),
]

# Files that fail before validation: (file, substrings of the message).
READ_CASES: list[tuple[str, list[str]]] = [
    ("does_not_exist", ["file not found"]),
    ("yaml_syntax", ["YAML syntax error at line 15", "flow mapping", "line 14"]),
    ("duplicate_key", ["duplicate key 'C'", "line 7", "first on line 6"]),
    ("top_level_list", ["top level must be a mapping", "list"]),
    ("neither_kind", ["`model:`", "`decomposition:`"]),
]


def _check_message(err: ConfigError, path: Path, key: str | None, hints: list[str]) -> str:
    text = str(err)
    lines = text.splitlines()
    assert lines[0] == f"config error in {path}:", text
    assert len(lines) <= MAX_LINES, text
    assert err.path == str(path)
    if key is not None:
        assert f"\n  {key}: " in text, text
        assert key in [k for k, _ in err.problems], err.problems
    for hint in hints:
        assert hint in text, (hint, text)
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize(("name", "key", "hints"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_config_names_key_and_hint(name: str, key: str, hints: list[str]) -> None:
    path = BAD / f"{name}.yaml"
    with pytest.raises(ConfigError) as info:
        load_any_config(path)
    _check_message(info.value, path, key, hints)


@pytest.mark.parametrize(("name", "key", "hints"), MESH_CASES, ids=[c[0] for c in MESH_CASES])
def test_mesh_problems_are_config_errors(name: str, key: str, hints: list[str]) -> None:
    path = BAD / f"{name}.yaml"
    cfg = load_decompose_config(path)  # valid on its own
    with pytest.raises(ConfigError) as info:
        check_mesh(cfg, N_DEVICES, str(path))
    _check_message(info.value, path, key, hints)


@pytest.mark.parametrize(("name", "hints"), READ_CASES, ids=[c[0] for c in READ_CASES])
def test_unreadable_files_are_config_errors(name: str, hints: list[str]) -> None:
    path = BAD / f"{name}.yaml"
    with pytest.raises(ConfigError) as info:
        load_any_config(path)
    _check_message(info.value, path, None, hints)


def test_folder_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="folder"):
        read_yaml(tmp_path)
    locked = tmp_path / "locked.yaml"
    locked.write_text("run_name: x\n")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user that can read mode-000 files")
        with pytest.raises(ConfigError, match="cannot read file"):
            read_yaml(locked)
    finally:
        locked.chmod(0o644)


def test_single_problem_per_single_mistake() -> None:
    """Each schema fixture breaks one thing; it must not be reported as a cascade."""
    for name, _, _ in BAD_CASES:
        if name == "target_model_key_typo":  # renamed key: unknown + missing, by design
            continue
        with pytest.raises(ConfigError) as info:
            load_any_config(BAD / f"{name}.yaml")
        assert len(info.value.problems) == 1, (name, info.value.problems)


def test_many_problems_reported_together() -> None:
    data = read_yaml(FIXTURES / "valid_decompose.yaml")
    data["decomposition"]["C"] = 0
    data["losses"][1]["pnormm"] = 2
    data["train"]["batch_size"] = "lots"
    with pytest.raises(pydantic.ValidationError) as info:
        DecomposeConfig.model_validate(data)
    keys = [k for k, _ in format_validation_error(info.value, DecomposeConfig)]
    assert keys == ["decomposition.C", "train.batch_size"]
    with pytest.raises(pydantic.ValidationError) as info:
        loss_list_adapter().validate_python(data["losses"])
    problems = format_validation_error(info.value, loss_list_adapter(), prefix=("losses",))
    assert [k for k, _ in problems] == ["losses[1].pnormm"]


def test_valid_fixture_loads_with_terms_and_resolved_target() -> None:
    cfg = load_decompose_config(FIXTURES / "valid_decompose.yaml")
    assert [t.type for t in cfg.losses] == [
        "faithfulness",
        "importance_minimality",
        "smooth_l0",
        "stochastic_recon",
    ]
    assert cfg.losses[1].frequency.reference_token_count == 64
    # `target: target.yaml` is not in the working directory: found beside the config
    assert Path(cfg.target) == (FIXTURES / "target.yaml").resolve()
    assert isinstance(load_target_config(cfg.target), TargetConfig)
    check_mesh(cfg, N_DEVICES, "valid_decompose.yaml")


def test_target_resolves_against_working_directory_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(FIXTURES / "target.yaml", tmp_path / "target.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = load_decompose_config(FIXTURES / "valid_decompose.yaml")
    assert Path(cfg.target) == (tmp_path / "target.yaml").resolve()


def test_resolve_mesh_shape() -> None:
    assert resolve_mesh_shape(Mesh(), 4) == {"data": 4, "fsdp": 1, "tensor": 1}
    assert resolve_mesh_shape(Mesh(fsdp=2), 4) == {"data": 2, "fsdp": 2, "tensor": 1}
    assert resolve_mesh_shape(Mesh(data=1, tensor=4), 4) == {"data": 1, "fsdp": 1, "tensor": 4}


def test_format_path() -> None:
    assert format_path(("losses", 1, "pnorm")) == "losses[1].pnorm"
    assert format_path((0, "coeff")) == "[0].coeff"


def test_every_repo_config_loads() -> None:
    from param_decomp.config.loading import read_yaml
    from param_decomp.config.pretrain_schema import PretrainConfig
    from param_decomp.study.reproduce_schema import load_reproduction
    from param_decomp.study.schema import load_study
    from param_decomp.study.sweep_schema import load_sweep

    files = sorted((REPO_ROOT / "configs").glob("**/*.yaml"))
    if not files:
        pytest.skip("configs/ has no YAML yet")
    cwd = os.getcwd()
    try:
        os.chdir(REPO_ROOT)  # configs name their targets relative to the repo root
        for path in files:
            if path.parent.name == "studies":  # a study config: a grid of pretrain configs
                assert load_study(path).runs, path
                continue
            if path.parent.name == "sweeps":  # a sweep: a grid of decompositions (S19)
                assert load_sweep(path).cells, path
                continue
            if "experiments" in read_yaml(path):  # a reproduction: a set of decompositions
                assert load_reproduction(path).experiments, path
                continue
            cfg = load_any_config(path)
            assert isinstance(cfg, TargetConfig | DecomposeConfig | PretrainConfig), path
    finally:
        os.chdir(cwd)


# ----------------------------------------------------------------------------- CLI

CLI_CASES = [
    ("loss_type_typo", "losses[1].type"),
    ("unknown_loss_key", "losses[1].pnormm"),
    ("legacy_beta", "losses[1]"),
]


def _check_cli_error(returncode: int, stderr: str, path: Path, key: str) -> None:
    assert returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert f"config error in {path}:" in stderr
    assert f"  {key}: " in stderr, stderr
    assert len(stderr.strip().splitlines()) <= MAX_LINES, stderr


@pytest.mark.parametrize(("name", "key"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_exits_2_without_traceback(name: str, key: str) -> None:
    """The command's own `main` (its parsing, handlers and exit code) on each case, in this
    process; an exception escaping it would fail the test as a traceback would."""
    path = BAD / f"{name}.yaml"
    out = run_cli("decompose", str(path))
    _check_cli_error(out.returncode, out.stderr, path, key)


def test_cli_entry_point_exits_2_without_traceback() -> None:
    """The console entry point as a separate process, what a user's shell sees (interpreter
    start-up and exit included), on one case: the cases differ only inside `main`, which
    the in-process test above checks on each."""
    name, key = CLI_CASES[0]
    path = BAD / f"{name}.yaml"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        cli_command("decompose", str(path)),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    _check_cli_error(proc.returncode, proc.stderr, path, key)
