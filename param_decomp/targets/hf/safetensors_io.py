"""The tensors of a Hugging Face model folder, read with safetensors' numpy API (no torch).

A folder holds one `model.safetensors`, or shards listed by `model.safetensors.index.json`
(`weight_map`: tensor name -> file), or else any `*.safetensors` files. Only the headers are
read up front (names, dtypes, shapes); `read` memory-maps a file and copies out just the block
asked for, so a device's shard of a weight is read without the rest of it (S17.5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes  # noqa: F401 (registers "bfloat16" with numpy, which safetensors' BF16 needs)
import numpy as np
from safetensors import SafetensorError, safe_open

from param_decomp.targets.hf.errors import HFCheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# Stored dtypes a target may be loaded from: floating types that convert to float32 / bfloat16.
# Integer, bool and 8-bit float tensors (quantized checkpoints) are refused.
LOADABLE_DTYPES = ("F32", "BF16", "F16")


@dataclass(frozen=True)
class StoredTensor:
    file: Path
    dtype: str  # safetensors' name: F32, BF16, F16, I8, ...
    shape: tuple[int, ...]


def _index_files(folder: Path, index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted({str(f) for f in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        reason = f"{type(err).__name__}: {err}"
        raise HFCheckpointError(index, [("weight_map", f"unreadable index ({reason})")]) from None
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        msg = f"lists {missing} but the folder has no such file(s)"
        raise HFCheckpointError(index, [("weight_map", msg)])
    return [folder / f for f in files]


def _weight_files(folder: Path) -> list[Path]:
    if (folder / INDEX_FILE).is_file():
        return _index_files(folder, folder / INDEX_FILE)
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.pt*")
        )
        hint = f" (found {other}: convert them to safetensors first)" if other else ""
        raise HFCheckpointError(folder, [("", f"no *.safetensors weight files{hint}")])
    return files


class SafetensorsFolder:
    """Name -> (file, dtype, shape) of every tensor in the folder's weight files."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.tensors: dict[str, StoredTensor] = {}
        for file in _weight_files(self.folder):
            try:
                with safe_open(str(file), framework="numpy") as f:
                    for name in f.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                        view = f.get_slice(name)
                        entry = StoredTensor(file, view.get_dtype(), tuple(view.get_shape()))
                        if name in self.tensors:
                            first = self.tensors[name].file.name
                            msg = f"stored twice, in {first} and in {file.name}"
                            raise HFCheckpointError(self.folder, [(name, msg)])
                        self.tensors[name] = entry
            except (SafetensorError, OSError) as err:
                reason = f"not a readable safetensors file ({err})"
                raise HFCheckpointError(file, [("", reason)]) from None

    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """The block `index` (one start:stop slice per axis) of tensor `name`, in its stored
        dtype; only that block is copied out of the memory-mapped file."""
        entry = self.tensors[name]
        with safe_open(str(entry.file), framework="numpy") as f:
            return np.asarray(f.get_slice(name)[index])
