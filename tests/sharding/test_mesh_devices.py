"""S13.1 `mesh.devices`: a run may use only the first N visible devices (one process), and the
mesh checks count those; asking for more than are visible, or a subset on several processes,
is a config error naming `mesh.devices`."""

from pathlib import Path

import jax
import pytest
import yaml

from param_decomp.config.errors import ConfigError
from param_decomp.config.loading import check_mesh, mesh_problems
from param_decomp.config.schema import Mesh
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.sharding.mesh import build_mesh

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_the_mesh_takes_the_first_n_devices() -> None:
    assert jax.device_count() == 4
    one = build_mesh(Mesh(devices=1))
    assert one.devices.size == 1 and one.devices.flat[0] == jax.devices()[0]
    assert dict(one.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    two = build_mesh(Mesh(devices=2, tensor=2))
    assert list(two.devices.flat) == jax.devices()[:2]
    assert dict(two.shape) == {"data": 1, "fsdp": 1, "tensor": 2}
    assert build_mesh(Mesh()).devices.size == 4  # unset: every visible device


def test_mesh_problems_count_the_devices_the_run_uses() -> None:
    assert mesh_problems(Mesh(devices=2), 4, (("train.batch_size", 6),)) == []
    (key, msg), *_ = mesh_problems(Mesh(devices=8), 4, (("train.batch_size", 8),))
    assert key == "mesh.devices" and "8 devices asked for, but 4 are visible" in msg
    ((key, msg),) = mesh_problems(Mesh(data=4, devices=2), 4, (("train.batch_size", 8),))
    assert key == "mesh" and "mesh.devices is 2" in msg
    ((key, msg),) = mesh_problems(Mesh(devices=2), 4, (("train.batch_size", 7),))
    assert key == "train.batch_size" and "data x fsdp = 2" in msg


def test_a_device_subset_on_several_processes_is_a_config_error(tmp_path: Path) -> None:
    raw = yaml.safe_load((FIXTURES / "tms_tiny.yaml").read_text())
    raw["target"] = str(FIXTURES / "tms_tiny_target.yaml")
    raw["mesh"] = {"devices": 2}
    path = tmp_path / "subset.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_decompose_config(path)
    check_mesh(cfg, 4, path)  # one process: fine
    with pytest.raises(ConfigError) as err:
        check_mesh(cfg, 4, path, n_processes=2)
    assert "mesh.devices" in str(err.value) and "single process" in str(err.value)
    raw["mesh"] = {"devices": 0}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="mesh.devices"):
        load_decompose_config(path)
