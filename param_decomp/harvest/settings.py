"""What a harvest is asked for (`param-decomp harvest` options), checked before anything runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Split = Literal["train", "val"]


@dataclass(frozen=True)
class HarvestSettings:
    """`batch_size` and `seed` default (None) to the run's `train.batch_size` and `seed`."""

    tokens: int = 1_000_000
    split: Split = "train"
    top_k: int = 20
    context: int = 16
    reservoir: int = 20
    coact_top: int = 20
    top_tokens: int = 20  # input and output tokens kept per component (each ranking)
    batch_size: int | None = None
    seed: int | None = None

    def problems(self) -> list[str]:
        """Why these settings cannot run (empty when they can)."""
        out = []
        if self.split not in ("train", "val"):
            out.append(f"split must be train or val, got {self.split!r}")
        for name in ("tokens", "top_k", "coact_top", "top_tokens"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("context", "reservoir"):
            if getattr(self, name) < 0:
                out.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            out.append(f"batch_size must be at least 1, got {self.batch_size}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AblationSettings:
    """`param-decomp ablate` options; `batch_size` (ablations per batch) defaults (None) to the
    harvest's batch size."""

    contexts: int = 4  # ablated per component from each sample (reservoir, top contexts)
    top_tokens: int = 10  # tokens kept per component and sample, each direction
    batch_size: int | None = None

    def problems(self) -> list[str]:
        """Why these settings cannot run (empty when they can)."""
        out = []
        for name in ("contexts", "top_tokens"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            out.append(f"batch_size must be at least 1, got {self.batch_size}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
