"""Config errors a person can act on: the file, the dotted key, a short hint, no traceback.

pydantic's raw errors name tagged-union members (`losses.1.importance_minimality.pnormm`) and
never suggest the key that was meant; `format_validation_error` turns them into one line per
problem (`losses[1].pnormm: unknown key. Did you mean 'pnorm'? Allowed keys: ...`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

import pydantic
from pydantic import BaseModel, TypeAdapter

Loc = tuple[str | int, ...]

MAX_PROBLEMS = 15
MAX_VALUE_CHARS = 60


class ConfigError(Exception):
    """A config file is unusable; `problems` are `(dotted_key_path, message)` pairs.

    The CLI prints `str(err)` and exits 2, so the message must stand on its own.
    """

    def __init__(self, path: object, problems: Sequence[tuple[str, str]]) -> None:
        self.path = str(path)
        self.problems = [(str(key), str(msg)) for key, msg in problems]
        super().__init__(self.path, self.problems)

    def __str__(self) -> str:
        lines = [f"config error in {self.path}:"]
        shown = self.problems[:MAX_PROBLEMS]
        for key, msg in shown:
            first, *rest = msg.splitlines() or [""]
            lines.append(f"  {key}: {first}" if key else f"  {first}")
            lines.extend(f"    {line}" for line in rest)
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more")
        return "\n".join(lines)


def format_path(loc: Loc) -> str:
    """('losses', 1, 'pnorm') -> 'losses[1].pnorm'."""
    out = ""
    for seg in loc:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            out += f".{seg}" if out else str(seg)
    return out


# ----------------------------------------------------------------------------- schema walking


def _strip(tp: Any) -> tuple[Any, str | None]:
    """Drop Annotated wrappers, remembering a `discriminator=` if one is set."""
    disc = None
    while typing.get_origin(tp) is Annotated:
        for meta in tp.__metadata__:
            d = getattr(meta, "discriminator", None)
            if isinstance(d, str):
                disc = d
        tp = tp.__origin__
    return tp, disc


def _union_members(tp: Any) -> list[Any] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return None


def _fields(tp: Any) -> dict[str, Any] | None:
    """Field name -> annotation of a pydantic model or (pydantic) dataclass, else None."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    pyd = getattr(tp, "__pydantic_fields__", None)
    if isinstance(pyd, dict):
        return {name: f.annotation for name, f in pyd.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp, include_extras=True)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(tp)}
    return None


def _tags(member: Any, disc: str) -> list[str]:
    """The Literal values a union member accepts for its discriminator field."""
    fields = _fields(member) or {}
    ann, _ = _strip(fields.get(disc, Any))
    if typing.get_origin(ann) is Literal:
        return [str(a) for a in typing.get_args(ann)]
    return []


def _member_tag(member: Any) -> str | None:
    """The `Tag` of a union member chosen by a callable `Discriminator`, if it has one."""
    while typing.get_origin(member) is Annotated:
        for meta in member.__metadata__:
            if isinstance(meta, pydantic.Tag):
                return meta.tag
        member = member.__origin__
    return None


def _callable_tagged(tp: Any) -> dict[str, Any] | None:
    """{tag: member} of a union whose members carry a `Tag` (the union is chosen by a callable
    `Discriminator`, and pydantic puts the tag in the error loc); an optional one is looked
    into. None otherwise."""
    tp, _ = _strip(tp)
    members = _union_members(tp)
    if members is None:
        return None
    tagged = {tag: m for m in members if (tag := _member_tag(m)) is not None}
    if not tagged and len(members) == 1:
        return _callable_tagged(members[0])
    return tagged or None


def _tagged_members(tp: Any) -> tuple[str, dict[str, Any]] | None:
    """For a discriminated union: (discriminator, {tag: member}); None for other types."""
    by_callable = _callable_tagged(tp)
    if by_callable is not None:
        return "", by_callable
    tp, disc = _strip(tp)
    members = _union_members(tp)
    if not members or len(members) < 2 and disc is None:
        return None
    disc = disc or "type"
    by_tag = {tag: m for m in members for tag in _tags(m, disc)}
    return (disc, by_tag) if by_tag else None


def _root_type(root: type | TypeAdapter | None) -> Any:
    if isinstance(root, TypeAdapter):
        return getattr(root, "_type", None)
    return root


def _step(tp: Any, seg: str | int) -> tuple[Any, bool]:
    """Follow one loc segment: (child type or None, whether seg was a union tag)."""
    if tp is None:
        return None, False
    tagged = _tagged_members(tp)
    if tagged is not None and isinstance(seg, str) and seg in tagged[1]:
        return tagged[1][seg], True
    tp, _ = _strip(tp)
    members = _union_members(tp)
    if members is not None:
        if len(members) != 1:
            return None, False
        tp, _ = _strip(members[0])
    fields = _fields(tp)
    if fields is not None:
        return (fields.get(seg) if isinstance(seg, str) else None), False
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, set, frozenset, Sequence) and isinstance(seg, int):
        return (args[0] if args else None), False
    if origin is tuple and isinstance(seg, int) and args:
        homogeneous = len(args) == 2 and args[1] is Ellipsis
        return (args[0] if homogeneous else args[min(seg, len(args) - 1)]), False
    if origin is dict and args:
        return args[1], False
    return None, False


def _is_input_tag(data: Any, seg: str | int) -> bool:
    """Input-side check: the mapping at this level says `type: <seg>` and has no key `seg`."""
    if not (isinstance(seg, str) and isinstance(data, dict)):
        return False
    return data.get("type") == seg and seg not in data


def _child_data(data: Any, seg: str | int) -> Any:
    if isinstance(data, dict) and isinstance(seg, str):
        return data.get(seg)
    if isinstance(data, list) and isinstance(seg, int) and 0 <= seg < len(data):
        return data[seg]
    return None


def _walk(root: Any, loc: Loc, data: Any = None) -> tuple[Loc, Any]:
    """Drop tagged-union segments from `loc`; also return the type the full loc points at."""
    clean: list[str | int] = []
    tp = root
    for seg in loc:
        child, is_tag = _step(tp, seg)
        if is_tag or (child is None and _is_input_tag(data, seg)):
            tp = child
            continue
        clean.append(seg)
        tp = child
        data = _child_data(data, seg)
    return tuple(clean), tp


def allowed_keys(root: type | TypeAdapter | None, loc: Loc) -> list[str] | None:
    """The keys a block accepts, found by walking the schema along `loc` (raw pydantic loc)."""
    _, tp = _walk(_root_type(root), loc)
    tp, _ = _strip(tp) if tp is not None else (None, None)
    members = _union_members(tp)
    if members is not None and len(members) == 1:
        tp, _ = _strip(members[0])
    fields = _fields(tp)
    return list(fields) if fields is not None else None


# ----------------------------------------------------------------------------- messages


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _quoted_list(text: str) -> list[str]:
    """Parse pydantic's ctx formatting: "'a', 'b'" -> ['a', 'b']."""
    return re.findall(r"'([^']*)'", text)


def _message(err: Any, raw_loc: Loc, root: Any) -> tuple[Loc, str]:
    """One pydantic error -> (extra loc segments to append, message)."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        key = str(raw_loc[-1]) if raw_loc else ""
        keys = allowed_keys(root, raw_loc[:-1])
        if keys is None:
            return (), "unknown key."
        return (), f"unknown key.{_did_you_mean(key, keys)} Allowed keys: {', '.join(keys)}"
    if kind == "union_tag_invalid":
        disc = (_quoted_list(str(ctx.get("discriminator", ""))) or ["type"])[0]
        tags = _quoted_list(str(ctx.get("expected_tags", "")))
        tag = str(ctx.get("tag", ""))
        return (disc,), (
            f"unknown {disc} {tag!r}.{_did_you_mean(tag, tags)} Expected one of: {', '.join(tags)}"
        )
    if kind == "union_tag_not_found":
        disc = (_quoted_list(str(ctx.get("discriminator", ""))) or ["type"])[0]
        _, tp = _walk(root, raw_loc)
        tagged = _tagged_members(tp) if tp is not None else None
        hint = f" (one of: {', '.join(tagged[1])})" if tagged else ""
        return (disc,), f"required key missing{hint}"
    if kind == "missing":
        return (), "required key missing"
    if kind in ("model_type", "model_attributes_type", "dict_type", "dataclass_type"):
        return (), f"expected a block of `key: value` entries, got {_short(value)}"
    if kind in ("value_error", "assertion_error"):
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return (), msg
    msg = str(err["msg"])
    if msg[:1].isupper() and not msg[1:2].isupper():  # "Input should ..." -> "input should ..."
        msg = msg[0].lower() + msg[1:]
    return (), f"{msg}, got {_short(value)}"


def format_validation_error(
    exc: pydantic.ValidationError,
    root: type | TypeAdapter | None,
    prefix: Loc = (),
    data: Any = None,
) -> list[tuple[str, str]]:
    """Translate pydantic errors into `(dotted_key_path, message)` lines.

    `root` is the type (or TypeAdapter) that was validated; it is walked to drop the
    tagged-union member names pydantic puts in locs and to list a block's allowed keys.
    `data`, the validated input, is an optional fallback for spotting tag segments.
    `prefix` is prepended to every path (e.g. `('losses',)` for the loss list).
    """
    root_tp = _root_type(root)
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        raw_loc: Loc = tuple(err["loc"])
        clean, _ = _walk(root_tp, raw_loc, data)
        extra, msg = _message(err, raw_loc, root_tp)
        key = format_path(tuple(prefix) + clean + extra)
        if (key, msg) not in problems:
            problems.append((key, msg))
    return problems
