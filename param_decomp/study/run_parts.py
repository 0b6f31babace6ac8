"""The wall time of a decomposition that was stopped and continued. Each part `reproduce` runs
appends its steps and wall time to the run folder's ledger, so the record can state the whole
run's time and not only its last part's (S18.2). A part that left no entry (killed outright, or
run before the ledger existed) breaks the chain, and then only the last part's time is known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LEDGER = "wall_parts.jsonl"


def append_part(run_dir: Path, from_step: int, to_step: int, wall_s: float) -> None:
    """Record that one invocation took the run from `from_step` to `to_step` in `wall_s`."""
    entry = {"from_step": int(from_step), "to_step": int(to_step), "wall_s": float(wall_s)}
    with (Path(run_dir) / LEDGER).open("a") as ledger:
        ledger.write(json.dumps(entry) + "\n")


def forget_parts(run_dir: Path) -> None:
    """A run started over: the earlier parts are not this run's."""
    (Path(run_dir) / LEDGER).unlink(missing_ok=True)


def read_parts(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / LEDGER
    if not path.is_file():
        return []
    parts = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            parts.append({k: entry[k] for k in ("from_step", "to_step", "wall_s")})
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut short by a kill mid-write carries no part
    return parts


def chain_to(parts: list[dict[str, Any]], final_step: int) -> list[dict[str, Any]] | None:
    """The parts (in ledger order) that make up the run from step 0 to `final_step`: a chain of
    parts that each moved it on, plus those that stopped where they started (their time was
    spent too) at a step on that chain; None where a part of the chain is missing. Where two
    parts end at the same step (one was redone), the later counts."""
    ending_at = {p["to_step"]: p for p in parts if p["to_step"] > p["from_step"]}
    chain, step = [], final_step
    while step > 0:
        part = ending_at.get(step)
        if part is None:
            return None
        chain.append(part)
        step = part["from_step"]
    chained = {id(p) for p in chain}
    on_chain = {0, *(p["to_step"] for p in chain)}
    stalled = [p for p in parts if p["from_step"] == p["to_step"] and p["to_step"] in on_chain]
    return [p for p in parts if id(p) in chained or p in stalled]
