"""param_decomp: parameter decomposition (SPD) in JAX / Flax NNX.

Importing the package sets no XLA flag. Until 2026-11-26 it turned XLA:CPU's
concurrency-optimized scheduler off, which halved the TMS 5-2 step when every masked forward
recomputed its products and kept them all live. Since each mask-independent product is shared
(SPEC S9.4) the scheduler's own default is faster on every speed bench (same machine, same
call: TMS 5-2 19.3 -> 16.8 ms, ResidMLP-1 126 -> 120 ms, llama_tiny 93 -> 86 ms, see
bench/README.md), so XLA's default is kept and a user's XLA_FLAGS apply unchanged.
"""
