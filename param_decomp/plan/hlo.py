"""What the compiled step does beyond the math: the collectives XLA inserted (SPEC S13.5).

Parsed from the compiled (per-device, SPMD-partitioned) HLO text: every instruction whose op is
a collective, its bytes those of its result shape. An async pair (`*-start` / `*-done`) is
counted once, at its `-done`, whose result is the collective's output. A collective inside a
loop body is counted once, not once per iteration.
"""

from __future__ import annotations

import re

import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_INSTRUCTION = re.compile(
    r"=\s+(?P<shape>.+?)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<done>-done)?\("
)
_ARRAY = re.compile(r"\b(?P<dtype>pred|[subf]\d+|bf16|f8e\w+|c64|c128)\[(?P<dims>[\d,]*)\]")
_ITEMSIZE = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16}


def _itemsize(dtype: str) -> int:
    if dtype in _ITEMSIZE:
        return _ITEMSIZE[dtype]
    if dtype.startswith("f8"):
        return 1
    return int(np.ceil(int(dtype[1:]) / 8))


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO result shape, an array `f32[16,8]{1,0}` or a tuple of them."""
    total = 0
    for m in _ARRAY.finditer(shape):
        dims = [int(d) for d in m["dims"].split(",") if d]
        total += int(np.prod(dims, dtype=np.int64)) * _itemsize(m["dtype"])
    return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{op: {count, bytes}} for every collective kind (zeros included), per device per step."""
    out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.search(line)
        if m is None or "-start(" in line:
            continue
        out[m["op"]]["count"] += 1
        out[m["op"]]["bytes"] += shape_bytes(m["shape"])
    return out
