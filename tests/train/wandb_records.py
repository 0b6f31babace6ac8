"""Reads back what an offline wandb run recorded, for the logging tests (SPEC S11.7).

An offline run keeps everything in `run-<id>.wandb`: a header (`:W&B`, magic 0xBEE1, version)
and then 32 KiB blocks of chunks, each `crc32 (4) | length (2) | type (1) | payload`, type 1 a
whole record and 2/3/4 the first/middle/last piece of one; a block tail shorter than a chunk
header is zero padding. Each record is a `wandb_internal_pb2.Record` protobuf. wandb 0.31
ships no Python reader of this file, so the tests parse it here.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """The records of one offline run folder (`offline-run-<time>-<id>`)."""

    folder: Path
    run: Any = None
    history: dict[int, dict[str, Any]] = field(default_factory=dict)
    exit_code: int | None = None

    @property
    def files(self) -> Path:
        return self.folder / "files"


def _records(data: bytes, path: Path) -> tuple[list[Any], bool]:
    """The whole records of `data` and whether it ended cleanly (False: the service was still
    writing, and a last chunk or record is cut short)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    if len(data) < HEADER.size:
        return [], False
    ident, magic, _ = HEADER.unpack_from(data)
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a wandb run file"
    records, pieces, pos = [], b"", HEADER.size
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:
            pos += left
            continue
        _, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        if pos + CHUNK.size + length > len(data):
            return records, False
        pieces += data[pos + CHUNK.size : pos + CHUNK.size + length]
        pos += CHUNK.size + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(pieces)
            except DecodeError:
                return records, False
            records.append(record)
            pieces = b""
    return records, not pieces


def read_offline_run(folder: Path, wait_s: float = 30.0, settle_s: float = 2.0) -> OfflineRun:
    """History rows by step (keys as logged; an image's fields as `<key>/<field>`), the run
    record (id, name, tags, config) and the exit code.

    wandb's service writes the file on its own schedule and has been seen, on a loaded machine,
    to have written only part of it when `finish()` returned (no run record yet; a last record
    cut mid-write). The file is re-read until it holds its exit record, or until it ends cleanly
    with a run record and has not grown for `settle_s` (up to `wait_s` in all)."""
    (path,) = folder.glob("run-*.wandb")
    deadline = time.monotonic() + wait_s
    last_size, stable_since = -1, time.monotonic()
    while True:
        data = path.read_bytes()
        records, clean = _records(data, path)
        run = _run_of(folder, records)
        now = time.monotonic()
        if len(data) != last_size:
            last_size, stable_since = len(data), now
        if clean and run.run is not None:
            if run.exit_code is not None or now - stable_since >= settle_s:
                return run
        if now > deadline:
            assert clean, f"{path} still ends mid-record after {wait_s} s"
            return run
        time.sleep(0.2)


def _run_of(folder: Path, records: list[Any]) -> OfflineRun:
    run = OfflineRun(folder)
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run = record.run
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        elif kind == "history":
            row = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            }
            run.history[record.history.step.num] = row
    return run


def run_config(run: OfflineRun) -> dict[str, Any]:
    """The config the run was started with (wandb's own `_wandb` entry left out)."""
    updates = run.run.config.update
    items = {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates}
    items.pop("_wandb", None)
    return items


def offline_runs(wandb_dir: Path, run_id: str) -> list[Path]:
    """Every offline folder of `run_id` under `wandb_dir` (a resumed run adds one per start)."""
    return sorted(wandb_dir.glob(f"wandb/offline-run-*-{run_id}"))
