"""TOML configs: read, override, validate against one schema, dump.

The schema is the single source of truth for keys, types, defaults, validation and the reference page
(``posecore config --reference`` prints it). Plugins add the sections they own through the
``config_schema`` hook. Reading a config never runs code.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

from posecore.errors import ConfigError

_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "string", list: "array", dict: "table"}


@dataclass(frozen=True)
class Dependency:
    """An optional module that a config value needs, and the pip line that installs it."""

    module: str
    install: str

    def problem(self) -> str | None:
        """Why ``module`` does not import here (one line), or None when it does."""
        try:
            importlib.import_module(self.module)
        except Exception as err:  # a broken install fails with other errors than ImportError too
            lines = str(err).strip().splitlines()
            return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
        return None


@dataclass(frozen=True)
class Key:
    """One config value: its type, default (None: unset, omitted from dumps) and meaning. ``input_path``: a
    file or folder to read, which a config file names relative to its own folder (see :func:`check_value`)."""

    type: type | tuple[type, ...]
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    item: type | None = None
    length: int | None = None
    input_path: bool = False
    required: bool = False
    """The table is incomplete without it (it has no default)."""
    requires: Mapping[Any, Dependency] | None = None
    """Values that need an optional module, e.g. ``{"CocoMetric": PYCOCOTOOLS}``."""

    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        names = " or ".join(_TYPE_NAMES[t] for t in types)
        if self.item is not None:
            names += f" of {_TYPE_NAMES[self.item]}"
        return names


@dataclass(frozen=True)
class Section:
    """A TOML table with a fixed set of keys."""

    keys: Mapping[str, Union[Key, "Section", "Variants"]]
    help: str = ""
    requires: tuple[Dependency, ...] = ()
    """Optional modules it needs whenever it is in the config (a ``Variants`` option: when its type is chosen)."""


@dataclass(frozen=True)
class Variants:
    """A TOML table whose other keys depend on its ``type`` key (datasets, vis backends)."""

    options: Mapping[str, Section]
    default: str | None
    help: str = ""
    providers: Mapping[str, str] = field(default_factory=dict)
    """The plugin that provides each type, when plugins do (for the reference)."""


@dataclass(frozen=True)
class Types:
    """A table whose ``type`` picks one of the classes that plugins provide for ``kind`` (``"model"``,
    ``"dataset"``, ``"codec"``, ``"metric"``: see :mod:`posecore.protocols`). Its keys are the chosen class's
    ``options`` plus the ``common`` ones every type takes. :func:`posecore.plugins.with_types` turns it into a
    :class:`Variants` once the installed types are known."""

    kind: str
    default: str
    help: str = ""
    common: Mapping[str, Key] = field(default_factory=dict)
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Other defaults here than the class declares: {type name: {key: default}} (e.g. a smaller validation set)."""


Schema = Mapping[str, Union[Key, Section, Variants, Types]]
Origin = Callable[[str], str]


def read_text(path: Path, where: str, expected: str) -> str:
    """The UTF-8 text of a config file; a missing, folder or undecodable one is a ConfigError beginning with
    ``where`` (the file, or the chain of files that named it) and naming what was ``expected``."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a directory, expected {expected}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; syntax errors name the file, line and column."""
    path = Path(path)
    text = read_text(path, str(path), "a .toml config file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None


_PYTHON_LITERALS = {"True": True, "False": False, "None": None, "none": None, "null": None}


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=VALUE`` from ``--cfg-options``: VALUE as TOML, Python's True/False/None, or a bare string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--cfg-options {text!r}: expected KEY=VALUE, e.g. randomness.seed=2023")
    raw = raw.strip()
    if raw in _PYTHON_LITERALS:
        return key.split("."), _PYTHON_LITERALS[raw]
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> set[str]:
    """Set nested keys in place; a None value removes the key (back to its default). Returns the keys set."""
    touched = set()
    for text in overrides:
        path, value = parse_override(text)
        node = config
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"--cfg-options {text!r}: '{where}' is a {_value_type(child)}, not a table")
            node = child
        if value is None:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
        touched.add(".".join(path))
    return touched


def _value_type(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def did_you_mean(name: str, candidates: list[str], prefix: str = "") -> str:
    """`` (did you mean 'X'?)`` for the closest of ``candidates``, or an empty string."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def validate(user: Mapping[str, Any], schema: Schema, origin: Origin, prefix: str = "") -> dict[str, Any]:
    """Check ``user`` against ``schema`` and return it merged with the defaults.

    ``origin(dotted_key)`` names where a key came from (file or --cfg-options) for error messages.
    """
    unknown = [k for k in user if k not in schema]
    if unknown:
        dotted = prefix + unknown[0]
        raise ConfigError(f"{origin(dotted)}: unknown key '{dotted}'{did_you_mean(unknown[0], list(schema), prefix)}")
    merged: dict[str, Any] = {}
    for name, spec in schema.items():
        dotted = prefix + name
        if isinstance(spec, Key):
            if name in user:
                merged[name] = check_value(user[name], spec, dotted, origin)
            elif spec.required:
                raise ConfigError(f"{origin(dotted)}: '{dotted}' is required: {spec.help.split('. ')[0].rstrip('.')}")
            elif spec.default is not None:
                merged[name] = plain(spec.default)
            continue
        value = user.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{origin(dotted)}: '{dotted}' must be a table, got {_value_type(value)}")
        merged[name] = validate_table(value, spec, origin, dotted)
    return merged


def validate_table(value: Mapping[str, Any], spec: Section | Variants, origin: Origin, dotted: str) -> dict[str, Any]:
    """Validate one table against a Section, or against the Section its ``type`` selects."""
    if isinstance(spec, Section):
        return validate(value, spec.keys, origin, dotted + ".")
    options = spec.options
    kind = value.get("type", spec.default)
    if kind is None:
        raise ConfigError(f"{origin(dotted)}: '{dotted}.type' is required; one of {', '.join(sorted(options))}")
    if kind not in options:
        known = ", ".join(name + (f" ({spec.providers[name]})" if name in spec.providers else "")
                          for name in sorted(options))
        raise ConfigError(
            f"{origin(dotted + '.type')}: unknown {dotted}.type '{kind}'{did_you_mean(str(kind), list(options))}; "
            f"{'installed' if spec.providers else 'known'}: {known}"
        )
    rest = {k: v for k, v in value.items() if k != "type"}
    return {"type": kind, **validate(rest, options[kind].keys, origin, dotted + ".")}


def check_value(value: Any, key: Key, dotted: str, origin: Origin) -> Any:
    """Return ``value`` (ints widened to float where a float is expected) or raise a one-line ConfigError."""
    where = origin(dotted)
    ok, checked = _coerce(value, key.type)
    if not ok:
        raise ConfigError(f"{where}: '{dotted}' must be {key.type_name()}, got {_value_type(value)}")
    if isinstance(checked, list) and key.item is not None:
        items = [_coerce(v, key.item) for v in checked]
        if not all(ok for ok, _ in items):
            raise ConfigError(f"{where}: '{dotted}' must be {key.type_name()}")
        checked = [v for _, v in items]
        if key.length is not None and len(checked) != key.length:
            raise ConfigError(f"{where}: '{dotted}' must have {key.length} items, got {len(checked)}")
    if key.choices is not None and checked not in key.choices:
        options = ", ".join(repr(c) for c in key.choices)
        raise ConfigError(f"{where}: '{dotted}' is {checked!r}; choose one of {options}")
    for number in checked if isinstance(checked, list) else [checked]:
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            continue
        if key.min is not None and number < key.min:
            raise ConfigError(f"{where}: '{dotted}' is {number}, must be >= {key.min:g}")
        if key.max is not None and number > key.max:
            raise ConfigError(f"{where}: '{dotted}' is {number}, must be <= {key.max:g}")
    if key.input_path and Path(where).is_file():
        # Written in a config file: relative to that file, so a config and its data move together and it
        # runs from any directory. On the command line, relative to the current directory, as shells do.
        checked = os.path.abspath(Path(where).parent / Path(checked).expanduser())
    return checked


def _coerce(value: Any, expected: type | tuple[type, ...]) -> tuple[bool, Any]:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):  # bool is an int subclass; TOML keeps them apart, so do we
        return bool in types, value
    if isinstance(value, int) and int not in types and float in types:
        return True, float(value)
    return isinstance(value, types), value


def check_dependencies(config: Mapping[str, Any], schema: Schema, origin: Origin, prefix: str = "") -> None:
    """Raise a one-line ConfigError naming the key and the pip line for the first optional module (a
    ``requires`` in the schema) that the validated ``config`` needs and that does not import. Called before
    anything is built: a missing module is bad input found at once, not a failure at the first validation."""
    for name, spec in schema.items():
        if name not in config:
            continue
        dotted, value = prefix + name, config[name]
        if isinstance(spec, Key):
            needed = spec.requires.get(value) if spec.requires and not isinstance(value, (list, dict)) else None
            _require((needed,) if needed else (), f"{dotted} = {toml_value(value)}", origin(dotted))
            continue
        if isinstance(spec, Variants):
            section = spec.options[value["type"]]
            _require(section.requires, f"{dotted}.type = {toml_value(value['type'])}", origin(dotted + ".type"))
        else:
            section = spec
            _require(section.requires, f"[{dotted}]", origin(dotted))
        check_dependencies(value, section.keys, origin, dotted + ".")


def _require(dependencies: tuple[Dependency, ...], what: str, where: str) -> None:
    for dependency in dependencies:
        problem = dependency.problem()
        if problem is not None:
            package = dependency.module.split(".")[0]
            raise ConfigError(f"{where}: {what} needs {package}, which does not import here ({problem}); "
                              f"{dependency.install}")


def plain(value: Any) -> Any:
    """A deep copy of ``value`` with tuples as lists, as TOML has them."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def loads(text: str) -> dict[str, Any]:
    """Parse TOML text (e.g. the config a checkpoint recorded); invalid TOML is a ConfigError."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"invalid TOML: {err}") from None


# tomli_w writes each array one item per line; an array of plain values (no arrays or tables in it) is put
# back on one line. Each item is one line: strings are written without raw newlines (multiline_strings off).
_PLAIN_ARRAY = re.compile(r"\[\n((?:[ ]*[^ \[\]{\n][^\n]*,\n)+)[ ]*\]")


def dumps(config: Mapping[str, Any]) -> str:
    """The config as TOML text (plain values first, then tables, as TOML requires), arrays of plain values
    on one line (``input_size = [192, 256]``)."""
    import tomli_w

    text = tomli_w.dumps(config, multiline_strings=False, indent=4)
    return _PLAIN_ARRAY.sub(lambda match: "[" + ", ".join(line.strip()[:-1] for line in
                                                         match.group(1).splitlines()) + "]", text)


def reference(schemas: Mapping[str, Schema], backends: Variants) -> str:
    """A Markdown reference of every key, generated from the schemas (plugin name -> its schema, component types
    filled in) and the vis backends' options."""
    lines = ["# Config reference", "", "Generated by `posecore config --reference` from the schema.", ""]
    header = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for owner, schema in schemas.items():
        lines += [f"## Keys from `{owner}`", "", *header, *_reference_rows(schema, ""), ""]
    lines += ["## Vis backends", "", "Each table in `visualizer.vis_backends`:", "", *header,
              *_reference_rows({"visualizer.vis_backends[]": backends}, ""), ""]
    return "\n".join(lines)


def _reference_rows(schema: Schema, prefix: str) -> list[str]:
    rows = []
    for name, spec in schema.items():
        dotted = prefix + name
        if isinstance(spec, Key):
            default = "required" if spec.required else "unset" if spec.default is None else \
                f"`{toml_value(spec.default)}`"
            meaning = spec.help
            if spec.choices:
                meaning += " One of " + ", ".join(f"`{toml_value(c)}`" for c in spec.choices) + "."
            rows.append(f"| `{dotted}` | {spec.type_name()} | {default} | {meaning} |")
        elif isinstance(spec, Section):
            rows.append(f"| `[{dotted}]` | table | | {spec.help} |")
            rows += _reference_rows(spec.keys, dotted + ".")
        else:
            kinds = ", ".join(f"`{k}`" + (f" ({spec.providers[k]})" if k in spec.providers else "")
                              for k in spec.options)
            default = f"`\"{spec.default}\"`" if spec.default else "required"
            rows.append(f"| `{dotted}.type` | string | {default} | {spec.help} Installed: {kinds}. |")
            for kind, section in spec.options.items():
                rows.append(f"| `{dotted}.type = \"{kind}\"` | | | {section.help} |")
                rows += [r.replace(f"| `{dotted}.", f"| `{dotted}.` ({kind}) `", 1) for r in
                         _reference_rows(section.keys, dotted + ".")]
    return rows


def toml_value(value: Any) -> str:
    """A value as one line of TOML (the reference table, ``posecore config --explain``)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)
