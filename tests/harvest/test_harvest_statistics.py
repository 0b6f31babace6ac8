"""`param-decomp harvest` on a small LM run: every table against a direct numpy computation over
the same tokens (density, mean CI, top-k contexts, reservoir, input tokens and PMI,
co-activation, output tokens), a 4-device harvest against a 1-device one, and a harvest killed
then resumed against a straight one."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pytest
from cli_runner import run_cli
from flax import nnx
from harvest_reference import Context, Reference, reference

import param_decomp.harvest as harvest
from param_decomp.eval.decomposition_eval import causal_importance_on
from param_decomp.harvest.settings import HarvestSettings
from param_decomp.harvest.tables import pmi
from param_decomp.jobs.harvest import harvest_windows, open_run, run_harvest, token_store

pytestmark = pytest.mark.runs_long(seconds=25)

# 12 batches of 8 windows of 16 tokens; small heaps so that they fill and get displaced
OPTIONS = {"tokens": 1536, "top_k": 5, "context": 3, "reservoir": 4, "coact_top": 6}
TOP_TOKENS = 7
RTOL = 1e-5
ATOL = 1e-6  # CI is float32 in [0, 1]: two code paths differ by a few ulp of 1


@pytest.fixture(scope="module")
def harvested(harvest_run: Path) -> harvest.Harvest:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]
    out = run_cli("harvest", str(harvest_run), *args, f"--top-tokens={TOP_TOKENS}", "--no-progress")
    assert out.returncode == 0, out.stderr
    return harvest.load(harvest_run)


@pytest.fixture(scope="module")
def direct(harvest_run: Path, harvested: harvest.Harvest) -> tuple[Reference, dict]:
    """The same windows read back through the pipeline, the CI of each by the eval's own
    `causal_importance_on` (not the harvest's jitted pass), and the statistics in numpy."""
    settings = harvested.settings
    run = open_run(harvest_run)
    batches = harvest_windows(run, settings, token_store(run))
    model = nnx.merge(run.graphdef, jax.tree.map(jnp.asarray, run.params))
    ci_fn = jax.jit(lambda x: causal_importance_on(model, run.target, x))
    windows, cis = [], []
    for _ in range(settings["n_batches"]):
        x = next(batches)
        ci = ci_fn(x)
        windows.append(np.asarray(x))
        cis.append(np.concatenate([np.asarray(ci[s]) for s in model.site_names], axis=-1))
    ref = reference(
        np.concatenate(windows),
        np.concatenate(cis),
        settings["threshold"],
        settings["top_k"],
        settings["context"],
        settings["reservoir"],
        settings["seed"],
        int(run.target.n_features),
    )
    extra = {"site_C": list(model.site_C.items()), "model": model, "target": run.target}
    return ref, extra


def _global(h: harvest.Harvest, table: pa.Table) -> np.ndarray:
    """The global component index of each row (sites side by side in summary order)."""
    offsets, at = {}, 0
    for site, s in h.summary["sites"].items():
        offsets[site] = at
        at += s["C"]
    sites = table.column("site").to_pylist()
    comps = table.column("component").to_numpy()
    return np.asarray([offsets[s] for s in sites], np.int64) + comps


def test_settings_and_summary_state_what_was_harvested(harvested: harvest.Harvest) -> None:
    s, summary = harvested.settings, harvested.summary
    assert {k: s[k] for k in OPTIONS} == OPTIONS
    assert s["n_batches"] == 12 and s["batch_size"] == 8 and s["seq_len"] == 16
    assert summary["tokens"] == 12 * 8 * 16 and summary["split"] == "train"
    assert s["tokenizer"] == "byte" and s["threshold"] == 0.1
    sites = summary["sites"]
    assert [sites[x]["writes_residual"] for x in sites] == [False, False, True]  # v, up, down
    assert "not the residual stream" in sites["layers.0.attn.v"]["output_tokens_note"]
    saved = json.loads((harvested.folder / "settings.json").read_text())
    assert saved == s


def test_firing_counts_density_and_mean_ci_equal_numpy(
    harvested: harvest.Harvest, direct: tuple[Reference, dict]
) -> None:
    ref, _ = direct
    t = harvested.components
    N = harvested.summary["tokens"]
    assert 0 < ref.n_fire.sum() < ref.n_fire.size * N  # firing is neither empty nor everywhere
    np.testing.assert_array_equal(t.column("firing_count").to_numpy(), ref.n_fire)
    np.testing.assert_array_equal(t.column("firing_count_any").to_numpy(), ref.n_any)
    np.testing.assert_allclose(t.column("density").to_numpy(), ref.n_fire / N, rtol=1e-12)
    np.testing.assert_allclose(t.column("density_any").to_numpy(), ref.n_any / N, rtol=1e-12)
    np.testing.assert_allclose(t.column("mean_ci").to_numpy(), ref.mean_ci, rtol=RTOL, atol=1e-9)
    offset = 0
    for s in harvested.summary["sites"].values():
        fire = ref.n_fire[offset : offset + s["C"]]
        assert s["alive_count"] == np.count_nonzero(fire)
        assert s["l0"] == pytest.approx(fire.sum() / N, rel=1e-12)
        assert s["l0_any"] == pytest.approx(ref.n_any[offset : offset + s["C"]].sum() / N)
        offset += s["C"]
    counts = harvested.token_counts.column("count").to_numpy()
    np.testing.assert_array_equal(counts, ref.tok_count)


def _contexts_equal(table: pa.Table, g: np.ndarray, expected: list[list[Context]]) -> int:
    rows = table.to_pylist()
    assert len(rows) == sum(len(e) for e in expected)
    for row, gi in zip(rows, g, strict=True):
        want = expected[gi][row["rank"]]
        got = (row["sequence"], row["position"], row["center"], row["tokens"])
        assert got == (want.sequence, want.position, want.center, want.tokens)
        np.testing.assert_allclose(row["ci_values"], want.ci_values, rtol=RTOL, atol=ATOL)
        assert row["ci"] == pytest.approx(want.ci, rel=RTOL, abs=ATOL)
        assert row["ci_values"][row["center"]] == row["ci"]
    return len(rows)


def test_top_contexts_are_exactly_the_numpy_top_k(
    harvested: harvest.Harvest, direct: tuple[Reference, dict]
) -> None:
    ref, _ = direct
    t = harvested.top_contexts
    n = _contexts_equal(t, _global(harvested, t), ref.top)
    assert n > 0 and any(len(e) == OPTIONS["top_k"] for e in ref.top)  # some heap was full


def test_reservoir_is_the_bottom_keys_sample(
    harvested: harvest.Harvest, direct: tuple[Reference, dict]
) -> None:
    ref, _ = direct
    t = harvested.reservoir
    assert _contexts_equal(t, _global(harvested, t), ref.reservoir) > 0
    # a sample, not the top: among full reservoirs some hold a token below the top-k's CI
    pairs = zip(ref.reservoir, ref.top, strict=True)
    assert any(r and min(c.ci for c in r) < min(c.ci for c in tp) for r, tp in pairs)


def test_input_tokens_and_pmi_equal_numpy(
    harvested: harvest.Harvest, direct: tuple[Reference, dict]
) -> None:
    ref, _ = direct
    t = harvested.input_tokens
    N = harvested.summary["tokens"]
    g = _global(harvested, t)
    by, rank = t.column("by").to_pylist(), t.column("rank").to_numpy()
    token, count, value = (t.column(k).to_numpy() for k in ("token", "count", "pmi"))
    np.testing.assert_array_equal(count, ref.input_count[g, token])
    direct_pmi = np.log(count * N / (ref.n_fire[g] * ref.tok_count[token]))
    np.testing.assert_allclose(value, direct_pmi, rtol=1e-12)
    assert value.max() > 0 > value.min()
    for c in np.flatnonzero(ref.n_fire):
        fired = np.flatnonzero(ref.input_count[c])
        cnt = ref.input_count[c, fired]
        p = pmi(cnt, np.full(len(fired), ref.n_fire[c]), ref.tok_count[fired], N)
        want = {
            "count": fired[np.lexsort((fired, -cnt))][:TOP_TOKENS],
            "pmi": fired[np.lexsort((fired, -cnt, -p))][:TOP_TOKENS],
        }
        for kind, tokens in want.items():
            mine = (g == c) & (np.asarray(by) == kind)
            np.testing.assert_array_equal(rank[mine], np.arange(len(tokens)))
            np.testing.assert_array_equal(token[mine], tokens)


def test_coactivation_counts_and_partners_equal_numpy(
    harvested: harvest.Harvest, direct: tuple[Reference, dict]
) -> None:
    ref, _ = direct
    t = harvested.coactivation
    g = _global(harvested, t)
    partner = _global(
        harvested,
        pa.table({"site": t.column("partner_site"), "component": t.column("partner_component")}),
    )
    n_ab = t.column("count").to_numpy()
    np.testing.assert_array_equal(n_ab, ref.coact[g, partner])
    n = np.diagonal(ref.coact)
    np.testing.assert_allclose(t.column("precision").to_numpy(), n_ab / n[g])
    np.testing.assert_allclose(t.column("recall").to_numpy(), n_ab / n[partner])
    jac = n_ab / (n[g] + n[partner] - n_ab)
    np.testing.assert_allclose(t.column("jaccard").to_numpy(), jac)
    for a in np.flatnonzero(n):
        b = np.flatnonzero(ref.coact[a])
        b = b[b != a]
        j = ref.coact[a, b] / (n[a] + n[b] - ref.coact[a, b])
        want = b[np.lexsort((b, -ref.coact[a, b], -j))][: OPTIONS["coact_top"]]
        np.testing.assert_array_equal(partner[g == a], want)


def test_output_tokens_are_the_write_direction_through_the_unembedding(
    harvested: harvest.Harvest, direct: tuple[Reference, dict]
) -> None:
    _, extra = direct
    model, target = extra["model"], extra["target"]
    t = harvested.output_tokens
    assert set(t.column("site").to_pylist()) == {"layers.0.mlp.down"}
    U = np.asarray(model.site_VU("layers.0.mlp.down")[1], np.float64)
    g = np.asarray(target.final_norm[...], np.float64)
    w_u = target.embed[...].T if target.tied_head else target.unembed[...]
    logits = (U * g) @ np.asarray(w_u, np.float64)
    comp, token = t.column("component").to_numpy(), t.column("token").to_numpy()
    direction = np.asarray(t.column("direction").to_pylist())
    np.testing.assert_allclose(t.column("value").to_numpy(), logits[comp, token], rtol=1e-6)
    for c in range(U.shape[0]):
        order = np.argsort(-logits[c], kind="stable")
        np.testing.assert_array_equal(
            token[(comp == c) & (direction == "promote")], order[:TOP_TOKENS]
        )
        low = np.argsort(logits[c], kind="stable")
        np.testing.assert_array_equal(
            token[(comp == c) & (direction == "suppress")], low[:TOP_TOKENS]
        )


def _tables(h: harvest.Harvest) -> dict[str, pa.Table]:
    return {name: getattr(h, name) for name in harvest.store.TABLES}


def _worst_error(a: pa.Table, b: pa.Table) -> tuple[float, float]:
    """(worst absolute, worst relative) difference of the float columns, relative only where
    the value is above ATOL; every other column must be equal."""
    worst_abs = worst_rel = 0.0
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in a.schema.names:
        x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        if pa.types.is_list(x.type):
            x, y = x.flatten(), y.flatten()
        if not pa.types.is_floating(x.type):
            assert x.equals(y), name
            continue
        fx, fy = np.asarray(x, np.float64), np.asarray(y, np.float64)
        diff = np.abs(fx - fy)
        worst_abs = max(worst_abs, float(diff.max(initial=0.0)))
        big = np.abs(fy) > ATOL
        worst_rel = max(worst_rel, float((diff[big] / np.abs(fy[big])).max(initial=0.0)))
    return worst_abs, worst_rel


def test_a_4_device_harvest_equals_the_1_device_one(harvest_run: Path) -> None:
    """Counts, ranks, positions and tokens equal; CI values within float32 rounding."""
    assert jax.device_count() == 4
    settings = HarvestSettings(**OPTIONS, top_tokens=TOP_TOKENS)
    tables = {}
    for n in (1, 4):
        run_harvest(harvest_run, settings, devices=jax.devices()[:n], show_progress=False)
        tables[n] = _tables(harvest.load(harvest_run))
    errors = [_worst_error(tables[4][k], tables[1][k]) for k in tables[1]]
    worst_abs, worst_rel = max(e[0] for e in errors), max(e[1] for e in errors)
    print(f"4 devices vs 1: worst abs difference {worst_abs:.2e}, worst rel {worst_rel:.2e}")
    assert worst_abs <= ATOL and worst_rel <= 1e-3


class Killed(Exception):
    pass


def _cli_args(**changes: object) -> list[str]:
    options = {**OPTIONS, "top_tokens": TOP_TOKENS, **changes}
    return [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]


def test_a_killed_then_resumed_harvest_equals_a_straight_one(harvest_run: Path) -> None:
    """Killed after batch 7 with saves every 3 batches: `--resume` restarts from batch 6 and
    ends with tables equal to a straight harvest's, column by column."""
    settings = HarvestSettings(**OPTIONS, top_tokens=TOP_TOKENS)
    run_harvest(harvest_run, settings, show_progress=False)
    straight = _tables(harvest.load(harvest_run))

    def kill(i: int) -> None:
        if i == 6:  # after the 7th batch; the last save was after the 6th
            raise Killed

    with pytest.raises(Killed):
        run_harvest(harvest_run, settings, save_every=3, show_progress=False, on_batch=kill)
    assert harvest.store.finished_steps(harvest_run) == []  # the old tables went first
    other = run_cli("harvest", str(harvest_run), *_cli_args(top_k=4), "--resume")
    assert other.returncode == 2 and "other settings (top_k)" in other.stderr
    out = run_cli("harvest", str(harvest_run), *_cli_args(), "--resume", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "resumed after batch 6" in out.stdout
    again = _tables(harvest.load(harvest_run))
    for name, table in straight.items():
        assert again[name].equals(table), name
    assert not (harvest.load(harvest_run).folder / "progress").exists()
    done = run_harvest(harvest_run, settings, resume=True, show_progress=False)
    assert done.batches == 0  # a finished harvest with these settings is left as it is
