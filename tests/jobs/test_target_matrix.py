"""Every kind of target through every job (issue 31): train-target / pretrain, decompose,
decompose --resume, eval, harvest, browse, export and plan, at tiny shapes, each output
checked (not only the exit code); a job that does not apply to a kind exits 2 with one
sentence and writes nothing. The kinds are the registry's (`config/target_kinds.py`): a kind
added there without a target here, or removed there while a target here still needs it,
fails a test. docs/targets.md is the table of kinds against jobs; a test keeps it true.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import nnx
from target_matrix import QWEN3, TARGETS, slug, write_decompose_yaml, write_target_yaml

import param_decomp.harvest as harvest
from param_decomp.browse.layout import component_path, site_slugs
from param_decomp.cli import main
from param_decomp.config.errors import ConfigError
from param_decomp.config.target_kinds import JOBS, KINDS, kind_named, refusal
from param_decomp.jobs.decompose import load_target, new_decomposition
from param_decomp.plan.command import main as plan_child
from param_decomp.runconfig.any_config import load_any_config
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.targets.build import MODEL_CLASSES
from param_decomp.train.checkpoint import RunCheckpoints
from param_decomp.train.run_dir import target_run_dir

pytestmark = pytest.mark.runs_long(seconds=170)

REPO = Path(__file__).resolve().parents[2]
# Every kind runs every job in the suite (about 165 s of CPU on one xdist worker). The
# transformers parity of the hf kinds' folders runs for llama and gpt2 in
# tests/targets/test_hf_export.py; PD_TARGET_MATRIX=all repeats it here for every hf kind.
FULL = os.environ.get("PD_TARGET_MATRIX") == "all"
E2E_KINDS = list(TARGETS)
HARVEST = ["--tokens=64", "--top-k=2", "--context=1", "--reservoir=2", "--coact-top=2"]


@pytest.fixture(scope="module")
def make(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`make(name)`: the kind's target made once by the project's own jobs (toys by
    `train-target`, LMs by `pretrain`, the hf kinds by `export` of a pretrained LM), and the
    path of its decomposition config."""
    root = tmp_path_factory.mktemp("matrix")
    runs = root / "runs"
    made: dict[str, Path] = {}

    def trained(name: str, body: dict) -> Path:
        path = write_target_yaml(root, name, body)
        if not target_run_dir(f"{slug(name)}_target", runs).is_dir():
            job = "pretrain" if body["model"]["type"] in ("llama", "gpt2") else "train-target"
            assert main([job, str(path), "--runs-dir", str(runs)]) == 0, name
        return path

    def target(name: str) -> Path:
        if name not in made:
            body, exported_from, _ = TARGETS[name]
            if body is not None:
                path = trained(name, body)
                made[name] = write_decompose_yaml(root, name, str(path), kind_named(name).lm)
            else:
                source = QWEN3 if exported_from == "qwen3" else TARGETS[exported_from][0]
                trained(exported_from, source)
                folder = root / "hf" / exported_from
                run = target_run_dir(f"{slug(exported_from)}_target", runs)
                assert main(["export", str(run), str(folder)]) == 0, name
                made[name] = write_decompose_yaml(root, name, {"hf": str(folder)}, True)
        return made[name]

    return target


def test_every_registered_kind_has_a_target_here_and_a_model() -> None:
    """A kind added to the registry must be added to the matrix (and built by a model class);
    one removed from it fails the jobs of its target below."""
    assert {k.name for k in KINDS} == set(TARGETS)
    assert {k.model_type for k in KINDS if k.source != "hf"} == set(MODEL_CLASSES)


def test_docs_table_is_the_registry() -> None:
    """docs/targets.md's table says, per kind and job, what `refusal` decides."""
    text = (REPO / "docs" / "targets.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    header = next(line for line in text.splitlines() if line.startswith("| kind"))
    assert [c.strip() for c in header.strip("|").split("|")][2:] == [f"`{j}`" for j in JOBS]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table[cells[0].strip("`")] = cells[2:]
    assert set(table) == {k.name for k in KINDS}
    for kind in KINDS:
        expect = ["no" if refusal(kind, job) else "yes" for job in JOBS]
        assert table[kind.name] == expect, kind.name


def test_an_unknown_model_type_names_the_registered_ones(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"run_name": "t", "model": {"type": "mamba"}}))
    with pytest.raises(ConfigError) as err:
        load_any_config(path)
    allowed = ", ".join(k.name for k in KINDS if k.source != "hf")
    assert f"model.type: 'mamba' is not a target type: {allowed}" in str(err.value)


def _refused(argv: list[str], capsys: pytest.CaptureFixture, job: str) -> None:
    """Exit 2 and one sentence saying the job does not apply."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"`{job}` does not apply to a" in err, err
    assert len(err.splitlines()) == 2, err  # the file line and the sentence


@pytest.mark.parametrize("name", E2E_KINDS)
def test_every_job_on_every_kind(
    make: Callable[[str], Path], name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kind = kind_named(name)
    config = make(name)
    runs = tmp_path / "runs"
    # the trained target, shared: copy it where this run's decompose finds it cached
    shutil.copytree(config.parent / "runs", runs)
    shutil.rmtree(runs / slug(name), ignore_errors=True)
    run = runs / slug(name)
    sites = TARGETS[name][2]

    assert main(["decompose", str(config), "--runs-dir", str(runs), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert all(site in out for site in sites), out
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    done = [json.loads(r) for r in metrics if "train/loss/total" in json.loads(r)]
    assert [r["step"] for r in done][-1] == 2

    # --resume after the last checkpoint is lost: continues from step 1, ends where it ended
    shutil.rmtree(run / "checkpoints" / "2")
    argv = ["decompose", str(config), "--runs-dir", str(runs), "--no-progress", "--resume"]
    assert main(argv) == 0
    capsys.readouterr()
    again = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    again = [r for r in again if "train/loss/total" in r]
    assert again[-1]["step"] == 2
    assert again[-1]["train/loss/total"] == done[-1]["train/loss/total"]

    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0]
    assert all(site in table for site in sites), out
    assert set(json.loads((run / "eval_step_2.json").read_text())["alive"]) == set(sites)

    if refusal(kind, "harvest"):
        _refused(["harvest", str(run), *HARVEST, "--no-progress"], capsys, "harvest")
        assert not (run / "harvest").exists()
        _refused(["browse", str(run)], capsys, "browse")
        assert not (run / "browse").exists()
    else:
        assert main(["harvest", str(run), *HARVEST, "--no-progress"]) == 0
        capsys.readouterr()
        h = harvest.load(run)
        rows = {(r["site"], r["component"]) for r in h.components.to_pylist()}
        assert rows == {(s, c) for s in sites for c in range(2)}
        assert main(["browse", str(run)]) == 0
        capsys.readouterr()
        slugs = site_slugs(list(h.summary["sites"]))
        for site, c in rows:
            assert (run / "browse" / component_path(slugs[site], c)).is_file()

    # the planner's child, in this process (4 simulated devices): no second jax start-up
    report = tmp_path / "plan.json"
    assert plan_child([str(config), "--devices", "4", "--json", str(report)]) in (0, 1)
    assert "bytes per device" in capsys.readouterr().out
    assert set(json.loads(report.read_text())["sites"]) == set(sites)


@pytest.mark.parametrize("name", [n for n in TARGETS if kind_named(n).source != "hf"])
def test_the_other_training_job_refuses(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`pretrain` of a toy YAML, `train-target` of an LM YAML: one sentence, nothing written."""
    path = write_target_yaml(tmp_path, name, TARGETS[name][0])
    wrong = "pretrain" if kind_named(name).source == "toy" else "train-target"
    runs = tmp_path / "runs"
    _refused([wrong, str(path), "--runs-dir", str(runs)], capsys, wrong)
    assert not runs.exists()


def _toy_run(config: Path, runs: Path) -> Path:
    """A toy decomposition run folder with one checkpoint written directly (freshly initialised,
    as tests/harvest/conftest.py does), so no training step is compiled for the refusals."""
    cfg = load_decompose_config(config)
    _, target = load_target(cfg, str(config), runs)
    _, params = nnx.split(new_decomposition(cfg, target))
    run = runs / cfg.run_name
    checkpoints = RunCheckpoints(run / "checkpoints", async_save=False)
    items = {"decomposition": jax.tree.map(np.asarray, params)}
    checkpoints.save(1, items, None, cfg.model_dump(mode="json"), wait=True)
    checkpoints.close()
    return run


@pytest.mark.parametrize("name", [n for n in TARGETS if kind_named(n).source == "toy"])
def test_harvest_browse_and_export_refuse_a_toy(
    make: Callable[[str], Path], name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A toy has no token contexts and is no LM: harvest, browse and export say so in one
    sentence and write nothing, before any step is compiled (the matrix above also checks
    harvest and browse after a real run)."""
    config = make(name)
    runs = tmp_path / "runs"
    shutil.copytree(config.parent / "runs", runs)
    run = _toy_run(config, runs)
    _refused(["harvest", str(run), *HARVEST, "--no-progress"], capsys, "harvest")
    assert not (run / "harvest").exists()
    _refused(["browse", str(run)], capsys, "browse")
    assert not (run / "browse").exists()
    out = tmp_path / "hf"
    _refused(["export", str(target_run_dir(f"{name}_target", runs)), str(out)], capsys, "export")
    assert not out.exists()


# transformers' llama and gpt2 parity runs in tests/targets/test_hf_export.py in the suite
@pytest.mark.parametrize("name", [n for n in E2E_KINDS if kind_named(n).source == "hf" and FULL])
def test_exported_folder_matches_transformers(make: Callable[[str], Path], name: str) -> None:
    """Each hf kind's folder (a pretrained LM exported) loads in transformers with the
    project's logits (S17.8, 1e-4)."""
    folder = make(name).parent / "hf" / TARGETS[name][1]
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from param_decomp.config.schema import HFTarget
    from param_decomp.targets.hf.config_map import hf_target_spec
    from param_decomp.targets.hf.load import load_hf_target

    tokens = np.random.default_rng(0).integers(0, 256, size=(2, 8))
    ours = np.asarray(load_hf_target(hf_target_spec(HFTarget(hf=str(folder)), None))(tokens))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        theirs = model(torch.as_tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
