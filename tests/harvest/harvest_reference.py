"""Every harvest statistic computed the direct way, in numpy, from all tokens and all CI values
at once (no heaps, no batching): what the harvest's tables must equal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def mix32(h: np.ndarray) -> np.ndarray:
    """The harvest's uint32 avalanche mix, written again in numpy."""
    h = h.astype(np.uint32)
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def reservoir_keys(seed: int, token_index: np.ndarray, n_components: int) -> np.ndarray:
    seed_mix = mix32(np.asarray([seed % 2**32], np.uint32))[0]
    per_token = mix32(token_index.astype(np.uint32) ^ seed_mix)
    comp = np.arange(n_components, dtype=np.uint32) * np.uint32(0x9E3779B9)
    per_comp = mix32(comp + seed_mix)
    return (mix32(per_token[:, None] ^ per_comp[None, :]) >> np.uint32(2)).astype(np.int64)


@dataclass
class Context:
    ci: float
    sequence: int
    position: int
    center: int
    tokens: list[int]
    ci_values: list[float]


@dataclass
class Reference:
    n_fire: np.ndarray  # (n,)
    n_any: np.ndarray
    mean_ci: np.ndarray
    tok_count: np.ndarray  # (vocab,)
    input_count: np.ndarray  # (n, vocab)
    coact: np.ndarray  # (n, n)
    top: list[list[Context]]  # per global component
    reservoir: list[list[Context]]


def reference(
    tokens: np.ndarray,
    ci: np.ndarray,
    threshold: float,
    top_k: int,
    context: int,
    reservoir: int,
    seed: int,
    vocab: int,
) -> Reference:
    """`tokens` (S, T): every harvested window in harvest order; `ci` (S, T, n) the CI of every
    global component there."""
    S, T, n = ci.shape
    flat = ci.reshape(S * T, n).astype(np.float64)
    toks = tokens.reshape(S * T)
    fire = flat > threshold
    index = np.arange(S * T)
    keys = reservoir_keys(seed, index, n)

    def ctx(g: int, c: int) -> Context:
        s, p = divmod(int(g), T)
        lo, hi = max(0, p - context), min(T, p + context + 1)
        return Context(
            float(ci[s, p, c]), s, p, p - lo, tokens[s, lo:hi].tolist(), ci[s, lo:hi, c].tolist()
        )

    top, res = [], []
    for c in range(n):
        on = np.flatnonzero(fire[:, c])
        by_ci = on[np.lexsort((on, -flat[on, c]))][:top_k]
        by_key = on[np.lexsort((on, keys[on, c]))][:reservoir]
        top.append([ctx(g, c) for g in by_ci])
        res.append([ctx(g, c) for g in by_key])
    input_count = np.zeros((n, vocab), np.int64)
    for c in range(n):
        input_count[c] = np.bincount(toks[fire[:, c]], minlength=vocab)
    f = fire.astype(np.int64)
    return Reference(
        n_fire=fire.sum(0),
        n_any=(flat > 0).sum(0),
        mean_ci=flat.sum(0) / (S * T),
        tok_count=np.bincount(toks, minlength=vocab),
        input_count=input_count,
        coact=f.T @ f,
        top=top,
        reservoir=res,
    )
