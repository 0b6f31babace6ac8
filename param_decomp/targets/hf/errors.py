"""The errors of Hugging Face folders: one that cannot become a target (S17.6), and a run
that cannot be exported as one (S17.8)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

MAX_SHOWN = 15


class HFCheckpointError(ValueError):
    """`path` (the folder, config.json or a .safetensors file) cannot be loaded; `problems` are
    (tensor name or config.json key, message) pairs. The CLI prints it and exits 2."""

    def __init__(self, path: str | Path, problems: Sequence[tuple[str, str]]) -> None:
        self.path = str(path)
        self.problems = [(str(key), str(msg)) for key, msg in problems]
        super().__init__(self.path, self.problems)

    def __str__(self) -> str:
        lines = [f"cannot load the Hugging Face checkpoint {self.path}:"]
        shown = self.problems[:MAX_SHOWN]
        lines += [f"  {key}: {msg}" if key else f"  {msg}" for key, msg in shown]
        if len(self.problems) > MAX_SHOWN:
            lines.append(f"  ... and {len(self.problems) - MAX_SHOWN} more")
        return "\n".join(lines)


class HFExportError(ValueError):
    """A run cannot be written as a Hugging Face folder: `path` (the run's config or the
    output folder) and (config key, message) problems. The CLI prints it and exits 2."""

    def __init__(self, path: str | Path, problems: Sequence[tuple[str, str]]) -> None:
        self.path = str(path)
        self.problems = [(str(key), str(msg)) for key, msg in problems]
        super().__init__(self.path, self.problems)

    def __str__(self) -> str:
        lines = [f"cannot export to Hugging Face format ({self.path}):"]
        lines += [f"  {key}: {msg}" if key else f"  {msg}" for key, msg in self.problems]
        return "\n".join(lines)
