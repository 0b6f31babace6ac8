"""S11.3: a hostile config file ends in a ConfigError naming the file, never another exception,
and loading it writes nothing to disk; `run_name` is a plain folder name (S11.3).

Property tests (hypothesis, derandomized so every run sees the same examples) mutate the valid
decompose, target and pretrain fixtures (delete keys, add unknown keys, swap values for other
types, huge / negative / non-finite numbers, unicode, nested junk, raw YAML the constructors
choke on, YAML bombs, hostile strings where a file or folder is named) and corrupt their text
(random bytes, random text, tabs, duplicated lines, truncation). Each file is loaded from an
empty temporary folder that is also the working directory: the loader must return a validated
config (whose run_name is one plain folder name) or raise ConfigError, and the folder must hold
only the config afterwards. The explicit tests pin each case that once escaped the loaders as
another exception (ValueError, KeyError, AttributeError, RecursionError, OSError, RuntimeError,
OverflowError) or hung (a FIFO, an alias bomb).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from param_decomp.config.errors import ConfigError
from param_decomp.config.loading import MAX_DEPTH, UNEXPECTED_ERROR, load_target_config, read_yaml
from param_decomp.config.pretrain_schema import PretrainConfig, load_pretrain_config
from param_decomp.config.schema import RUN_NAME_MAX_CHARS, DecomposeConfig, TargetConfig
from param_decomp.runconfig.any_config import load_any_config
from param_decomp.runconfig.decompose import load_decompose_config

HERE = Path(__file__).resolve().parent
TARGET_YAML = HERE / "fixtures" / "target.yaml"
DECOMPOSE_YAML = HERE / "fixtures" / "valid_decompose.yaml"
PRETRAIN_YAML = HERE.parent / "fixtures" / "llama_micro_target.yaml"

Loader = Callable[[str | Path], Any]
ANY_KIND = (DecomposeConfig, TargetConfig, PretrainConfig)


def _decompose_base() -> dict:
    data = read_yaml(DECOMPOSE_YAML)
    data["target"] = str(TARGET_YAML)  # absolute: the temporary folder holds only the config
    return data


# kind -> (valid data, its loader, the type it returns)
BASES: dict[str, tuple[dict, Loader, type]] = {
    "decompose": (_decompose_base(), load_decompose_config, DecomposeConfig),
    "target": (read_yaml(TARGET_YAML), load_target_config, TargetConfig),
    "pretrain": (read_yaml(PRETRAIN_YAML), load_pretrain_config, PretrainConfig),
}
KINDS = sorted(BASES)

# Fuzz budget (600 generated files in all): mutated configs, corrupted text, random bytes/text.
N_MUTATED = 300
N_TEXT = 200
N_BYTES = 100
FUZZ = {"deadline": None, "derandomize": True, "database": None, "print_blob": True}
FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


# ----------------------------------------------------------------------------- harness


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@contextlib.contextmanager
def _sandbox() -> Iterator[tuple[Path, Path]]:
    """(config folder, working directory), both empty, under one temporary root."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "cfg").mkdir()
        (root / "cwd").mkdir()
        with contextlib.chdir(root / "cwd"):
            yield root / "cfg", root / "cwd"


def _assert_config_error(err: ConfigError, path: Path) -> None:
    text = str(err)
    assert err.path == str(path)
    assert text.splitlines()[0] == f"config error in {path}:", text
    assert err.problems, text
    assert UNEXPECTED_ERROR not in text, f"last-resort guard fired:\n{text}\n{err.__cause__!r}"
    assert "Traceback" not in text


def check_load(loader: Loader, expected: type | tuple[type, ...], payload: bytes) -> Any:
    """Load `payload` from a fresh folder; returns the config or the ConfigError.

    Anything else raised fails the test, and so does any file the load leaves behind.
    """
    with _sandbox() as (folder, cwd):
        path = folder / "config.yaml"
        path.write_bytes(payload)
        before = _files(folder.parent)
        try:
            result = loader(path)
        except ConfigError as err:
            _assert_config_error(err, path)
            result = err
        else:
            assert isinstance(result, expected), type(result)
            name = result.run_name  # one plain folder name: nothing can land outside --runs-dir
            assert Path(name).name == name and name not in (".", "..") and "\\" not in name
        assert _files(folder.parent) == before, "loading created files"
        assert not any(cwd.iterdir())
    return result


def _dump(data: Any) -> bytes:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False).encode("utf-8")


def _expect_error(loader: Loader, payload: bytes, key: str | None, *hints: str) -> ConfigError:
    result = check_load(loader, ANY_KIND, payload)
    assert isinstance(result, ConfigError), f"loaded: {payload[:200]!r}"
    text = str(result)
    if key is not None:
        assert key in [k for k, _ in result.problems], text
    for hint in hints:
        assert hint in text, (hint, text)
    return result


# ----------------------------------------------------------------------------- strategies

HUGE = [10**100, -(10**100), 10**400, 2**63, -(2**63) - 1, 1e308, -1e308, 5e-324]
HOSTILE_STRINGS = [
    "",
    ".",
    "..",
    "../../escape",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "C:\\x",
    "~no_such_user_pd/x",
    "x" * 5000,
    "\x00",
    "a\nb",
    "1e400",
    "-1e400",
    "inf",
    "nan",
    "-1",
    "2020-13-45",
    "\ud800",
    "ℌ𝔢𝔩𝔩𝔬",
    "<<",
    "*alias",
    "&anchor",
    "{",
    "\u202e",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE),
    st.floats(),
    st.sampled_from([math.inf, -math.inf, math.nan, 0.0, -0.0]),
    st.text(max_size=12),
    st.sampled_from(HOSTILE_STRINGS),
)
keys = st.one_of(st.text(max_size=10), st.sampled_from(HOSTILE_STRINGS[:8]), st.integers(-3, 3))
junk = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=4),
    max_leaves=10,
)


def _locs(data: Any, loc: tuple = ()) -> Iterator[tuple]:
    yield loc
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _locs(value, (*loc, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _locs(value, (*loc, i))


def _at(data: Any, loc: tuple) -> Any:
    for seg in loc:
        data = data[seg]
    return data


def _flow_bomb(levels: int) -> str:
    """`[&l0 [1, ...], &l1 [*l0, ...], ...]`: 10**levels values once the aliases are expanded."""
    parts = ["&l0 [" + ", ".join(["1"] * 10) + "]"]
    parts += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


# YAML text put in place of a value (through a placeholder, so it is not quoted on dumping):
# the scalars PyYAML's constructors choke on, aliases, bombs, nesting, huge and non-finite numbers.
RAW_SNIPPETS = [
    "2020-13-45",
    "2020-01-01 25:61:61",
    "!!bool maybe",
    "!!timestamp x",
    "!!int 1e5",
    "!!float x",
    "!!binary a",
    "!!set [a]",
    "!!omap 1",
    "!!python/name:os.system",
    "!nonstandard x",
    "9" * 5000,
    "0x" + "f" * 5000,
    "1.0e+400",
    "-.inf",
    ".nan",
    "&self [*self]",
    "*undefined",
    "[" * 300 + "]" * 300,
    "[" * 3000,
    "{a: 1, a: 2}",
    "{<<: 1}",
    "? [a]",
    '"\\ud800"',
    '"\\0"',
    '"\\x7f"',
    "\t1",
    "|\n  block",
    _flow_bomb(7),
]

# Keys whose value names a file or folder: hostile strings land there on purpose.
PATH_KEYS = {
    "decompose": [("run_name",), ("target",)],
    "target": [("run_name",)],
    "pretrain": [("run_name",), ("data", "corpus"), ("data", "tokenizer", "model")],
}


def _set(data: dict, loc: tuple, value: Any) -> None:
    node = data
    for seg in loc[:-1]:
        if not isinstance(node.get(seg), dict):
            node[seg] = {"kind": "sentencepiece"} if seg == "tokenizer" else {}
        node = node[seg]
    node[loc[-1]] = value


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> bytes:
    """The `kind` base after 1 to 3 edits, each at a random key of any depth, as YAML bytes."""
    data: Any = copy.deepcopy(BASES[kind][0])
    raws: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "replace", "delete", "add", "wrap", "raw", "path"]))
        if op == "path" and isinstance(data, dict):
            _set(
                data, draw(st.sampled_from(PATH_KEYS[kind])), draw(st.sampled_from(HOSTILE_STRINGS))
            )
            continue
        loc = draw(st.sampled_from(list(_locs(data))))
        if op == "raw":
            value: Any = f"__RAW_{len(raws)}__"
            raws.append(draw(st.sampled_from(RAW_SNIPPETS)))
        else:
            value = draw(junk)
        if not loc:
            if op == "add" and isinstance(data, dict):
                data[draw(keys)] = value
            elif op != "delete":
                data = value
            continue
        parent, seg = _at(data, loc[:-1]), loc[-1]
        if op in ("replace", "raw", "path"):
            parent[seg] = value
        elif op == "delete":
            del parent[seg]
        elif op == "add":
            node = parent[seg]
            if isinstance(node, dict):
                node[draw(keys)] = value
            elif isinstance(node, list):
                node.append(value)
            else:
                parent[seg] = {draw(keys): node}
        else:  # wrap a value in a list or a mapping where the other was expected
            parent[seg] = draw(st.sampled_from([[parent[seg]], {"value": parent[seg]}]))
    text = _dump(data).decode("utf-8")
    for i, raw in enumerate(raws):
        text = text.replace(f"__RAW_{i}__", raw)
    return text.encode("utf-8")


@st.composite
def kind_and_mutation(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    kind = draw(st.sampled_from(KINDS))
    return kind, draw(mutated(kind)), draw(st.booleans())


@st.composite
def corrupted_text(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    """A valid file's text after a textual edit: insertions of random or YAML-special text,
    tabs, duplicated or deleted lines, truncation."""
    kind = draw(st.sampled_from(KINDS))
    text = _dump(BASES[kind][0]).decode("utf-8")
    lines = text.splitlines(keepends=True)
    op = draw(st.sampled_from(["insert", "special", "tab", "duplicate", "drop", "truncate"]))
    if op == "insert":
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(st.text(min_size=1, max_size=30)) + text[pos:]
    elif op == "special":
        pos = draw(st.integers(0, len(text)))
        chunk = draw(
            st.sampled_from(
                [
                    "\t",
                    ": ",
                    "- ",
                    "&a ",
                    "*a",
                    "!!bool ",
                    "!!int ",
                    "<<: ",
                    "? ",
                    "{",
                    "[",
                    "'",
                    '"',
                    "\\",
                    "%YAML 1.1\n",
                    "---\n",
                    "!!python/object:os.system ",
                    "!!binary ",
                    "\x00",
                    "\ufeff",
                    "\x85",
                    "\u2028",
                ]
            )
        )
        text = text[:pos] + chunk + text[pos:]
    elif op == "tab":
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = "\t" + lines[i]
        text = "".join(lines)
    elif op == "duplicate":
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
        text = "".join(lines)
    elif op == "drop":
        i = draw(st.integers(0, len(lines) - 1))
        del lines[i]
        text = "".join(lines)
    else:
        text = text[: draw(st.integers(0, len(text)))]
    return kind, text.encode("utf-8", "surrogatepass"), draw(st.booleans())


def _loader(kind: str, use_any: bool) -> tuple[Loader, Any]:
    _, loader, expected = BASES[kind]
    return (load_any_config, ANY_KIND) if use_any else (loader, expected)


# ----------------------------------------------------------------------------- properties


def test_bases_load() -> None:
    """The unmutated bases are valid, so a ConfigError below is due to the mutation."""
    for kind in KINDS:
        _, loader, expected = BASES[kind]
        assert isinstance(check_load(loader, expected, _dump(BASES[kind][0])), expected), kind


@settings(max_examples=N_MUTATED, suppress_health_check=FUZZ_HEALTH, **FUZZ)
@given(case=kind_and_mutation())
def test_mutated_configs_load_or_raise_config_error(case: tuple[str, bytes, bool]) -> None:
    kind, payload, use_any = case
    loader, expected = _loader(kind, use_any)
    result = check_load(loader, expected, payload)
    event(type(result).__name__)


@settings(max_examples=N_TEXT, suppress_health_check=FUZZ_HEALTH, **FUZZ)
@given(case=corrupted_text())
def test_corrupted_text_loads_or_raises_config_error(case: tuple[str, bytes, bool]) -> None:
    kind, payload, use_any = case
    loader, expected = _loader(kind, use_any)
    result = check_load(loader, expected, payload)
    event(type(result).__name__)


@settings(max_examples=N_BYTES, suppress_health_check=FUZZ_HEALTH, **FUZZ)
@given(
    kind=st.sampled_from(KINDS),
    payload=st.one_of(
        st.binary(max_size=300), st.text(max_size=200).map(lambda t: t.encode("utf-8"))
    ),
)
def test_random_files_raise_config_error(kind: str, payload: bytes) -> None:
    _, loader, _ = BASES[kind]
    result = check_load(loader, ANY_KIND, payload)
    event(type(result).__name__)


# ----------------------------------------------------------------------------- run_name

BAD_RUN_NAMES = [
    "",
    ".",
    "..",
    "...",
    "../escape",
    "a/../../b",
    "/abs/path",
    "a/b",
    "a\\b",
    "C:\\runs",
    "a\x00b",
    "a\nb",
    "tab\there",
    "a\x7fb",
    "spaces here",
    "ünïcode",
    "x" * (RUN_NAME_MAX_CHARS + 1),
]
GOOD_RUN_NAMES = ["tms_5-2", "a", "v1.2", ".hidden", "x" * RUN_NAME_MAX_CHARS, "-x-"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", BAD_RUN_NAMES, ids=[repr(n)[:20] for n in BAD_RUN_NAMES])
def test_run_name_must_be_a_plain_folder_name(kind: str, name: str) -> None:
    data, loader, _ = BASES[kind]
    err = _expect_error(loader, _dump({**data, "run_name": name}), "run_name", "plain folder")
    assert "letters" in str(err) and "'..'" in str(err)


@pytest.mark.parametrize("kind", KINDS)
def test_run_name_accepts_plain_names(kind: str) -> None:
    data, loader, expected = BASES[kind]
    for name in GOOD_RUN_NAMES:
        cfg = check_load(loader, expected, _dump({**data, "run_name": name}))
        assert cfg.run_name == name


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [123, None, ["a"], {"a": 1}, True])
def test_run_name_must_be_a_string(kind: str, value: object) -> None:
    data, loader, _ = BASES[kind]
    _expect_error(loader, _dump({**data, "run_name": value}), "run_name")


# ----------------------------------------------------------------------------- the file itself

READ_CASES: list[tuple[str, bytes, list[str]]] = [
    ("tab_indent", b"run_name: x\nmodel:\n\ttype: tms\n", ["YAML syntax error", "line 3"]),
    ("binary_garbage", bytes(range(256)) * 4, ["not UTF-8"]),
    ("invalid_utf8", b"run_name: caf\xe9\n", ["not UTF-8", "0xe9", "line 1"]),
    ("nul_in_text", b"run_name: a\x00b\n", ["YAML syntax error"]),
    ("empty", b"", ["file is empty"]),
    ("only_comment", b"# nothing\n", ["file is empty"]),
    ("top_level_scalar", b"42\n", ["top level must be a mapping", "int"]),
    ("top_level_list", b"- a\n- b\n", ["top level must be a mapping", "list"]),
    ("duplicate_key", b"run_name: a\nrun_name: b\n", ["duplicate key 'run_name'"]),
    ("unhashable_key", b"? [a, b]\n: 1\n", ["YAML syntax error", "unhashable"]),
    ("bad_timestamp", b"run_name: 2020-13-45\n", ["'2020-13-45' is not a valid timestamp"]),
    ("bad_bool_tag", b"run_name: !!bool maybe\n", ["'maybe' is not a valid bool"]),
    ("bad_timestamp_tag", b"run_name: !!timestamp x\n", ["'x' is not a valid timestamp"]),
    ("bad_int_tag", b"seed: !!int 1e5\n", ["'1e5' is not a valid int"]),
    ("int_past_digit_limit", b"seed: " + b"9" * 5000 + b"\n", ["is not a valid int"]),
    ("hex_int_too_long", b"seed: 0x" + b"f" * 5000 + b"\n", ["more than 1000 digits"]),
    ("python_tag", b"run_name: !!python/object/apply:os.system [ls]\n", ["YAML syntax error"]),
    ("bad_binary", b"run_name: !!binary 'a'\n", ["YAML syntax error"]),
    ("merge_non_mapping", b"a: &x 1\nb:\n  <<: *x\n", ["YAML syntax error"]),
    ("undefined_alias", b"run_name: *nope\n", ["YAML syntax error"]),
    ("recursive_alias", b"a: &x [*x]\n", ["refers to a block that contains it"]),
    (
        "billion_laughs",
        b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + b"".join(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n".encode()
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        ["more than 100000 values once YAML aliases are expanded"],
    ),
    ("deep_flow", b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", ["nested too deeply"]),
    ("deep_unclosed", b"[" * 5000, ["nested too deeply"]),
    (
        "deep_but_parsable",
        b"a: " + b"[" * (MAX_DEPTH + 5) + b"]" * (MAX_DEPTH + 5) + b"\n",
        [f"nested more than {MAX_DEPTH} levels deep"],
    ),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("name", "payload", "hints"), READ_CASES, ids=[c[0] for c in READ_CASES])
def test_unreadable_yaml_is_a_config_error(
    kind: str, name: str, payload: bytes, hints: list[str]
) -> None:
    _, loader, _ = BASES[kind]
    _expect_error(loader, payload, None, *hints)
    _expect_error(load_any_config, payload, None, *hints)


@pytest.mark.parametrize("loader", [load_any_config, *(BASES[k][1] for k in KINDS)])
def test_paths_that_are_not_config_files(loader: Loader, tmp_path: Path) -> None:
    for path, hint in [
        (tmp_path, "is a folder"),
        (tmp_path / "missing.yaml", "file not found"),
        (tmp_path / "a\x00b.yaml", "cannot read file"),
        (tmp_path / ("x" * 5000 + ".yaml"), "cannot read file"),
    ]:
        with pytest.raises(ConfigError, match=hint) as info:
            loader(path)
        assert info.value.path == str(path)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it would block forever
    with pytest.raises(ConfigError, match="not a regular file"):
        loader(fifo)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.yaml"]


# ----------------------------------------------------------------------------- values


def _edit(kind: str, loc: tuple, value: Any) -> bytes:
    data = copy.deepcopy(BASES[kind][0])
    node = data
    for seg in loc[:-1]:
        node = node.setdefault(seg, {}) if isinstance(seg, str) else node[seg]
    node[loc[-1]] = value
    return _dump(data)


NONFINITE_CASES: list[tuple[str, tuple, Any, str]] = [
    ("decompose", ("train", "optimizer", "lr"), math.inf, "train.optimizer.lr"),
    ("decompose", ("train", "optimizer", "lr"), "1e400", "train.optimizer.lr"),
    ("decompose", ("train", "optimizer", "lr"), 10**400, "train.optimizer.lr"),
    ("decompose", ("decomposition", "init_scale"), math.nan, "decomposition.init_scale"),
    ("decompose", ("losses", 0, "coeff"), math.inf, "losses[0].coeff"),
    ("decompose", ("losses", 0, "coeff"), "inf", "losses[0].coeff"),
    ("decompose", ("losses", 2, "gamma"), "1.0e+400", "losses[2].gamma"),
    ("decompose", ("losses", 1, "eps"), math.inf, "losses[1].eps"),
    ("target", ("data", "value_range"), [0.0, math.inf], "data.value_range[1]"),
    ("target", ("data", "value_range"), [math.nan, 1.0], "data.value_range[0]"),
    (
        "target",
        ("train", "optimizer", "grad_clip_norm"),
        math.inf,
        "train.optimizer.grad_clip_norm",
    ),
    ("pretrain", ("objective", "epsilon"), math.nan, "objective.epsilon"),
    ("pretrain", ("train", "optimizer", "lr"), -math.inf, "train.optimizer.lr"),
]


@pytest.mark.parametrize(("kind", "loc", "value", "key"), NONFINITE_CASES)
def test_non_finite_numbers_are_refused(kind: str, loc: tuple, value: Any, key: str) -> None:
    _expect_error(BASES[kind][1], _edit(kind, loc, value), key)


@pytest.mark.parametrize("size", [1_000_000_000_000, 10**100])
def test_huge_but_valid_integers_still_load(size: int) -> None:
    """Whether C fits in memory is checked later, not by the loader."""
    cfg = check_load(
        load_decompose_config, DecomposeConfig, _edit("decompose", ("decomposition", "C"), size)
    )
    assert cfg.decomposition.C == size


def test_huge_int_in_a_legacy_beta_term() -> None:
    """`float()` of a 400-digit coeff inside the legacy-beta hint raised OverflowError."""
    term = {"type": "importance_minimality", "coeff": 10**400, "beta": 1}
    _expect_error(load_decompose_config, _edit("decompose", ("losses", 1), term), "losses[1]")


PATH_VALUE_CASES: list[tuple[str, tuple, Any, str]] = [
    ("decompose", ("target",), "x" * 5000, "target"),
    ("decompose", ("target",), "~no_such_user_pd/target.yaml", "target"),
    ("decompose", ("target",), "a\x00b", "target"),
    ("pretrain", ("data", "corpus"), "x" * 5000, "data.corpus"),
    ("pretrain", ("data", "corpus"), "~no_such_user_pd/corpus.txt", "data.corpus"),
    ("pretrain", ("data", "corpus"), "a\x00b", "data.corpus"),
    (
        "pretrain",
        ("data", "tokenizer"),
        {"kind": "sentencepiece", "model": "x" * 5000},
        "data.tokenizer.model",
    ),
    (
        "pretrain",
        ("data", "tokenizer"),
        {"kind": "sentencepiece", "model": "~no_such_user_pd/sp.model"},
        "data.tokenizer.model",
    ),
    (
        "pretrain",
        ("data", "tokenizer"),
        {"kind": "sentencepiece", "model": str(TARGET_YAML)},
        "data.tokenizer.model",
    ),
]


@pytest.mark.parametrize(("kind", "loc", "value", "key"), PATH_VALUE_CASES)
def test_paths_in_configs_that_cannot_be_checked(
    kind: str, loc: tuple, value: Any, key: str
) -> None:
    _expect_error(BASES[kind][1], _edit(kind, loc, value), key)


def test_unreadable_tokenizer_model(tmp_path: Path) -> None:
    model = tmp_path / "sp.model"
    model.write_bytes(b"not a model")
    model.chmod(0)
    try:
        if os.access(model, os.R_OK):
            pytest.skip("running as a user that can read mode-000 files")
        spec = {"kind": "sentencepiece", "model": str(model)}
        _expect_error(
            load_pretrain_config,
            _edit("pretrain", ("data", "tokenizer"), spec),
            "data.tokenizer.model",
        )
    finally:
        model.chmod(0o644)


SHAPE_CASES: list[tuple[str, tuple, Any, str]] = [
    ("target", ("model",), [], "model"),
    ("target", ("model",), "tms", "model"),
    ("decompose", ("losses",), [1, [2], {"type": {"a": 1}}, None], "losses[0]"),
    ("decompose", ("losses",), {"type": "faithfulness", "coeff": 1}, "losses"),
    (
        "decompose",
        ("decomposition", "tied_sites"),
        [["linear2", "linear1"]],
        "decomposition.tied_sites",
    ),
    ("pretrain", ("data",), [[[[[]]]]], "data"),
    ("pretrain", ("train", "optimizer"), {"lr": {"lr": {"lr": 1}}}, "train.optimizer.lr"),
    ("target", ("ñandú",), "ünïcödé 🦆", "ñandú"),
    ("target", ("run_name",), "\ud800", "run_name"),
    ("pretrain", ("objective", "kind"), "\ud800", "objective.kind"),
]


@pytest.mark.parametrize(("kind", "loc", "value", "key"), SHAPE_CASES)
def test_wrong_shapes_and_unicode(kind: str, loc: tuple, value: Any, key: str) -> None:
    _expect_error(BASES[kind][1], _edit(kind, loc, value), key)
    _expect_error(load_any_config, _edit(kind, loc, value), key)
