"""Dotted-key overrides of a config mapping, so a grid cell names only what it changes.

`losses.importance_minimality.coeff: 1e-3` walks `losses` (a list), picks the element whose
`type` is `importance_minimality` (or, for a digit, the element at that index), and sets its
`coeff`. A value of `null` on a list element's key removes the key; `losses.<type>: null` drops
the term; `losses.<type>: {coeff: 1.0, ...}` replaces the term, or appends it when the list has
no element of that type (its `type` is the key's, so a misspelt type fails the config's own
validation, which names the known ones). Any other key that names nothing raises `KeyError`
with the path walked, so a typo fails at load time, not an hour into the grid.
"""

from __future__ import annotations

import copy
from typing import Any


def _child_index(items: list, part: str, walked: str) -> int:
    if part.isdigit():
        index = int(part)
        if index >= len(items):
            raise KeyError(f"{walked}: index {index} beyond the list's {len(items)} items")
        return index
    tags = [item.get("type") if isinstance(item, dict) else None for item in items]
    if part not in tags:
        known = [t for t in tags if t is not None]
        raise KeyError(f"{walked}: no element of type {part!r}; the list has {known}")
    return tags.index(part)


def _set_typed_element(items: list, tag: str, value: dict[str, Any]) -> None:
    element = {"type": tag} | {k: v for k, v in value.items() if k != "type"}
    tags = [item.get("type") if isinstance(item, dict) else None for item in items]
    if tag in tags:
        items[tags.index(tag)] = element
    else:
        items.append(element)


def apply_override(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `dotted` in `data` in place (module docstring)."""
    parts = dotted.split(".")
    node: Any = data
    walked = ""
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = f"{walked}.{part}" if walked else part
        if isinstance(node, list):
            if last and isinstance(value, dict) and not part.isdigit():
                _set_typed_element(node, part, value)
                return
            index = _child_index(node, part, walked or "<root>")
            if last:
                if value is None:
                    del node[index]
                else:
                    node[index] = value
                return
            node = node[index]
        elif isinstance(node, dict):
            if last:
                if value is None:
                    node.pop(part, None)
                else:
                    node[part] = value
                return
            if part not in node:
                node[part] = {}  # a new block (e.g. a density_target the base lacks)
            node = node[part]
        else:
            raise KeyError(f"{here}: {walked or '<root>'} is a value, not a mapping or list")
        walked = here


def with_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `data` with every override applied, in the order given."""
    out = copy.deepcopy(data)
    for dotted, value in overrides.items():
        apply_override(out, dotted, copy.deepcopy(value))
    return out
