"""A closed-form FLOP count of one decomposition step, beside XLA's own (SPEC S13.5).

With R the global rows of a batch (batch_size, times seq_len for an LM), for a site s of shape
(d_in, d_out) decomposed with C_s components:

- dense product  D_s = 2 R d_in d_out            (x @ W)
- site product   P_s = 2 R C_s (d_in + d_out)    (x @ V, then @ U; an index site such as the
  embedding looks V up, so P_s = 2 R C_s d_out)
- target forward T = sum over the target's non-index linear matrices of D_s, plus for an LM
  the unembedding when it is not a site (tied) and attention 4 R seq_len d_q per layer.

One step = T (the clean forward, no gradient) + 3 x (forward + ~2x backward) of:
  the shared inner products x @ V on the clean inputs (sum_s 2 R d_in C_s), and every masked
  forward: T + sum over its live sites of P_s, minus D_s when the site's x @ W is not needed
  (no delta term and no subset routing, SPEC S9.4);
  with a faithfulness term, V @ U of every site (2 d_in C_s d_out), which depends on no row.
A reconstruction plan runs n_mask_samples forwards (times one per site for `each` routing,
that site alone live); an adversary n_steps + 1 forwards with every site live.

With train.micro_batches k > 1 (S10.4) and an importance term, a first pass runs the clean
forward and x @ V once more (no gradient) for the global component means, and every micro-batch
forms faithfulness's V @ U again (k times forward and backward).

Per device: the row terms split over all devices (XLA's partitioner splits the rows over
data x fsdp and the component products over tensor), V @ U only over tensor (it depends on no
row, so every batch shard forms it in full). The row split is an assumption about XLA's
partitioning: with tensor > 1 and few batch shards XLA may run the target's dense forward on
every tensor shard, and its count is then higher (docs/scale.md: 2.9x with tensor 8 alone).
Not counted: the CI function and elementwise work; and XLA shares a masked forward's prefix
before its first live site with the clean forward, so the closed form can also exceed XLA's count.
"""

from __future__ import annotations

from param_decomp.objective import Objective
from param_decomp.targets.token_lm import INDEX_SITES

BACKWARD_FACTOR = 3  # forward + about twice its FLOPs in the backward


def closed_form_flops(
    objective: Objective,
    site_shapes: dict[str, tuple[int, int]],
    site_C: dict[str, int],
    all_site_shapes: dict[str, tuple[int, int]],
    rows: int,
    lm: tuple[int, int, int] | None,
    mesh: dict[str, int],
    micro_batches: int = 1,
) -> dict[str, int]:
    """The step's matmul FLOPs over the whole mesh (the module docstring's formula)."""
    R = rows

    def dense(s: str) -> int:
        d_in, d_out = all_site_shapes[s]
        return 2 * R * d_in * d_out

    def product(s: str) -> int:
        d_in, d_out = site_shapes[s]
        reads = 0 if s in INDEX_SITES else d_in
        return 2 * R * site_C[s] * (reads + d_out)

    target = sum(dense(s) for s in all_site_shapes if s not in INDEX_SITES)
    if lm is not None:
        seq_len = lm[0]
        if "unembed" not in all_site_shapes and "embed" in all_site_shapes:
            target += dense("embed")  # a tied head: logits from the embedding transposed
        q_sites = [s for s in all_site_shapes if s.endswith("attn.q")]
        target += sum(4 * R * seq_len * all_site_shapes[s][1] for s in q_sites)
    sites = tuple(site_shapes)
    inner = sum(2 * R * site_shapes[s][0] * site_C[s] for s in sites if s not in INDEX_SITES)

    def masked(live: tuple[str, ...], needs_xw: bool) -> int:
        return target + sum(product(s) - (0 if needs_xw else dense(s)) for s in live)

    n_forwards = masked_total = 0
    for plan in objective.plans:
        lives = [(s,) for s in sites] if plan.routing == "each" else [sites]
        needs_xw = plan.delta or plan.routing == "subset"
        for live in lives:
            n_forwards += plan.n_mask_samples
            masked_total += plan.n_mask_samples * masked(live, needs_xw)
    for spec in objective.adversaries:
        n_forwards += spec.n_steps + 1
        masked_total += (spec.n_steps + 1) * masked(sites, spec.delta)
    faithful = any(t.type == "faithfulness" for t in objective.terms)
    weight_products = (
        sum(2 * d_in * site_C[s] * d_out for s, (d_in, d_out) in site_shapes.items())
        if faithful
        else 0
    )
    row_total = target + BACKWARD_FACTOR * (inner + masked_total)
    if micro_batches > 1 and objective.psi_specs:
        row_total += target + inner  # S10.4: the global component means' pass
    weight_total = BACKWARD_FACTOR * weight_products * micro_batches
    devices = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
    return {
        "rows": R,
        "target_forward": target,
        "inner_products": inner,
        "masked_forwards": n_forwards,
        "masked_forward_flops": masked_total,
        "faithfulness_products": weight_products,
        "step_total": row_total + weight_total,
        "per_device": row_total // devices + weight_total // mesh["tensor"],
    }
