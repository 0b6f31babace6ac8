"""What a component writes toward the output: its write direction U[c] read through the
unembedding (the direct path only).

Which sites write to the residual stream is a fact of the target's forward, stated here per
target class (`targets/llama.py`, `targets/gpt2.py`): `embed` (its row is the residual's start),
each layer's attention output (`attn.o`) and MLP output (`mlp.down` for Llama, `mlp.proj` for
GPT-2) are added to the residual; q/k/v feed the attention, gate/up/fc the MLP's nonlinearity,
so their U[c] lives in a space the unembedding does not read. `unembed` writes the logits
themselves: its U[c] is already a vector over the vocabulary and is reported as it is.

For a residual writer the value of token v is (n(U[c]) * g) . W_U[:, v], g the final norm's
weight and W_U the unembedding (the embedding transposed when the head is tied); n is the
identity for RMSNorm (Llama) and the mean removal for LayerNorm (GPT-2; its bias adds the same
to every component, so it is left out). What this leaves out, stated in each note: the final
norm's per-token 1/rms (or 1/std) factor, a positive scalar that changes no ranking; the
logit soft-cap (monotone); every path through later layers; and the sign of the component's
inner activation x . V[:, c]: where it is negative the component writes -U[c], and promoted
and suppressed swap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

from param_decomp.targets.gpt2 import GPT2
from param_decomp.targets.llama import Llama

RESIDUAL_KINDS = {Llama: ("attn.o", "mlp.down"), GPT2: ("attn.o", "mlp.proj")}
DIRECT_PATH = (
    "direct path only: U[c] (times the final norm's weight{centred}) through the unembedding; "
    "the per-token norm scale (positive), the logit soft-cap, later layers and the sign of "
    "x.V[:, c] are not included (a negative inner activation swaps promote and suppress)"
)


@dataclass(frozen=True)
class OutputReading:
    """How one site's components are read toward the output."""

    writes_residual: bool
    note: str
    kind: str  # "residual" (through the unembedding), "logits" (U[c] itself) or "none"


def _kind_of(site: str) -> str:
    """`layers.3.mlp.down` -> `mlp.down`; other names as they are."""
    parts = site.split(".")
    return ".".join(parts[2:]) if parts[0] == "layers" and len(parts) > 2 else site


def output_readings(target: object, sites: tuple[str, ...]) -> dict[str, OutputReading]:
    """Per site: whether its output is added to the residual stream, and the note the summary
    gives for its output tokens."""
    kinds = next((k for cls, k in RESIDUAL_KINDS.items() if isinstance(target, cls)), None)
    out = {}
    for site in sites:
        if kinds is None:
            note = f"{type(target).__name__} is not a Llama or GPT-2 LM: no output tokens"
            out[site] = OutputReading(False, note, "none")
        elif site == "embed" or _kind_of(site) in kinds:
            centred = " after removing its mean (LayerNorm)" if isinstance(target, GPT2) else ""
            out[site] = OutputReading(True, DIRECT_PATH.format(centred=centred), "residual")
        elif site == "unembed":
            out[site] = OutputReading(
                False, "writes the logits directly: output tokens are U[c] itself", "logits"
            )
        else:
            out[site] = OutputReading(
                False,
                f"{_kind_of(site)} feeds the attention or the MLP's nonlinearity, not the "
                "residual stream: no output tokens",
                "none",
            )
    return out


def unembedding(
    target: object,
) -> tuple[Float[np.ndarray, "d vocab"], Float[np.ndarray, " d"], bool]:
    """(W_U, the final norm's weight g, whether the norm is LayerNorm) of a Llama or GPT-2."""
    weights = target.site_weights()  # type: ignore[attr-defined]
    w_u = np.asarray(weights["unembed"], np.float64)
    norm = np.asarray(target.final_norm[...], np.float64)  # type: ignore[attr-defined]
    layer_norm = isinstance(target, GPT2)
    return w_u, (norm[0] if layer_norm else norm), layer_norm


def output_values(
    target: object, reading: OutputReading, U: Float[np.ndarray, "C d_out"]
) -> Float[np.ndarray, "C vocab"] | None:
    """Per component, the direct-path logit of every token (module docstring); None where the
    site has no output reading."""
    if reading.kind == "logits":
        return np.asarray(U, np.float64)
    if reading.kind != "residual":
        return None
    w_u, g, layer_norm = unembedding(target)
    u = np.asarray(U, np.float64)
    if layer_norm:
        u = u - u.mean(axis=1, keepdims=True)
    return (u * g) @ w_u
