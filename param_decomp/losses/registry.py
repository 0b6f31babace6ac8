"""Registry of loss-term types: adding a term is one file plus `@register_term` (and its import
in the package `__init__`). One-way: the term modules import this file, never the reverse."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

TERM_TYPES: dict[str, type] = {}


def register_term(cls: type) -> type:
    """Register a term dataclass under the default of its `type` field (its YAML tag)."""
    tag = cls.__dataclass_fields__["type"].default
    if tag in TERM_TYPES:
        raise ValueError(f"loss type {tag!r} registered twice")
    TERM_TYPES[tag] = cls
    return cls


def loss_list_adapter() -> TypeAdapter[Any]:
    """Validator for the YAML `losses:` list: a union tagged by `type` over registered terms
    (every built-in one: the package's `__init__` imported their modules before this one)."""
    union = Union[tuple(TERM_TYPES.values())]  # noqa: UP007
    return TypeAdapter(list[Annotated[union, Field(discriminator="type")]])
