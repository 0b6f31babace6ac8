"""S13.4: a decomposition that cannot fit the devices' memory is refused before anything is
allocated, with the estimated bytes per device; the estimate's parameter and optimizer terms are
exactly the per-device bytes of the arrays a real session places."""

import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import nnx

import param_decomp.jobs.decompose as loop
import param_decomp.jobs.pretrain as pretrain_module
from param_decomp.config.errors import ConfigError
from param_decomp.plan.memory_fit import (
    check_fits,
    device_memory_bytes,
    estimate_decomposition_bytes,
    format_bytes,
)
from param_decomp.runconfig.any_config import load_any_config
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.targets.build import build_lm

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _decompose_yaml(tmp_path: Path, name: str, target: Path, **overrides: object) -> Path:
    """tms_tiny.yaml with `target` and the given top-level / `decomposition` overrides."""
    data = yaml.safe_load((FIXTURES / "tms_tiny.yaml").read_text())
    data["target"] = str(target)
    for key, value in overrides.items():
        if key in ("C", "sites", "tied_sites", "ci_function"):
            data["decomposition"][key] = value
        else:
            data[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _refuse_target_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the target was loaded/trained before the memory check (S13.4)")

    for name in ("load_or_train_target", "load_pretrained"):
        monkeypatch.setattr(loop, name, refuse)
    monkeypatch.setattr(pretrain_module, "pretrain", refuse)


def test_s13_4_huge_C_is_refused_quickly_with_bytes_per_device(tmp_path: Path) -> None:
    path = _decompose_yaml(tmp_path, "huge", FIXTURES / "tms_tiny_target.yaml", C=10**12)
    runs_dir = tmp_path / "runs"
    n_devices = jax.device_count()  # build_session's check_mesh initialises the backend first
    start = time.perf_counter()
    cfg = load_decompose_config(path)
    target_cfg = load_any_config(cfg.target)
    with pytest.raises(ConfigError) as err:
        check_fits(cfg, target_cfg, str(path), n_devices)
    elapsed = time.perf_counter() - start
    est = estimate_decomposition_bytes(cfg, target_cfg, n_devices)
    (key, msg), *_ = err.value.problems
    text = str(err.value)
    print(f"refused in {elapsed:.3f} s; estimate {format_bytes(est.total)} per device")
    print(text)
    assert elapsed < 2.0, elapsed
    assert key == "decomposition.C"
    assert f"{format_bytes(est.total)} per device" in msg
    assert "V/U" in msg and "AdamW moments" in msg and "mesh.tensor" in msg
    assert str(path) in text
    # V (5, C) + U (C, 2) alone, fp32, whole (tensor = 1): no overflow, no float rounding
    assert est.components == 4 * 7 * 10**12
    assert est.total > device_memory_bytes()
    assert not runs_dir.exists()  # nothing trained, nothing written


def test_s13_4_build_session_refuses_before_the_target_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs first in build_session: loading or training the target would fail here."""
    _refuse_target_loading(monkeypatch)
    path = _decompose_yaml(tmp_path, "huge", FIXTURES / "tms_tiny_target.yaml", C=10**12)
    cfg = load_decompose_config(path)
    with pytest.raises(ConfigError, match="per device"):
        loop.build_session(cfg, str(path), tmp_path / "runs", show_progress=False)
    assert not (tmp_path / "runs").exists()


def test_s13_4_limit_boundary_and_no_false_refusal(tmp_path: Path) -> None:
    path = _decompose_yaml(tmp_path, "tiny", FIXTURES / "tms_tiny_target.yaml")
    cfg = load_decompose_config(path)
    target_cfg = load_any_config(cfg.target)
    n = jax.device_count()
    est = check_fits(cfg, target_cfg, str(path), n)  # the machine's own limit: fits
    assert est is not None and est.total > 0
    assert check_fits(cfg, target_cfg, str(path), n, limit=est.total) == est
    with pytest.raises(ConfigError, match="decomposition.C"):
        check_fits(cfg, target_cfg, str(path), n, limit=est.total - 1)


def test_s13_4_unknown_site_is_reported_before_loading(tmp_path: Path) -> None:
    path = _decompose_yaml(
        tmp_path,
        "typo",
        FIXTURES / "tms_tiny_target.yaml",
        sites=["linear1", "linearr2"],
        tied_sites={},
    )
    cfg = load_decompose_config(path)
    with pytest.raises(ConfigError, match="linearr2"):
        check_fits(cfg, load_any_config(cfg.target), str(path), jax.device_count())


def test_device_memory_bytes_is_known_on_cpu() -> None:
    limit = device_memory_bytes()
    assert isinstance(limit, int) and limit > 0


# ------------------------------------------------------------------ estimate vs placed arrays


def _bytes_on(tree: object, device: jax.Device) -> int:
    """Bytes of the shards of `tree` that live on `device`."""
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )


@pytest.fixture(scope="module")
def toy_target(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A TMS target with dims the fsdp axis divides, trained for a few steps once."""
    folder = tmp_path_factory.mktemp("memory_fit")
    target = folder / "target.yaml"
    target.write_text(
        yaml.safe_dump(
            {
                "run_name": "memfit_target",
                "seed": 0,
                "model": {"type": "tms", "n_features": 8, "n_hidden": 4, "n_hidden_layers": 1},
                "data": {"feature_probability": 0.1},
                "train": {"steps": 2, "batch_size": 16, "optimizer": {"lr": 1e-3}},
            }
        )
    )
    return folder, target


MESHES = {
    "data4": {"data": 4},
    "data2_tensor2": {"data": 2, "tensor": 2},
    "fsdp2_tensor2_sharded_target": {
        "data": 1,
        "fsdp": 2,
        "tensor": 2,
        "shard_target_weights": True,
    },
}


@pytest.mark.parametrize(
    ("mesh_name", "ci_type"),
    [(m, "per_component_mlp") for m in MESHES] + [("data2_tensor2", "global_mlp")],
)
def test_s13_4_estimate_equals_placed_bytes(
    toy_target: tuple[Path, Path], mesh_name: str, ci_type: str
) -> None:
    folder, target = toy_target
    path = _decompose_yaml(
        folder,
        f"{mesh_name}_{ci_type}",
        target,
        C=8,
        sites=["linear1", "hidden_layers.0", "linear2"],
        tied_sites={},
        ci_function={"type": ci_type, "hidden": [4]},
        mesh=MESHES[mesh_name],
    )
    cfg = load_decompose_config(path)
    est = estimate_decomposition_bytes(cfg, load_any_config(cfg.target), jax.device_count())
    session = loop.build_session(cfg, str(path), folder / "runs", False, warm_up=False)
    device = jax.devices()[0]
    placed = _bytes_on((session.state.params, session.state.opt_state), device)
    comps = nnx.split_state(
        session.state.params, lambda p, _: "components" in [str(k) for k in p], ...
    )[0]
    placed_target = _bytes_on(session.target_state, device)
    print(
        f"{mesh_name}/{ci_type}: params+AdamW estimate {est.params_and_optimizer} B, "
        f"placed {placed} B; V/U {est.components} vs {_bytes_on(comps, device)} B; "
        f"target {est.target} vs {placed_target} B"
    )
    assert est.params_and_optimizer == placed
    assert est.components == _bytes_on(comps, device)
    assert est.target == placed_target
    if mesh_name == "data2_tensor2":  # C is split over 2: half of V/U per device
        assert est.components == 4 * 8 * (8 + 4 + 4 + 4 + 4 + 8) // 2
    if mesh_name == "fsdp2_tensor2_sharded_target":  # and V's d_in rows over fsdp too (S13.2)
        # per device, V (d_in / 2, C / 2) and U (C / 2, d_out) of linear1, hidden_layers.0, linear2
        assert est.components == 4 * ((4 * 4 + 4 * 4) + (2 * 4 + 4 * 4) + (2 * 4 + 4 * 8))


def test_s13_4_lm_target_is_estimated_without_pretraining(monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_target_loading(monkeypatch)
    cfg = load_decompose_config(FIXTURES / "llama_micro.yaml")
    target_cfg = load_any_config(cfg.target)
    start = time.perf_counter()
    est = check_fits(cfg, target_cfg, str(FIXTURES / "llama_micro.yaml"), jax.device_count())
    elapsed = time.perf_counter() - start
    assert est is not None
    print(f"llama_micro estimated in {elapsed:.3f} s: {est.breakdown()}")
    # the untrained model (same shapes as the pretrained one), replicated on every device
    real = nnx.split(build_lm(target_cfg.model, target_cfg.seed))[1]
    assert est.target == sum(np.asarray(x).nbytes for x in jax.tree.leaves(real))
    # V/U of up (16, 32), down (32, 16), attn.v (16, 16) at C = 8, fp32, whole
    assert est.components == 4 * 8 * (16 + 32 + 32 + 16 + 16 + 16)
    assert est.rows_per_device == 8 // 4 * 16  # batch rows per device x seq_len tokens
    with pytest.raises(ConfigError, match="per device"):
        check_fits(
            cfg.model_copy(
                update={"decomposition": cfg.decomposition.model_copy(update={"C": 10**12})}
            ),
            target_cfg,
            "llama_micro.yaml",
            jax.device_count(),
        )
