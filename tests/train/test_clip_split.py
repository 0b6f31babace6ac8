"""Split gradient clipping of a decomposition (SPEC S10.6): the components and the CI function
each clipped to their own global norm."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml
from flax import nnx

from param_decomp.config.errors import ConfigError
from param_decomp.config.loading import load_target_config
from param_decomp.config.pretrain_schema import load_pretrain_config
from param_decomp.config.schema import DecompositionOptimizer
from param_decomp.jobs.decompose import new_decomposition
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.targets.build import build_target
from param_decomp.train.optimizer import gradient_clipping, make_optimizer

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="module")
def params() -> nnx.State:
    """A random-init decomposition's trained params, as the step's optimizer sees them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        cfg = load_decompose_config(FIXTURES / "tms_tiny.yaml")
        target = build_target(load_target_config(FIXTURES / "tms_tiny_target.yaml"))
    return nnx.split(new_decomposition(cfg, target))[1]


def _split(tree: nnx.State) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(components' leaves, every other leaf), by the params' own top-level names."""
    pure = nnx.to_pure_dict(tree)
    assert "components" in pure and len(pure) > 1
    comp = [np.asarray(x) for x in jax.tree.leaves(pure["components"])]
    rest = [np.asarray(x) for k, v in pure.items() if k != "components" for x in jax.tree.leaves(v)]
    return comp, rest


def _norm(leaves: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(np.square(x.astype(np.float64))) for x in leaves)))


def _grads(params: nnx.State, scale: float) -> nnx.State:
    return jax.tree.map(lambda x: scale * (jnp.cos(3.0 * x) + 1.0), params)


@pytest.mark.parametrize("ci_limit", [None, 1e-3, 1e6])
def test_s10_6_each_group_is_clipped_to_its_own_norm(
    params: nnx.State, ci_limit: float | None
) -> None:
    """Components at exactly their limit, in the same direction; the CI function's gradient at
    its own limit, or untouched without one or under it."""
    grads = _grads(params, 1.0)
    cfg = DecompositionOptimizer(
        lr=1e-2, grad_clip_norm_components=0.01, grad_clip_norm_ci_function=ci_limit
    )
    clip = gradient_clipping(cfg)
    clipped, _ = clip.update(grads, clip.init(params), params)
    (comp_in, rest_in), (comp_out, rest_out) = _split(grads), _split(clipped)
    n_comp, n_rest = _norm(comp_in), _norm(rest_in)
    assert n_comp > 0.1 and n_rest > 0.1
    assert _norm(comp_out) == pytest.approx(0.01, rel=1e-5)
    for a, b in zip(comp_in, comp_out, strict=True):
        np.testing.assert_allclose(b, a * (0.01 / n_comp), rtol=1e-5, atol=1e-12)
    expected = 1.0 if ci_limit is None or ci_limit >= n_rest else ci_limit / n_rest
    for a, b in zip(rest_in, rest_out, strict=True):
        np.testing.assert_allclose(b, a * expected, rtol=1e-5, atol=1e-12)


def test_s10_6_the_optimizer_steps_on_the_clipped_gradient(params: nnx.State) -> None:
    """Three AdamW steps with gradients 1x, 50x and 1e-3x: equal to plain AdamW fed the
    hand-clipped gradients (Adam is scale-free within a step, not across steps)."""
    cfg = DecompositionOptimizer(lr=1e-2, grad_clip_norm_components=0.05)
    ours, plain = make_optimizer(cfg, 10), optax.adamw(1e-2, b1=0.9, b2=0.999)
    p1 = p2 = params
    s1, s2 = ours.init(p1), plain.init(p2)
    for scale in (1.0, 50.0, 1e-3):
        g = _grads(p1, scale)
        n = _norm(_split(g)[0])
        factor = min(1.0, 0.05 / n)
        by_hand = jax.tree_util.tree_map_with_path(
            lambda path, x, f=factor: x * f if path[0].key == "components" else x, g
        )
        u1, s1 = ours.update(g, s1, p1)
        u2, s2 = plain.update(by_hand, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_s10_6_one_kind_of_clipping_and_only_for_decompositions(tmp_path: Path) -> None:
    cfg = yaml.safe_load((FIXTURES / "tms_tiny.yaml").read_text())
    cfg["target"] = str(FIXTURES / "tms_tiny_target.yaml")
    cfg["train"]["optimizer"].update(grad_clip_norm=1.0, grad_clip_norm_components=0.01)
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="grad_clip_norm_components") as err:
        load_decompose_config(path)
    assert "both.yaml" in str(err.value)
    del cfg["train"]["optimizer"]["grad_clip_norm"]
    path.write_text(yaml.safe_dump(cfg))
    assert load_decompose_config(path).train.optimizer.grad_clip_norm_components == 0.01

    pretrain = yaml.safe_load((FIXTURES / "llama_micro_target.yaml").read_text())
    pretrain["train"]["optimizer"]["grad_clip_norm_components"] = 0.01
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(pretrain))
    with pytest.raises(ConfigError, match="grad_clip_norm_components"):
        load_pretrain_config(path)
