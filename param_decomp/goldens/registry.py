"""Registry of golden families: each family evaluates one case with the project's own code.

A family evaluator maps a case (the JSON dict: name, inputs, expected, atol, rtol) to a list of
`Comparison`s, one per checked quantity. The runner compares them elementwise with
`|got - want| <= atol + rtol * |want|` using the case's tolerances.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Case = dict[str, Any]


@dataclass(frozen=True)
class Comparison:
    """One checked quantity of a case: a dotted name, our value, the reference value."""

    name: str
    got: Any
    want: Any


FamilyEvaluator = Callable[[Case], list[Comparison]]

FAMILIES: dict[str, FamilyEvaluator] = {}


def register_family(name: str) -> Callable[[FamilyEvaluator], FamilyEvaluator]:
    """Decorator: make `fn` the evaluator of golden files whose `family` is `name`."""

    def wrap(fn: FamilyEvaluator) -> FamilyEvaluator:
        FAMILIES[name] = fn
        return fn

    return wrap


def as_array(x: Any) -> np.ndarray:
    """JSON nested lists / scalars -> float64 numpy array (None stays None upstream)."""
    return np.asarray(x, dtype=np.float64)


def compare_tree(prefix: str, got: Any, want: Any) -> list[Comparison]:
    """Flatten matching nested dicts into Comparisons named by their dotted path."""
    if isinstance(want, dict):
        out: list[Comparison] = []
        for key, sub in want.items():
            out.extend(compare_tree(f"{prefix}.{key}" if prefix else key, got[key], sub))
        return out
    return [Comparison(prefix, np.asarray(got, dtype=np.float64), as_array(want))]
