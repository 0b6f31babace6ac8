"""A finished harvest's state turned into its tables and summary (host side, once per harvest)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from jaxtyping import Float

from param_decomp.eval.token_text import token_strings
from param_decomp.harvest.accumulate import EMPTY_CI, EMPTY_NEG_KEY, HarvestSpec
from param_decomp.harvest.output_tokens import output_readings, output_values
from param_decomp.harvest.tables import (
    coactivation_table,
    components_table,
    contexts_table,
    input_tokens_table,
    output_tokens_table,
)
from param_decomp.text.tokenizers import Tokenizer

OUTPUT_SCHEMA = pa.schema(
    [
        ("site", pa.string()),
        ("component", pa.int32()),
        ("direction", pa.string()),
        ("rank", pa.int32()),
        ("token", pa.int32()),
        ("value", pa.float64()),
    ]
)


def vocab_table(tokenizer: Tokenizer) -> pa.Table:
    """Each token id and its text alone (what `eval/token_text.token_strings` shows for it: a
    sentencepiece `▁` as a space, a lone byte of a multi-byte character as <0xNN> for byte
    tokenizers, U+FFFD for sentencepiece byte pieces, the end-of-document token as ⟨eod⟩)."""
    ids = np.arange(tokenizer.vocab_size, dtype=np.int32)
    texts = [token_strings(tokenizer, ids[i : i + 1])[0] for i in range(len(ids))]
    return pa.table({"token": pa.array(ids, pa.int32()), "text": pa.array(texts, pa.string())})


def results(
    spec: HarvestSpec,
    state: dict[str, np.ndarray],
    ci_sum: Float[np.ndarray, " n"],
    tokens: int,
    target: Any,
    U: dict[str, Float[np.ndarray, "C d_out"]],
    tokenizer: Tokenizer,
    top_tokens: int,
    coact_top: int,
) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """(tables by name, the per-site part of summary.json) of a harvest of `tokens` tokens."""
    site_C = spec.site_C
    n_fire, n_any = state["n_fire"].astype(np.int64), state["n_any"].astype(np.int64)
    top_valid = state["top_ci"] > EMPTY_CI
    res_valid = state["res_neg_key"] > EMPTY_NEG_KEY
    vocab_out = min(tokenizer.vocab_size, spec.vocab)
    readings = output_readings(target, tuple(s for s, _ in site_C))
    outputs = []
    for site, _ in site_C:
        values = output_values(target, readings[site], U[site])
        if values is not None:
            outputs.append(output_tokens_table(site, values[:, :vocab_out], top_tokens))
    tables = {
        "vocab": vocab_table(tokenizer),
        "token_counts": pa.table(
            {
                "token": pa.array(np.arange(spec.vocab), pa.int32()),
                "count": pa.array(state["tok_count"], pa.int64()),
            }
        ),
        "components": components_table(site_C, n_fire, n_any, ci_sum, tokens),
        "top_contexts": contexts_table(
            site_C,
            top_valid,
            state["top_ci"],
            state["top_seq"],
            state["top_pos"],
            state["top_tokens"],
            state["top_values"],
        ),
        "reservoir": contexts_table(
            site_C,
            res_valid,
            state["res_values"][..., spec.context],  # the sampled token's own CI
            state["res_seq"],
            state["res_pos"],
            state["res_tokens"],
            state["res_values"],
        ),
        "input_tokens": input_tokens_table(
            site_C, state["input_count"], n_fire, state["tok_count"], tokens, top_tokens
        ),
        "output_tokens": pa.concat_tables(outputs) if outputs else OUTPUT_SCHEMA.empty_table(),
        "coactivation": coactivation_table(site_C, state["coact"], coact_top),
    }
    sites: dict[str, Any] = {}
    offset = 0
    for site, C in site_C:
        fire, any_ = n_fire[offset : offset + C], n_any[offset : offset + C]
        sites[site] = {
            "C": C,
            "alive_count": int(np.count_nonzero(fire)),
            "l0_any": float(any_.sum() / tokens),
            "l0": float(fire.sum() / tokens),
            "writes_residual": readings[site].writes_residual,
            "output_tokens_note": readings[site].note,
        }
        offset += C
    return tables, sites
