"""S1.4: sites by pattern with per-pattern C, in the target's fixed order; every linear matrix of
an LM (embedding and unembedding included) is a site; S5.5 the global transformer CI function."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx
from pydantic import ValidationError

from param_decomp.config.loading import mesh_problems
from param_decomp.config.schema import CIFunction, Decomposition, LlamaModel, Mesh
from param_decomp.decomposition.ci_transformer import GlobalTransformerCI
from param_decomp.decomposition.masked_forward import clean_forward, inner_acts, masked_site_fn
from param_decomp.decomposition.model import DecompositionModel
from param_decomp.decomposition.sites import SiteError, pattern_matches, resolve_sites
from param_decomp.jobs.decompose import run_decompose
from param_decomp.runconfig.decompose import load_decompose_config
from param_decomp.targets.llama import Llama

pytestmark = pytest.mark.runs_long(seconds=60)

REPO = Path(__file__).resolve().parents[2]
LM_SITES = [
    "embed",
    *(f"layers.{i}.{k}" for i in range(2) for k in Llama.SITE_KINDS),
    "unembed",
]


def _llama(tied: bool = False) -> Llama:
    cfg = LlamaModel(
        type="llama", vocab_size=40, d_model=16, n_heads=2, d_mlp=24, n_layers=2, tied_head=tied
    )
    return Llama(cfg, rngs=nnx.Rngs(0))


def test_s1_4_lm_site_order_is_the_forward_order() -> None:
    """embed, per layer attn q/k/v/o then mlp gate/up/down, unembed: what the forward calls."""
    target = _llama()
    assert list(target.site_weights()) == LM_SITES
    tokens = jax.random.randint(jax.random.key(0), (2, 5), 0, 40)
    order: list[str] = []

    def forward(tokens: jax.Array) -> jax.Array:
        out, record = clean_forward(target, tokens, tuple(LM_SITES))
        order.extend(record.inputs)  # the record's own order (a pytree of it sorts its keys)
        return out

    jax.eval_shape(forward, tokens)  # the forward traced, its Python run in order, no compile
    assert order == LM_SITES


def test_s1_4_patterns_match_whole_segments() -> None:
    assert pattern_matches("layers.*.mlp.*", "layers.1.mlp.down")
    assert not pattern_matches("layers.*.mlp.*", "layers.1.attn.q")
    assert not pattern_matches("layers.*", "layers.1.mlp.up")  # `*` never crosses a dot
    assert pattern_matches("layers.1.attn.[qk]", "layers.1.attn.k")


def test_s1_4_resolution_keeps_the_target_order_and_each_pattern_c() -> None:
    dec = Decomposition(
        C=4,
        sites=[
            "unembed",
            {"pattern": "layers.*.mlp.*", "C": 12},
            {"pattern": "layers.1.attn.q", "C": 6},
            "embed",
        ],
    )
    got = resolve_sites(dec, LM_SITES)
    expected = {"embed": 4}
    expected.update({f"layers.0.mlp.{k}": 12 for k in ("gate", "up", "down")})
    expected["layers.1.attn.q"] = 6
    expected.update({f"layers.1.mlp.{k}": 12 for k in ("gate", "up", "down")})
    expected["unembed"] = 4
    assert list(got.items()) == list(expected.items())


@pytest.mark.parametrize(
    ("sites", "ties", "message"),
    [
        (["layers.*.mlp.nope"], {}, "matches no site"),
        (["layers.*.mlp.*", {"pattern": "layers.0.mlp.up", "C": 3}], {}, "matched by both"),
        (
            [{"pattern": "embed", "C": 4}, {"pattern": "unembed", "C": 5}],
            {"unembed": "embed"},
            "different C",
        ),
        (["embed"], {"unembed": "embed"}, "not a decomposed site"),
    ],
)
def test_s1_4_unresolvable_entries_are_named(sites: list, ties: dict, message: str) -> None:
    dec = Decomposition(C=8, sites=sites, tied_sites=ties)
    with pytest.raises(SiteError, match=message):
        resolve_sites(dec, LM_SITES)


def test_s1_4_an_entry_without_c_is_refused() -> None:
    with pytest.raises(ValidationError, match="has no C"):
        Decomposition(sites=[{"pattern": "layers.*.mlp.*", "C": 4}, "embed"])


def test_s13_1_every_c_must_divide_the_tensor_axis() -> None:
    problems = mesh_problems(Mesh(data=2, tensor=2), 4, (), (4, 6, 9))
    assert problems == [("decomposition.C", "9 is not divisible by the tensor axis size 2")]


@pytest.mark.parametrize("tied", [False, True])
def test_s1_4_exact_factors_at_every_lm_site_reproduce_the_target(tied: bool) -> None:
    """V = W, U = I (C = d_out) at every site incl. embed (token ids gather V's rows) and the
    (tied) unembed, mask = 1: the masked forward IS the target's forward."""
    target = _llama(tied)
    weights = target.site_weights()
    tokens = jax.random.randint(jax.random.key(1), (3, 7), 0, 40)

    @jax.jit  # one program, not each op compiled on its own
    def both(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        clean, record = clean_forward(target, tokens, tuple(LM_SITES))
        VU = {s: (w, jnp.eye(w.shape[1])) for s, w in weights.items()}
        ones = {s: jnp.ones((3, 7, w.shape[1])) for s, w in weights.items()}
        zeros = {s: jnp.zeros_like(m) for s, m in ones.items()}
        forward = {"mask_source": zeros, "delta_source": {}, "routed": None}
        # embed, the first site, is live and reads its clean x @ V; every later one is recomputed
        acts = inner_acts(record, VU)
        site_fn = masked_site_fn(tuple(LM_SITES), VU, ones, forward, False, record, acts)
        return target(tokens, site_fn), clean

    masked, clean = both(tokens)
    np.testing.assert_allclose(masked, clean, rtol=1e-4, atol=1e-4)


def test_s5_6_embedding_ci_reads_the_clean_embedding() -> None:
    target = _llama()
    weights = target.site_weights()
    dec = Decomposition(
        sites=[{"pattern": "embed", "C": 5}, {"pattern": "layers.0.mlp.up", "C": 7}],
        ci_function=CIFunction(type="per_site_mlp", hidden=[8]),
    )
    shapes = {s: tuple(w.shape) for s, w in weights.items()}
    model = DecompositionModel(dec, shapes, rngs=nnx.Rngs(0), index_sites=("embed",))
    tokens = jax.random.randint(jax.random.key(2), (2, 6), 0, 40)

    @jax.jit  # one program, not each op compiled on its own
    def taps_and_ci(tokens: jax.Array) -> tuple[dict, dict]:
        _, record = clean_forward(target, tokens, model.site_names)
        taps = model.ci_taps(record)
        lower, _ = model.causal_importances(taps, model.all_VU())
        return taps, lower

    taps, lower = taps_and_ci(tokens)
    np.testing.assert_array_equal(taps["embed"], weights["embed"][tokens])
    assert lower["embed"].shape == (2, 6, 5) and lower["layers.0.mlp.up"].shape == (2, 6, 7)


def _transformer(seed: int = 0) -> GlobalTransformerCI:
    cfg = CIFunction(type="global_transformer", d_model=16, n_layers=2, n_heads=2, d_mlp=32)
    ci = GlobalTransformerCI(cfg, d_taps=10, n_out=9, rngs=nnx.Rngs(seed))
    # the output projections start at zero (blocks = identity); give them weights to test mixing
    keys = iter(jax.random.split(jax.random.key(seed), 8))
    for block in ci.blocks:
        block.out[...] = jax.random.normal(next(keys), block.out.shape) * 0.3
        block.down[...] = jax.random.normal(next(keys), block.down.shape) * 0.3
    return ci


def test_s5_5_transformer_ci_is_bidirectional_and_keeps_no_rotary_state() -> None:
    ci = _transformer()
    forward = jax.jit(lambda taps: ci(taps))  # one compiled program for the three inputs
    taps = jax.random.normal(jax.random.key(3), (2, 6, 10))
    out = forward(taps)
    assert out.shape == (2, 6, 9)
    later = taps.at[:, 5].add(1.0)  # change only the LAST position
    moved = jnp.abs(forward(later)[:, 0] - out[:, 0]).max()
    assert moved > 1e-4, "position 0 must see position 5 (no causal mask)"
    other_row = jnp.abs(forward(taps.at[1].add(1.0))[0] - out[0]).max()
    assert other_row == 0.0, "rows of the batch never mix"
    names = {str(p[-1]) for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(ci))}
    assert not any("freq" in n or "rope" in n for n in names), names


def test_s5_5_transformer_ci_trains_through_its_rotary_blocks() -> None:
    ci = _transformer()
    graphdef, params = nnx.split(ci)
    taps = jax.random.normal(jax.random.key(4), (2, 6, 10))

    def loss(p: nnx.State) -> jax.Array:
        return jnp.sum(nnx.merge(graphdef, p)(taps) ** 2)

    grads = jax.jit(jax.grad(loss))(params)  # one program, not each op compiled on its own
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) == len(norms)


def test_s1_4_s5_5_lm_decomposition_by_pattern_with_transformer_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_targets: Callable[..., Path]
) -> None:
    """A config with patterns, per-pattern C, embed/unembed sites and the transformer CI runs
    end to end; V/U and the alive counts have each site's own C."""
    monkeypatch.chdir(REPO)
    cfg = yaml.safe_load((REPO / "tests" / "fixtures" / "llama_micro.yaml").read_text())
    cfg["decomposition"] = {
        "C": 4,
        "sites": [
            {"pattern": "layers.*.mlp.*", "C": 8},
            {"pattern": "layers.0.attn.q", "C": 6},
            "embed",
            "unembed",
        ],
        "ci_function": {"type": "global_transformer", "d_model": 16, "n_layers": 1, "n_heads": 2},
    }
    cfg["train"]["steps"] = 3
    cfg["eval"]["figures"] = False
    cfg["mesh"] = {"devices": 1}  # the sites and the CI function are the point, not the mesh
    path = tmp_path / "patterns.yaml"
    path.write_text(yaml.safe_dump(cfg))
    trained_targets(tmp_path, REPO / cfg["target"])
    result = run_decompose(load_decompose_config(path), str(path), tmp_path, show_progress=False)
    want = {
        "embed": 4,
        "layers.0.attn.q": 6,
        "layers.0.mlp.gate": 8,
        "layers.0.mlp.up": 8,
        "layers.0.mlp.down": 8,
        "unembed": 4,
    }
    assert {s: a.size for s, a in result["alive"].items()} == want
    assert list(result["alive"]) == list(want)
    assert all(np.isfinite(v) for v in result["losses"].values())
