"""The fast evaluation tier (SPEC S14.2-S14.6) on the micro LM and on a tiny TMS."""

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from direct_forward import component_output
from flax import nnx

from param_decomp.config.schema import DecomposeConfig
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.decomposition.sites import site_layers
from param_decomp.eval.decomposition_eval import causal_importance_on, evaluate_decomposition
from param_decomp.eval.fast_tier import MASKS, fast_tier
from param_decomp.jobs.decompose import Session, build_session, run_decompose, to_host
from param_decomp.runconfig.decompose import load_decompose_config

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="module")
def runs_dir(
    tmp_path_factory: pytest.TempPathFactory, trained_targets: Callable[..., Path]
) -> Iterator[Path]:
    """A runs folder for the module; the token cache (runs/ of the working directory) is the
    repository's, as in the other LM tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        yield trained_targets(
            tmp_path_factory.mktemp("runs"),
            FIXTURES / "tms_tiny_target.yaml",
            FIXTURES / "llama_micro_target.yaml",
        )


def _session(name: str, runs_dir: Path) -> Session:
    cfg = load_decompose_config(FIXTURES / name)
    return build_session(cfg, name, runs_dir, show_progress=False)


@pytest.fixture(scope="module")
def lm(runs_dir: Path) -> Session:
    return _session("llama_micro.yaml", runs_dir)  # the micro LM, pretrained once (trained_targets)


@pytest.fixture(scope="module")
def tms(runs_dir: Path) -> Session:
    return _session("tms_tiny.yaml", runs_dir)  # the tiny TMS, trained once (trained_targets)


def _host(session: Session, params: nnx.State | None = None) -> tuple[nnx.State, nnx.State]:
    params = session.state.params if params is None else params
    return jax.tree.map(jnp.asarray, to_host((params, session.target_state)))


def _evaluate(session: Session) -> dict[str, float]:
    """The fast tier of the session's current params on its eval batches and probe."""
    cfg = session.cfg
    params, target_state = _host(session)
    batches = session.source.eval_batches(cfg.eval.n_batches, cfg.eval.batch_size)
    return fast_tier(
        cfg,
        session.graphdef,
        params,
        session.target_graphdef,
        target_state,
        batches,
        session.source.probe(),
    )


def _component_model_output(model, target, x, masks=None):  # noqa: ANN001, ANN202
    """Independent of masked_site_fn: every decomposed site computes ((x V) * m) U."""
    return np.asarray(component_output(model, target, x, masks), np.float64)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def _next_token_ce(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Per predicted token: position t predicts token t + 1."""
    logp = _log_softmax(logits[:, :-1])
    return -np.take_along_axis(logp, np.asarray(tokens)[:, 1:, None], -1)[..., 0]


def _kl(target_logits: np.ndarray, masked_logits: np.ndarray) -> np.ndarray:
    lp, lq = _log_softmax(target_logits), _log_softmax(masked_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def _expected_keys(sites: list[str], lm: bool) -> set[str]:
    names = [f"eval/{d}/{m}" for m in MASKS for d in (("ce", "kl") if lm else ("mse",))]
    names += ["eval/ce/target", *(f"eval/ce_unrecovered/{m}" for m in MASKS)] if lm else []
    names += [f"eval/ci_l0/{s}" for s in sites] + ["eval/ci_l0/mean"]
    names += [f"eval/ci_l0_any/{s}" for s in sites]
    names += [f"eval/alive_frac/{s}" for s in sites] + ["eval/alive_frac/all"]
    names += [f"eval/alive_mean_ci_frac/{s}" for s in sites]
    layers = list(site_layers(sites))
    names += [f"eval/carried/{layer}" for layer in layers]
    if lm:  # S14.13
        names += [f"eval/carry_{k}/{layer}" for layer in layers for k in ("gap", "applicable")]
    metric = "ce" if lm else "mse"
    names += [f"eval/{metric}/carry_{m}/{layer}" for layer in layers for m in ("rounded", "zero")]
    names += [f"eval/stochastic_worst_subset/{layer}" for layer in layers]
    names += ["eval/ce/stochastic_worst_subset" if lm else "eval/mse/stochastic_worst_subset"]
    return set(names)


def _exact_params(session: Session, C: int) -> tuple[DecomposeConfig, nnx.GraphDef, nnx.State]:
    """A decomposition with V = [I | 0] and U = [W; 0] at every owned site, so V U = W exactly."""
    cfg = session.cfg
    cfg = cfg.model_copy(update={"decomposition": cfg.decomposition.model_copy(update={"C": C})})
    target = nnx.merge(session.target_graphdef, session.target_state)
    weights = {s: np.asarray(w) for s, w in target.site_weights().items()}
    shapes = {s: weights[s].shape for s in cfg.decomposition.sites}
    model = DecompositionModel(cfg.decomposition, shapes, rngs=nnx.Rngs(params=0))
    for site in cfg.decomposition.sites:
        if site in cfg.decomposition.tied_sites:
            continue
        d_in, d_out = weights[site].shape
        comp = model.components[site.replace(".", "_")]
        comp.V = nnx.Param(jnp.eye(d_in, C, dtype=jnp.float32))
        comp.U = nnx.Param(jnp.zeros((C, d_out), jnp.float32).at[:d_in].set(weights[site]))
    for site, (V, U) in model.all_VU().items():
        np.testing.assert_array_equal(np.asarray(V @ U), weights[site])
    graphdef, params = nnx.split(model)
    return cfg, graphdef, params


def test_s14_2_lm_keys_finite_and_repeatable(lm: Session) -> None:
    first, second = _evaluate(lm), _evaluate(lm)
    assert set(first) == _expected_keys(lm.cfg.decomposition.sites, lm=True)
    judged = {k for k, v in first.items() if not k.startswith("eval/carry_applicable/") or v}
    skipped = {f"eval/carried/{k.split('/', 2)[2]}" for k in set(first) - judged}
    # S14.13: a layer not judged has carried NaN by design; everything else is finite
    assert all(np.isfinite(v) for k, v in first.items() if k not in skipped), first
    assert first == second  # fixed batches and key: the same params evaluate identically


def test_s14_4_lm_ce_and_kl_match_direct_computation(lm: Session) -> None:
    """Unmasked = the component model V U, ci = ((x V) * ci_lower) U with the clean-input CI,
    target = the target's own CE; computed here without the masked-forward machinery."""
    params, target_state = _host(lm)
    model = nnx.merge(lm.graphdef, params)
    target = nnx.merge(lm.target_graphdef, target_state)
    sums = {"ce/target": 0.0, "ce/unmasked": 0.0, "kl/unmasked": 0.0, "ce/ci": 0.0, "kl/ci": 0.0}
    n_ce = n_kl = 0
    for x in lm.source.eval_batches(lm.cfg.eval.n_batches, lm.cfg.eval.batch_size):
        clean = np.asarray(target(x), np.float64)
        unmasked = _component_model_output(model, target, x)
        ci = causal_importance_on(model, target, x)
        ci_masked = _component_model_output(model, target, x, ci)
        sums["ce/target"] += _next_token_ce(clean, x).sum()
        sums["ce/unmasked"] += _next_token_ce(unmasked, x).sum()
        sums["ce/ci"] += _next_token_ce(ci_masked, x).sum()
        sums["kl/unmasked"] += _kl(clean, unmasked).sum()
        sums["kl/ci"] += _kl(clean, ci_masked).sum()
        n_ce += x.shape[0] * (x.shape[1] - 1)
        n_kl += x.shape[0] * x.shape[1]
    got = _evaluate(lm)
    for key, total in sums.items():
        expected = total / (n_ce if key.startswith("ce/") else n_kl)
        np.testing.assert_allclose(got[f"eval/{key}"], expected, rtol=1e-4, err_msg=key)
    assert got["eval/kl/unmasked"] > 1e-3  # V, U at init are far from W: the check has teeth


def test_s14_4_lm_unmasked_reproduces_target_when_vu_equals_w(lm: Session) -> None:
    cfg, graphdef, params = _exact_params(lm, C=32)  # C >= every d_in of the micro LM's sites
    _, target_state = _host(lm)
    batches = lm.source.eval_batches(cfg.eval.n_batches, cfg.eval.batch_size)
    got = fast_tier(cfg, graphdef, params, lm.target_graphdef, target_state, batches)
    assert got["eval/kl/unmasked"] < 1e-6, got["eval/kl/unmasked"]
    assert abs(got["eval/ce/unmasked"] - got["eval/ce/target"]) < 1e-5
    assert got["eval/kl/zero"] > 1e-2  # ablating every site does change the model


@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.9])
def test_s14_5_s14_6_lm_ci_l0_and_alive_match_numpy_counts(lm: Session, threshold: float) -> None:
    cfg = lm.cfg.model_copy(
        update={"eval": lm.cfg.eval.model_copy(update={"ci_alive_threshold": threshold})}
    )
    params, target_state = _host(lm)
    model = nnx.merge(lm.graphdef, params)
    target = nnx.merge(lm.target_graphdef, target_state)
    counts: dict[str, list[np.ndarray]] = {s: [] for s in model.site_names}
    batches = lm.source.eval_batches(cfg.eval.n_batches, cfg.eval.batch_size)
    for x in batches:
        for s, c in causal_importance_on(model, target, x).items():
            counts[s].append((np.asarray(c) > threshold).sum(-1).ravel())
    got = fast_tier(
        cfg, lm.graphdef, params, lm.target_graphdef, target_state, batches, lm.source.probe()
    )
    per_site = {s: float(np.concatenate(v).mean()) for s, v in counts.items()}
    for s, expected in per_site.items():
        np.testing.assert_allclose(got[f"eval/ci_l0/{s}"], expected, rtol=1e-6)
    np.testing.assert_allclose(got["eval/ci_l0/mean"], np.mean(list(per_site.values())), 1e-6)
    result = evaluate_decomposition(
        cfg, lm.objective, lm.graphdef, params, lm.target_graphdef, target_state, lm.source
    )
    C = cfg.decomposition.C
    for s, alive in result["alive"].items():
        assert got[f"eval/alive_frac/{s}"] * C == int(alive.sum()), s
    n_alive = sum(int(a.sum()) for a in result["alive"].values())
    assert got["eval/alive_frac/all"] == pytest.approx(n_alive / (C * len(result["alive"])))
    print(f"threshold {threshold}: alive {n_alive} of {C * len(result['alive'])}")


def test_s14_tms_mse_keys_and_values(tms: Session) -> None:
    got = _evaluate(tms)
    assert set(got) == _expected_keys(tms.cfg.decomposition.sites, lm=False)
    assert all(np.isfinite(v) for v in got.values()), got
    params, target_state = _host(tms)
    model = nnx.merge(tms.graphdef, params)
    target = nnx.merge(tms.target_graphdef, target_state)
    (x,) = tms.source.eval_batches(1, tms.cfg.eval.batch_size)  # tms_tiny: n_batches 1
    clean = np.asarray(target(x), np.float64)
    expected = np.mean((_component_model_output(model, target, x) - clean) ** 2)
    np.testing.assert_allclose(got["eval/mse/unmasked"], expected, rtol=1e-4)
    ci = causal_importance_on(model, target, x)
    counts = {s: (np.asarray(c) > tms.cfg.eval.ci_alive_threshold).sum(-1) for s, c in ci.items()}
    for s, count in counts.items():
        np.testing.assert_allclose(got[f"eval/ci_l0/{s}"], count.mean(), rtol=1e-6)
    # V U = W exactly (linear2 tied to linear1: V2 U2 = (V1 U1)^T = W1^T)
    cfg, graphdef, exact = _exact_params(tms, C=tms.cfg.decomposition.C)
    batches = tms.source.eval_batches(1, cfg.eval.batch_size)
    exact_got = fast_tier(cfg, graphdef, exact, tms.target_graphdef, target_state, batches)
    assert exact_got["eval/mse/unmasked"] < 1e-12, exact_got["eval/mse/unmasked"]
    assert exact_got["eval/mse/zero"] > 1e-4


def _lm_run_config(tmp_path: Path, every: int, steps: int) -> DecomposeConfig:
    raw = yaml.safe_load((FIXTURES / "llama_micro.yaml").read_text())
    raw["run_name"] = "llama_micro_fast_tier"
    raw["target"] = str(FIXTURES / "llama_micro_target.yaml")
    raw["train"].update(steps=steps, log_every=4)
    raw["train"]["faithfulness_warmup"] = {"steps": 200, "lr": 0.01}
    raw["eval"]["every"] = every
    path = tmp_path / "llama_micro_fast_tier.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_decompose_config(path)


def test_s14_2_eval_every_logs_at_multiples_and_last_step(runs_dir: Path, lm: Session) -> None:
    """eval.every = 10 on 32 steps (log_every 4): eval keys at 10, 20, 30 and 32 only, also in
    eval.json; after the warm-up and a few steps, ablating every component is worse than
    keeping the CI-masked ones (S14.3)."""
    del lm  # built first: the module's LM session (its target is in runs_dir already)
    cfg = _lm_run_config(runs_dir, every=10, steps=32)
    result = run_decompose(cfg, "llama_micro_fast_tier.yaml", runs_dir, show_progress=False)
    run = runs_dir / cfg.run_name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    with_eval = [r["step"] for r in records if any(k.startswith("eval/") for k in r)]
    assert with_eval == [10, 20, 30, 32]
    assert [r["step"] for r in records] == [4, 8, 10, 12, 16, 20, 24, 28, 30, 32]
    keys = _expected_keys(cfg.decomposition.sites, lm=True)
    for r in records:
        if r["step"] in with_eval:
            assert keys <= set(r) and all(np.isfinite(r[k]) for k in keys), r["step"]
    last = records[-1]
    saved = json.loads((run / "eval.json").read_text())
    for k in keys:
        assert saved["fast_tier"][k] == pytest.approx(last[k], rel=1e-6, abs=1e-9), k
    C = cfg.decomposition.C
    for s, n_alive in saved["alive"].items():
        assert saved["fast_tier"][f"eval/alive_frac/{s}"] * C == n_alive, s
    assert result["fast_tier"]["eval/kl/zero"] > result["fast_tier"]["eval/kl/ci"]
    print(
        "micro LM fast tier at the last step:",
        {k: round(v, 4) for k, v in sorted(last.items()) if k.startswith("eval/")},
    )
