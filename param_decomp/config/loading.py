"""Read and validate config YAML; every problem becomes a ConfigError naming file and key.

All checks that can fail on the config alone (schema, target file, mesh vs. device count) run
here, before anything is built or compiled; a decompose config's `losses:` list is validated
against the loss registry one floor above the losses (`runconfig/decompose.py`).

SPEC S11.3: whatever the file holds (binary junk, invalid UTF-8, YAML bombs, deep nesting, huge
numbers, `.inf`), a loader returns a validated config or raises ConfigError naming the file,
never another exception, and writes nothing to disk.
"""

from __future__ import annotations

import functools
import math
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

from param_decomp.config.errors import ConfigError, format_path, format_validation_error
from param_decomp.config.schema import (
    DecomposeConfig,
    HFTokenizerSpec,
    Mesh,
    TargetConfig,
    TextData,
)

# Limits on what a config file may hold; real configs are a few KB, four levels deep.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 50
MAX_VALUES = 100_000  # after expanding YAML aliases (`*name`): stops "billion laughs" files
MAX_INT_BITS = 3322  # about 1000 decimal digits; 10**100 is fine

# Exceptions PyYAML's constructors raise on a malformed scalar instead of a YAMLError:
# `2020-13-45` (a timestamp, ValueError), `!!bool maybe` (KeyError), `!!timestamp x`
# (AttributeError), `!!int 1e5` (ValueError), an int past Python's digit limit (ValueError).
_CONSTRUCT_ERRORS = (ValueError, KeyError, AttributeError, TypeError, OverflowError, IndexError)

# What asking whether a path named in a config is a file can raise instead of answering: a name
# too long (OSError ENAMETOOLONG), a folder that may not be entered (PermissionError), `~user` of
# an unknown user (RuntimeError from Path.expanduser).
PATH_CHECK_ERRORS = (OSError, RuntimeError)

UNEXPECTED_ERROR = "unexpected error while checking this config (a param-decomp bug; please report)"


def short_repr(value: Any, limit: int = 60) -> str:
    """repr cut to `limit` characters (never fails: a huge int's repr can raise ValueError)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def path_check_problem(value: str, err: BaseException) -> str:
    """Message for a PATH_CHECK_ERRORS error raised while looking for the file `value`."""
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return f"cannot look for file {short_repr(value)}: {reason}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: YAML would silently keep only the last one.

    A scalar its constructor cannot convert becomes a ConstructorError with its line, like any
    other YAML problem, instead of a bare ValueError / KeyError.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except _CONSTRUCT_ERRORS as err:
            kind = str(node.tag).rsplit(":", 1)[-1]
            value = node.value if isinstance(node, yaml.ScalarNode) else f"<{node.id}>"
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{short_repr(value, 40)} is not a valid {kind} ({type(err).__name__}: "
                f"{str(err)[:80]}); quote it to make it a string",
                node.start_mark,
            ) from None


def find_beside(given: str, config_path: Path, folder: bool = False) -> Path | None:
    """How a config names another file (or, with `folder`, a folder): relative to the working
    directory first, then to the config's own folder, so a config runs from the repo root and
    from beside itself. None when neither exists.

    Raises one of PATH_CHECK_ERRORS when a candidate cannot even be looked at.
    """
    path = Path(given).expanduser()
    candidates = [path] if path.is_absolute() else [path, Path(config_path).parent / path]
    for candidate in candidates:
        if candidate.is_dir() if folder else candidate.is_file():
            return candidate.resolve()
    return None


def not_found_problem(given: str, config_path: Path, folder: bool = False) -> str:
    where = str(Path(config_path).parent) or "."
    kind = "folder" if folder else "file"
    return (
        f"{kind} {short_repr(given, 200)} not found (looked in the working directory "
        f"and in {where}/)"
    )


def require_beside(
    given: str, config_path: Path, key: str, error_path: Path, folder: bool = False
) -> Path:
    """`find_beside`, or a ConfigError naming `error_path` and `key`."""
    try:
        found = find_beside(given, config_path, folder)
    except PATH_CHECK_ERRORS as err:
        raise ConfigError(error_path, [(key, path_check_problem(given, err))]) from None
    if found is None:
        raise ConfigError(error_path, [(key, not_found_problem(given, config_path, folder))])
    return found


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict:
    """Explicit keys must be unique; keys brought in by a `<<:` merge may be overridden."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark.line + 1)
        except TypeError:  # unhashable key: the normal constructor reports it
            break
        if first != key_node.start_mark.line + 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first})", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """'line L, column C: problem (while parsing X that starts at line K)' from PyYAML's marks."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None:
        problem += f" ({context} that starts at line {context_mark.line + 1})"
    elif context:
        problem += f" ({context})"
    if mark is not None:
        return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"YAML syntax error: {problem}"


def _read_text(path: Path) -> str:
    """The file as text; a missing, special, huge, unreadable or non-UTF-8 file is a ConfigError.

    Only a regular file is opened (a FIFO or device would block or never end).
    """
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(path, [("", "is a folder, not a YAML file")])
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(path, [("", "cannot read file: not a regular file")])
        if info.st_size > MAX_FILE_BYTES:
            msg = f"cannot read file: {info.st_size} bytes; a config may hold {MAX_FILE_BYTES}"
            raise ConfigError(path, [("", msg)])
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, [("", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError(path, [("", "is a folder, not a YAML file")]) from None
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(path, [("", f"cannot read file: {reason}")]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        msg = f"cannot read file: not UTF-8 text (byte {raw[err.start]:#04x} on line {line})"
        raise ConfigError(path, [("", msg)]) from None


def _shape_problem(data: Any) -> tuple[str, str] | None:
    """(key, message) when the parsed YAML is too deep, too big once aliases are expanded,
    refers to itself (`&a [*a]`) or holds an integer too long to print; else None."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()

    class Bad(Exception):
        def __init__(self, loc: tuple[Any, ...], msg: str) -> None:
            self.loc, self.msg = loc, msg

    def size(obj: Any, loc: tuple[Any, ...]) -> int:
        if isinstance(obj, int) and not isinstance(obj, bool):
            if obj.bit_length() > MAX_INT_BITS:
                raise Bad(loc, "integer has more than 1000 digits")
            return 1
        if isinstance(obj, dict):
            items: list[tuple[Any, Any]] = [(k, k) for k in obj] + list(obj.items())
        elif isinstance(obj, list):
            items = list(enumerate(obj))
        else:
            return 1
        if len(loc) >= MAX_DEPTH:
            raise Bad(loc, f"nested more than {MAX_DEPTH} levels deep")
        if id(obj) in open_ids:
            raise Bad(loc, "a YAML alias refers to a block that contains it")
        if id(obj) not in sizes:
            open_ids.add(id(obj))
            total = 1
            for seg, child in items:
                child_loc = (*loc, seg if isinstance(seg, int | str) else short_repr(seg, 20))
                total += size(child, child_loc)
                if total > MAX_VALUES:
                    raise Bad((), f"more than {MAX_VALUES} values once YAML aliases are expanded")
            open_ids.discard(id(obj))
            sizes[id(obj)] = total
        return sizes[id(obj)]

    try:
        size(data, ())
    except Bad as bad:
        return format_path(bad.loc), bad.msg
    return None


_BRACKETS = re.compile(r"[^\[\]{}]")


def _flow_nesting_too_deep(text: str) -> bool:
    """Flow brackets opened 8 x MAX_DEPTH deep: PyYAML's scanner is quadratic in the depth
    (about 1.5 s of CPU before its recursion limit at ~490 levels), so a bracket bomb is refused
    before it is parsed. Brackets inside strings count too; no config holds 400 of them open."""
    depth = 0
    for ch in _BRACKETS.sub("", text):
        depth = depth + 1 if ch in "[{" else max(depth - 1, 0)
        if depth > 8 * MAX_DEPTH:
            return True
    return False


def read_yaml(path: str | Path) -> dict:
    """The file's top-level mapping; unreadable file, bad YAML or a non-mapping is a ConfigError."""
    path = Path(path)
    text = _read_text(path)
    too_deep = f"YAML nested too deeply (a config may nest {MAX_DEPTH} levels)"
    if _flow_nesting_too_deep(text):
        raise ConfigError(path, [("", too_deep)])
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ConfigError(path, [("", _yaml_problem(err))]) from None
    except RecursionError:
        raise ConfigError(path, [("", too_deep)]) from None
    problem = _shape_problem(data)
    if problem is not None:
        raise ConfigError(path, [problem])
    if data is None:
        raise ConfigError(path, [("", "file is empty; expected a mapping of `key: value` entries")])
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(
            path, [("", f"top level must be a mapping of `key: value` entries, got a {kind}")]
        )
    return data


# ----------------------------------------------------------------------------- boundary

LoadedConfig = TypeVar("LoadedConfig")


def config_boundary(
    load: Callable[[str | Path], LoadedConfig],
) -> Callable[[str | Path], LoadedConfig]:
    """Last-resort guard of a public loader (S11.3): an exception the specific handlers missed
    still ends as a ConfigError naming the file. The original is chained (`__cause__`) and the
    message says it is a bug; tests/config/test_config_fuzz.py asserts it never fires."""

    @functools.wraps(load)
    def guarded(path: str | Path) -> LoadedConfig:
        try:
            return load(path)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 (last resort; the cause stays chained)
            detail = f"{type(err).__name__}: {str(err)[:200]}"
            raise ConfigError(path, [("", f"{UNEXPECTED_ERROR} ({detail})")]) from err

    return guarded


# ----------------------------------------------------------------------------- targets


def _target_from_data(data: dict, path: str | Path) -> TargetConfig:
    try:
        return TargetConfig.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(path, format_validation_error(err, TargetConfig, data=data)) from None


@config_boundary
def load_target_config(path: str | Path) -> TargetConfig:
    """Validated `train-target` config."""
    return _target_from_data(read_yaml(path), path)


# ----------------------------------------------------------------------------- hf targets


def with_folder_tokenizer(data: TextData | None, folder: Path) -> TextData | None:
    """S17.1: an hf target's folder that holds a tokenizer.json tokenizes its text, unless the
    `data:` block names a tokenizer itself."""
    if (data is not None and "tokenizer" in data.model_fields_set) or not (
        folder / "tokenizer.json"
    ).is_file():
        return data
    spec = HFTokenizerSpec(kind="hf", path=str(folder))
    return (data or TextData()).model_copy(update={"tokenizer": spec})


# ----------------------------------------------------------------------------- mesh


def resolve_mesh_shape(mesh: Mesh, n_devices: int) -> dict[str, int]:
    """Axis sizes with `data: -1` resolved to the devices fsdp and tensor leave (at least 1),
    of the devices the run uses: `mesh.devices` of the `n_devices` visible, or all of them."""
    n_devices = mesh.devices or n_devices
    other = mesh.fsdp * mesh.tensor
    data = mesh.data if mesh.data != -1 else max(n_devices // other, 1)
    return {"data": data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}


def mesh_problems(
    mesh: Mesh, n_devices: int, batches: tuple[tuple[str, int], ...], Cs: tuple[int, ...] = ()
) -> list[tuple[str, str]]:
    """S13.1 as (dotted key, message): mesh product = devices, every batch % (data*fsdp),
    every site's C % tensor (when the job has sites)."""
    shape = resolve_mesh_shape(mesh, n_devices)
    problems: list[tuple[str, str]] = []
    if mesh.devices and mesh.devices > n_devices:
        msg = f"{mesh.devices} devices asked for, but {n_devices} are visible"
        return [("mesh.devices", msg)]
    n_devices = mesh.devices or n_devices
    product = math.prod(shape.values())
    if product != n_devices:
        sizes = " x ".join(f"{axis} {size}" for axis, size in shape.items())
        hint = (
            f"; fsdp x tensor = {mesh.fsdp * mesh.tensor} must divide the device count"
            if mesh.data == -1
            else "; set data: -1 to use the remaining devices"
        )
        uses = f"mesh.devices is {n_devices}" if mesh.devices else f"{n_devices} are visible"
        problems.append(("mesh", f"{sizes} = {product} devices, but {uses}{hint}"))
    batch_shards = shape["data"] * shape["fsdp"]
    for key, size in batches:
        if size % batch_shards:
            problems.append(
                (key, f"{size} is not divisible by data x fsdp = {batch_shards} (the batch shards)")
            )
    for C in sorted(set(Cs)):
        if C % shape["tensor"]:
            msg = f"{C} is not divisible by the tensor axis size {shape['tensor']}"
            problems.append(("decomposition.C", msg))
    return problems


def micro_batch_problems(
    mesh: Mesh, n_devices: int, batch_size: int, micro_batches: int
) -> list[tuple[str, str]]:
    """S10.4: every micro-batch still splits over the batch shards, so train.batch_size must be
    divisible by micro_batches x data x fsdp."""
    shape = resolve_mesh_shape(mesh, n_devices)
    shards = shape["data"] * shape["fsdp"]
    if micro_batches == 1 or batch_size % (micro_batches * shards) == 0:
        return []
    msg = (
        f"{micro_batches} micro-batches of train.batch_size {batch_size}: the batch size must be "
        f"divisible by micro_batches x data x fsdp = {micro_batches} x {shards} = "
        f"{micro_batches * shards} (each micro-batch splits over the batch shards)"
    )
    return [("train.micro_batches", msg)]


def check_mesh(
    cfg: DecomposeConfig, n_devices: int, file: str | Path, n_processes: int = 1
) -> None:
    """S13.1, before any compile: mesh product = devices, batch % (data*fsdp), C % tensor;
    S10.4: batch % (micro_batches*data*fsdp)."""
    batches = (("train.batch_size", cfg.train.batch_size), ("eval.batch_size", cfg.eval.batch_size))
    problems = mesh_problems(cfg.mesh, n_devices, batches, tuple(cfg.decomposition.all_C()))
    train = cfg.train
    problems += micro_batch_problems(cfg.mesh, n_devices, train.batch_size, train.micro_batches)
    if cfg.mesh.devices is not None and n_processes > 1:
        msg = "a subset of the devices needs a single process (every process holds its share)"
        problems.append(("mesh.devices", msg))
    if problems:
        raise ConfigError(file, problems)
