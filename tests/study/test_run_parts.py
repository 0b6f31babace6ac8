"""A stopped-and-continued decomposition states its whole wall time (SPEC S18.2, S18.4): the
parts chain from step 0 to the last step, and a missing part makes the total unknown instead
of a silent undercount."""

from pathlib import Path

from param_decomp.study.paper_toys import _decomposition_time, _table_time
from param_decomp.study.run_parts import LEDGER, append_part, chain_to, forget_parts, read_parts


def test_parts_chain_from_step_zero_to_the_end(tmp_path: Path) -> None:
    append_part(tmp_path, 0, 400, 60.0)
    append_part(tmp_path, 400, 400, 5.0)  # stopped again before its first checkpoint
    append_part(tmp_path, 400, 1000, 90.0)
    with (tmp_path / LEDGER).open("a") as ledger:
        ledger.write('{"from_step": 1000, "to_')  # a write cut short by a kill
    parts = read_parts(tmp_path)
    assert len(parts) == 3
    chain = chain_to(parts, 1000)
    # the part that stopped where it started spent its time too
    assert chain is not None and [p["wall_s"] for p in chain] == [60.0, 5.0, 90.0]
    assert chain_to(parts, 400) == parts[:2]
    redone = [*parts, {"from_step": 0, "to_step": 400, "wall_s": 70.0}]
    assert [p["wall_s"] for p in chain_to(redone, 1000) or []] == [5.0, 90.0, 70.0]
    # a part without an entry (run before the ledger, or killed outright) breaks the chain
    assert chain_to([{"from_step": 400, "to_step": 1000, "wall_s": 9.0}], 1000) is None
    assert chain_to(parts, 2000) is None
    forget_parts(tmp_path)
    assert read_parts(tmp_path) == []


def test_a_continued_run_states_its_total_or_says_it_is_one_part() -> None:
    base = {"wall_s": 90.0, "resumed": True, "resumed_from_step": 400}
    whole = base | {"total_wall_s": 150.0, "parts": 2}
    assert (
        _decomposition_time(whole) == "2 min 30 s in 2 parts (the last, from step 400, 1 min 30 s)"
    )
    assert _table_time(whole) == "2 min 30 s"
    partial = base | {"total_wall_s": None, "parts": None}
    assert _decomposition_time(partial) == "1 min 30 s (resumed at step 400; this part only)"
    assert _table_time(partial) == "1 min 30 s (last part)"
    assert _decomposition_time({"wall_s": 90.0, "resumed": False}) == "1 min 30 s"
