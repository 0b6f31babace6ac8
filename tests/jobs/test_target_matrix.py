"""Every kind of target through every job (issue 31): train-target / pretrain, decompose,
decompose --resume, eval, harvest, browse, export and plan, at tiny shapes, each output
checked (not only the exit code); a job that does not apply to a kind exits 2 with one
sentence and writes nothing. The kinds are the registry's (`config/target_kinds.py`): a kind
added there without a target here, or removed there while a target here still needs it,
fails a test. docs/targets.md is the table of kinds against jobs; a test keeps it true.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from target_matrix import QWEN3, TARGETS, slug, write_decompose_yaml, write_target_yaml

import param_decomp.harvest as harvest
from param_decomp.browse.layout import component_path, site_slugs
from param_decomp.cli import main
from param_decomp.config.target_kinds import JOBS, KINDS, kind_named, refusal
from param_decomp.targets.build import MODEL_CLASSES
from param_decomp.train.run_dir import target_run_dir

pytestmark = pytest.mark.runs_long(seconds=60)

REPO = Path(__file__).resolve().parents[2]
HARVEST = ["--tokens=64", "--top-k=2", "--context=1", "--reservoir=2", "--coact-top=2"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every kind's target made by the project's own jobs, once: toys by `train-target`, LMs
    by `pretrain`, the hf kinds by `export`; name -> its decomposition config."""
    root = tmp_path_factory.mktemp("matrix")
    runs = root / "runs"
    configs: dict[str, Path] = {}
    for name, (body, _, _) in TARGETS.items():
        if body is None:
            continue
        path = write_target_yaml(root, name, body)
        job = "train-target" if kind_named(name).source == "toy" else "pretrain"
        assert main([job, str(path), "--runs-dir", str(runs)]) == 0, name
        configs[name] = write_decompose_yaml(root, name, str(path), kind_named(name).lm)
    qwen3 = write_target_yaml(root, "qwen3", QWEN3)
    assert main(["pretrain", str(qwen3), "--runs-dir", str(runs)]) == 0
    for name, (_, exported_from, _) in TARGETS.items():
        if exported_from is None:
            continue
        folder = root / "hf" / exported_from
        run = target_run_dir(f"{slug(exported_from)}_target", runs)
        assert main(["export", str(run), str(folder)]) == 0, name
        configs[name] = write_decompose_yaml(root, name, {"hf": str(folder)}, True)
    return configs


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


def _refused(argv: list[str], capsys: pytest.CaptureFixture, job: str) -> None:
    """Exit 2 and one sentence saying the job does not apply."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"`{job}` does not apply to a" in err, err
    assert len(err.splitlines()) == 2, err  # the file line and the sentence


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_job_on_every_kind(
    made: dict[str, Path], name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    kind = kind_named(name)
    config = made[name]
    runs = tmp_path / "runs"
    # the trained target, shared: copy it where this run's decompose finds it cached
    shutil.copytree(config.parent / "runs", runs)
    shutil.rmtree(runs / slug(name), ignore_errors=True)
    run = runs / slug(name)
    sites = TARGETS[name][2]

    import time; T=[time.perf_counter()]
    assert main(["decompose", str(config), "--runs-dir", str(runs), "--no-progress"]) == 0
    T.append(time.perf_counter())
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

    T.append(time.perf_counter())
    assert main(["eval", str(run)]) == 0
    T.append(time.perf_counter())
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

    T.append(time.perf_counter())
    report = tmp_path / "plan.json"
    assert main(["plan", str(config), "--devices", "4", "--json", str(report)]) in (0, 1)
    capsys.readouterr()
    assert set(json.loads(report.read_text())["sites"]) == set(sites)
    T.append(time.perf_counter())
    print("TIMES", name, [round(b - a, 1) for a, b in zip(T, T[1:])], file=__import__("sys").stderr)


@pytest.mark.parametrize("name", [n for n in TARGETS if kind_named(n).source != "hf"])
def test_training_and_export_by_kind(
    made: dict[str, Path], name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The training job of the other source is refused; export writes a pretrained LM as a
    folder transformers reads with the same logits, and refuses a toy."""
    kind = kind_named(name)
    target_yaml = made[name].parent / f"{slug(name)}_target.yaml"
    runs = made[name].parent / "runs"
    wrong = "pretrain" if kind.source == "toy" else "train-target"
    _refused([wrong, str(target_yaml), "--runs-dir", str(tmp_path)], capsys, wrong)
    assert not any(tmp_path.iterdir())
    out = tmp_path / "hf"
    run = target_run_dir(f"{slug(name)}_target", runs)
    if refusal(kind, "export"):
        _refused(["export", str(run), str(out)], capsys, "export")
        assert not out.exists()
        return
    folder = runs.parent / "hf" / name  # written by `export` in the fixture
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }


@pytest.mark.parametrize("name", [n for n in TARGETS if kind_named(n).source == "hf"])
def test_exported_folder_matches_transformers(made: dict[str, Path], name: str) -> None:
    """Each hf kind's folder (a pretrained LM exported) loads in transformers with the
    project's logits (S17.8, 1e-4)."""
    folder = made[name].parent / "hf" / TARGETS[name][1]
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
