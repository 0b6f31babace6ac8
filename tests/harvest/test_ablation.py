"""`param-decomp ablate` on the small LM run: each recorded effect against the masked forward
built by hand (the target's own sites, with x @ W - (x . V[:, c]) U[c] at the firing position of
the ablated site), on windows read back through the harvest's own pipeline; 4 devices against 1;
and the CLI's tables as `harvest.load` returns them."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pytest
from cli_runner import run_cli
from flax import nnx

import param_decomp.harvest as harvest
from param_decomp.harvest.settings import AblationSettings, HarvestSettings
from param_decomp.jobs.ablate import run_ablation
from param_decomp.jobs.harvest import harvest_windows, open_run, run_harvest, token_store
from param_decomp.targets.base import site_product

pytestmark = pytest.mark.runs_long(seconds=20)

# 6 batches of 8 windows of 16 tokens; 3 top contexts and 3 samples per component
HARVEST = HarvestSettings(tokens=768, top_k=3, context=2, reservoir=3, coact_top=2, top_tokens=3)
CONTEXTS, TOP_TOKENS = 2, 5
TOL = 1e-5


@pytest.fixture(scope="module")
def ablated(harvest_run: Path) -> tuple[harvest.Harvest, dict[int, dict[str, pa.Table]]]:
    """One harvest, ablated on 1 device and on 4 (the second left on disk)."""
    run_harvest(harvest_run, HARVEST, devices=jax.devices()[:1], show_progress=False)
    tables = {}
    for n in (1, 4):
        settings = AblationSettings(CONTEXTS, TOP_TOKENS, batch_size=8)
        done = run_ablation(harvest_run, settings, devices=jax.devices()[:n], show_progress=False)
        rate = done.meta["ablations"] / done.seconds
        print(f"\nablate on {n} device(s): {done.meta['ablations']} in {done.seconds:.1f} s "
              f"({rate:.0f}/s, compilation included)")  # fmt: skip
        h = harvest.load(harvest_run)
        assert h.ablation is not None and h.ablation_tokens is not None
        tables[n] = {"ablation": h.ablation, "ablation_tokens": h.ablation_tokens}
    return harvest.load(harvest_run), tables


def _by_hand(
    run: object, site: str, c: int, x: np.ndarray, p: int
) -> tuple[np.ndarray, np.ndarray]:
    """(log p_before, log p_after - log p_before) at position p, the forward written out:
    every site x @ W, the ablated one minus component c's own write at position p."""
    model = nnx.merge(run.graphdef, run.params)
    V, U = (np.asarray(a, np.float64) for a in model.all_VU()[site])

    def site_fn(name: str, inp: jax.Array, W: jax.Array) -> jax.Array:
        out = site_product(inp, W)
        if name != site:
            return out
        act = site_product(inp, jnp.asarray(V[:, c], jnp.float32))[:, p]  # x . V[:, c] at p
        return out.at[:, p].add(-act[:, None] * jnp.asarray(U[c], jnp.float32))

    tokens = jnp.asarray(x[None])
    before = _log_softmax(run.target(tokens)[0, p])
    return before, _log_softmax(run.target(tokens, site_fn)[0, p]) - before


def _log_softmax(logits: jax.Array) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max()
    return z - np.log(np.sum(np.exp(z)))


def test_effects_equal_the_masked_forward_by_hand(
    harvest_run: Path, ablated: tuple[harvest.Harvest, dict]
) -> None:
    """For one component per site: its mean next-token change, mean KL and top tokens per
    sample, recomputed context by context from windows read through `harvest_windows`."""
    h, _ = ablated
    run = open_run(harvest_run)
    settings = h.settings
    batches = harvest_windows(run, settings, token_store(run))
    windows = np.concatenate([np.asarray(next(batches)) for _ in range(settings["n_batches"])])
    split = token_store(run).split(settings["split"])
    corpus = np.memmap(split.path, split.dtype, mode="r")
    T = windows.shape[1]
    ids = batch_ids_of(run, settings, len(windows))
    effects = h.ablation.to_pylist()
    checked = 0
    for site in h.summary["sites"]:
        rows = [r for r in effects if r["site"] == site and r["sample"] == "reservoir"]
        if not rows:
            continue
        comp = rows[0]["component"]
        for sample, table in (("reservoir", h.reservoir), ("top", h.top_contexts)):
            contexts = [
                r
                for r in table.to_pylist()
                if r["site"] == site and r["component"] == comp and r["rank"] < CONTEXTS
            ]
            deltas, nexts, kls = [], [], []
            for ctx in contexts:
                s, p = ctx["sequence"], ctx["position"]
                before, delta = _by_hand(run, site, comp, windows[s], p)
                kls.append(float(-np.sum(np.exp(before) * delta)))
                start = ids[s] * (T - 1)  # the window's first token in the split
                if start + p + 1 < split.n_tokens:
                    nxt = int(corpus[start + p + 1])
                    assert p + 1 >= T or nxt == windows[s][p + 1]
                    nexts.append(delta[nxt])
                deltas.append(delta)
            (row,) = [r for r in effects if r["site"] == site and r["component"] == comp
                      and r["sample"] == sample]  # fmt: skip
            assert row["contexts"] == len(contexts) and row["next_contexts"] == len(nexts)
            np.testing.assert_allclose(row["kl"], np.mean(kls), rtol=1e-4, atol=TOL)
            np.testing.assert_allclose(row["dlogp"], np.mean(nexts), rtol=1e-4, atol=TOL)
            mean = np.mean(deltas, axis=0)[: h.vocab.num_rows]
            key = (site, comp, sample)
            tokens = [
                r
                for r in h.ablation_tokens.to_pylist()
                if (r["site"], r["component"], r["sample"]) == key
            ]
            for r in tokens:
                np.testing.assert_allclose(r["value"], mean[r["token"]], rtol=1e-4, atol=TOL)
            promoted = [r["value"] for r in tokens if r["direction"] == "promoted"]
            suppressed = [r["value"] for r in tokens if r["direction"] == "suppressed"]
            assert len(promoted) == TOP_TOKENS and promoted[0] >= np.max(mean) - TOL
            assert suppressed[0] <= np.min(mean) + TOL
            checked += 1
    assert checked >= 4
    kl = np.array(h.ablation.column("kl").to_pylist())
    print(f"KL over {len(kl)} rows: median {np.median(kl):.2e}, max {kl.max():.2e}")
    assert kl.max() > 1e-4  # the effects compared are not all zero


def batch_ids_of(run: object, settings: dict, n: int) -> np.ndarray:
    """The split's window id of each harvested sequence, from the pipeline's own shuffle."""
    from param_decomp.data.pipeline import batch_ids

    split = token_store(run).split(settings["split"])
    ds = batch_ids(
        split.n_windows(settings["seq_len"] - 1), settings["batch_size"], settings["seed"]
    )
    B = settings["batch_size"]
    return np.array([ds[s // B][s % B] for s in range(n)])


def test_four_devices_equal_one(ablated: tuple[harvest.Harvest, dict]) -> None:
    """Counts and token ids exactly; floats to 1e-5."""
    _, tables = ablated
    for name in ("ablation", "ablation_tokens"):
        one, four = tables[1][name], tables[4][name]
        assert one.num_rows == four.num_rows > 0
        for col in one.column_names:
            a, b = one.column(col).to_pylist(), four.column(col).to_pylist()
            if one.schema.field(col).type == pa.float64():
                np.testing.assert_allclose(
                    np.array(b, float), np.array(a, float), rtol=TOL, atol=TOL
                )
            elif col != "token":  # the ranks of equal values may swap with rounding
                assert a == b, (name, col)


def test_cli_writes_the_tables(harvest_run: Path, ablated: tuple[harvest.Harvest, dict]) -> None:
    out = run_cli("ablate", str(harvest_run), "--contexts=1", "--top-tokens=2", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "ablated" in out.stdout and "/s" in out.stdout
    h = harvest.load(harvest_run)
    assert set(h.ablation.column("contexts").to_pylist()) == {1}
    assert h.ablation_tokens.num_rows == 2 * 2 * h.ablation.num_rows
