"""`param-decomp reproduce` (issue 23, SPEC S18): the paper's seven toy configs resolve, the TMS
identity layer is a fixed, decomposed site, the recovery scores mean what they say, and one
tiny reproduction runs, skips when done and re-renders only."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import nnx

from param_decomp.config.schema import TargetConfig
from param_decomp.eval.toy_recovery import (
    dense_ci_error,
    identity_ci_error,
    mean_max_cosine,
    site_mmcs,
)
from param_decomp.runconfig.any_config import load_any_config
from param_decomp.study.paper_toys import outcome_problems, render
from param_decomp.study.reproduce import (
    is_done,
    record_path,
    rerun_command,
    rescore_all,
    run_all,
)
from param_decomp.study.reproduce_schema import load_reproduction
from param_decomp.study.run_parts import read_parts
from param_decomp.targets.build import build_target
from param_decomp.targets.tms import FixedIdentity

pytestmark = pytest.mark.runs_long(seconds=40)

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "configs" / "reproduce" / "paper.yaml"
TINY = REPO / "tests" / "fixtures" / "reproduce" / "paper_tiny.yaml"


def test_paper_set_resolves_all_seven_at_the_paper_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    repro = load_reproduction(PAPER)
    names = [p.spec.name for p in repro.experiments]
    assert names == [
        "tms_5-2",
        "tms_5-2-id",
        "tms_40-10",
        "tms_40-10-id",
        "resid_mlp_1",
        "resid_mlp_2",
        "resid_mlp_3",
    ]
    steps = {p.spec.name: p.config.train.steps for p in repro.experiments}
    assert steps == {
        "tms_5-2": 10_000,
        "tms_5-2-id": 10_000,
        "tms_40-10": 10_000,
        "tms_40-10-id": 20_000,  # the reference's own config (REFERENCE_CONFIGS lists none)
        "resid_mlp_1": 20_000,
        "resid_mlp_2": 25_000,
        "resid_mlp_3": 50_000,
    }
    assert not any(p.shortened for p in repro.experiments)
    for p in repro.experiments:  # every target config loads; the id variants keep the identity
        target = load_any_config(p.config.target)
        assert isinstance(target, TargetConfig)
        if p.spec.name.endswith("-id"):
            assert target.model.fixed_identity_hidden_layers
            assert "hidden_layers.0" in p.config.decomposition.sites
    short = load_reproduction(PAPER, 0.1, {"tms_5-2": 123}, ["tms_5-2", "resid_mlp_1"])
    by_name = {p.spec.name: p for p in short.experiments}
    assert by_name["tms_5-2"].config.train.steps == 123
    assert by_name["resid_mlp_1"].config.train.steps == 2000 and by_name["resid_mlp_1"].shortened
    assert by_name["resid_mlp_1"].config.run_name == "paper_resid_mlp_1__2000steps"


def test_tms_identity_layer_is_fixed_and_a_site() -> None:
    cfg = load_any_config(REPO / "configs" / "targets" / "tms_5-2-id.yaml")
    model = build_target(cfg)
    assert list(model.site_weights()) == ["linear1", "hidden_layers.0", "linear2"]
    np.testing.assert_array_equal(model.site_weights()["hidden_layers.0"], np.eye(2))
    _, params, _ = nnx.split(model, nnx.Param, ...)  # what train_target optimises
    assert not any(isinstance(v, FixedIdentity) for v in jax.tree.leaves(params))
    assert all(leaf.shape != (2, 2) for leaf in jax.tree.leaves(params))
    x = jax.random.uniform(jax.random.key(0), (3, 5))
    np.testing.assert_allclose(  # the identity changes nothing
        model(x), jax.nn.relu(x @ model.W1[...] @ model.W1[...].T + model.b_final[...]), 1e-6
    )


def test_recovery_scores() -> None:
    eye = np.eye(3)
    ci = np.concatenate([eye[:, [2, 0, 1]], np.zeros((3, 2))], axis=1)
    assert identity_ci_error(ci) == 0  # any permutation of the identity
    ci[0, 3] = 0.5  # one extra component on for feature 0
    ci[1, 0] = 0.8  # feature 1's own component only at 0.8
    assert identity_ci_error(ci) == 2
    dense = np.zeros((5, 6))
    dense[:, [1, 4]] = 1.0
    assert dense_ci_error(dense, 2) == 0
    dense[2, 0] = 0.3
    assert dense_ci_error(dense, 2) == 1 and dense_ci_error(dense, 3) == 1
    feats = np.eye(4)
    comps = np.concatenate([-feats, np.ones((1, 4))])
    assert mean_max_cosine(comps, np.array([1, 1, 1, 1, 0], bool), feats) == pytest.approx(1.0)
    assert mean_max_cosine(comps, np.array([0, 0, 0, 0, 1], bool), feats) == pytest.approx(0.5)
    assert np.isnan(mean_max_cosine(comps, np.zeros(5, bool), feats))
    model = build_target(load_any_config(REPO / "configs" / "targets" / "tms_5-2-id.yaml"))
    W1 = np.asarray(model.W1[...])  # linear2's true features arrive along W1's rows
    V = np.concatenate([W1.T, np.zeros((2, 1))], axis=1)
    assert site_mmcs(model, "linear2", V, np.zeros((6, 5)), np.ones(6, bool)) == pytest.approx(1)


def test_resid_mlp_cosines_are_taken_in_feature_coordinates() -> None:
    """S18.3: a ResidMLP component that reads exactly one feature scores 1 whatever it holds
    outside span(W_E), a part the residual stream never exercises; the raw cosine in d_embed
    would score it far lower."""
    model = build_target(load_any_config(REPO / "configs" / "targets" / "resid_mlp_1.yaml"))
    W_E = np.asarray(model.W_E[...], np.float64)  # (f, d_embed)
    f, d = W_E.shape
    reads_one = np.linalg.pinv(W_E)  # (d, f): column c reads feature c alone
    outside = (np.eye(d) - reads_one @ W_E) @ np.random.default_rng(0).normal(size=(d, f))
    V = reads_one + outside * 0.05
    alive = np.ones(f, bool)
    assert site_mmcs(model, "layers.0.mlp_in", V, np.zeros((f, 50)), alive) == pytest.approx(1)
    assert mean_max_cosine(V.T, alive, W_E) < 0.9
    U = reads_one.T  # (f, d): row c writes along feature c alone, read back through W_E
    assert site_mmcs(model, "layers.0.mlp_out", np.zeros((50, f)), U, alive) == pytest.approx(1)
    mixed = reads_one + np.roll(reads_one, 1, axis=1)  # each component reads two features
    assert site_mmcs(model, "layers.0.mlp_in", mixed, np.zeros((f, 50)), alive) == pytest.approx(
        np.sqrt(0.5)
    )


def test_tiny_reproduction_runs_skips_and_rerenders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(REPO)
    repro = load_reproduction(TINY, steps={"tms_5-2-id": 1200}, only=["tms_5-2-id"])
    (planned,) = repro.experiments
    assert run_all(repro, tmp_path, show_progress=False) == ["tms_5-2-id"]
    # a stopped run is continued by the reproduction itself, not by `decompose --resume`
    assert rerun_command(repro, planned, tmp_path) == (
        f"param-decomp reproduce {TINY} --runs-dir {tmp_path} --only tms_5-2-id"
        " --steps tms_5-2-id=1200"
    )
    record = json.loads(record_path(tmp_path, planned).read_text())
    sites = record["sites"]
    # the identity is decomposed as its own site, into n_hidden = 2 always-on components
    assert list(sites) == ["linear1", "hidden_layers.0", "linear2"]
    assert sites["hidden_layers.0"]["alive"] == 2 and sites["hidden_layers.0"]["ci_error"] == 0
    for site in ("linear1", "linear2"):  # one component per feature
        assert sites[site]["alive"] == 5, sites
        assert sites[site]["ci_error"] == 0, sites
        assert sites[site]["mmcs"] > 0.99, sites
    assert record["losses"]["eval/loss/faithfulness"] < 1e-4
    assert record["steps"] == 1200 and record["paper_steps"] == 10_000
    # one part, from step 0: the whole run's time is known (S18.2)
    (part,) = read_parts(tmp_path / record["run_name"])
    assert (part["from_step"], part["to_step"]) == (0, 1200)
    assert record["total_wall_s"] == part["wall_s"] == record["wall_s"] and record["parts"] == 1
    assert outcome_problems(planned.spec, record) == []
    # a second invocation runs nothing; the write-up labels the shortened run
    assert is_done(planned, tmp_path)
    stamp = os.stat(record_path(tmp_path, planned)).st_mtime_ns
    assert run_all(repro, tmp_path, show_progress=False) == []
    assert "skipped" in capsys.readouterr().out
    assert os.stat(record_path(tmp_path, planned)).st_mtime_ns == stamp
    full = load_reproduction(TINY, steps={"tms_5-2-id": 1200})  # every experiment listed
    md = render(full, tmp_path, tmp_path / "paper_tiny.md").read_text()
    assert "**SHORTENED**: 1200 of the paper's 10000 steps (12.0 %)" in md
    assert "met (at a shortened budget)" in md
    assert "not run: left out with --only" in md
    assert "full length" not in md
    assert "Measured: a note written from a measurement of the finished run" in md
    # the note is not the run's config: changing it leaves the finished run finished
    raw = yaml.safe_load(TINY.read_text())
    raw["experiments"][0]["measured_note"] = "another note"
    (tmp_path / "noted.yaml").write_text(yaml.safe_dump(raw))
    noted = load_reproduction(
        tmp_path / "noted.yaml", steps={"tms_5-2-id": 1200}, only=["tms_5-2-id"]
    )
    assert is_done(noted.experiments[0], tmp_path)
    # another budget has no record of its own: the 1200-step record is shown, said to be so
    other = load_reproduction(TINY, steps={"tms_5-2-id": 5000}, only=["tms_5-2-id"])
    assert not is_done(other.experiments[0], tmp_path)
    md = render(other, tmp_path, tmp_path / "other.md").read_text()
    assert "the record of a 1200-step run" in md
    # --rescore recomputes the scores from the final checkpoint, trains nothing
    scored = json.loads(record_path(tmp_path, planned).read_text())
    tampered = scored | {"sites": {s: e | {"mmcs": 0.0} for s, e in scored["sites"].items()}}
    record_path(tmp_path, planned).write_text(json.dumps(tampered))
    assert rescore_all(repro, tmp_path) == ["tms_5-2-id"]
    again = json.loads(record_path(tmp_path, planned).read_text())
    assert again["sites"] == scored["sites"] and again["wall_s"] == scored["wall_s"]
    assert again["rescored"]["checkpoint_step"] == 1200
    md = render(full, tmp_path, tmp_path / "rescored.md").read_text()
    assert "re-computed from the step-1200 checkpoint" in md
    assert rescore_all(other, tmp_path) == []  # no record at that budget: nothing to re-score


def test_cli_render_only_lists_unrun_experiments(tmp_path: Path) -> None:
    from cli_runner import run_cli

    out_md = tmp_path / "toys.md"
    args = ("reproduce", str(TINY), "--runs-dir", str(tmp_path), "--render-only")
    done = run_cli(*args, "--out", str(out_md))
    assert done.returncode == 0, done.stderr
    assert "not run: left out with --only" in out_md.read_text()
    assert run_cli(*args, "--only", "nope").returncode == 2  # a config error names the file


def test_a_key_added_since_the_run_was_saved_still_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder whose config.yaml predates a new key (written without it, the key at its
    default now) is the same config: reproduce continues it instead of starting over."""
    from param_decomp.study.reproduce import _same_saved_config

    monkeypatch.chdir(REPO)
    cfg = load_reproduction(PAPER, only=["tms_5-2"]).experiments[0].config
    dumped = cfg.model_dump(mode="json")
    older = {**dumped, "mesh": {k: v for k, v in dumped["mesh"].items() if k != "devices"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(older))
    assert _same_saved_config(tmp_path, dumped)
    changed = {**dumped, "seed": dumped["seed"] + 1}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(changed))
    assert not _same_saved_config(tmp_path, dumped)
    # a finished record made before the key existed still counts as done (its hash differs)
    from param_decomp.study.reproduce import same_config

    planned = load_reproduction(PAPER, only=["tms_5-2"]).experiments[0]
    record = {"config_hash": "made-before-devices", "config": older}
    assert same_config(record, planned)
    assert not same_config({**record, "config": changed}, planned)
    assert not same_config({**record, "config": {"train": {"steps": -3}}}, planned)
    (tmp_path / "config.yaml").write_text("train: {steps: -3}\n")  # not a config: start over
    assert not _same_saved_config(tmp_path, dumped)
