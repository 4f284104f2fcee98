"""Config composition: ``extends`` (bases merged key by key), ``${key}`` references, and where each value came from.

The files a config names are applied in order, depth first (a base's own bases before it), the config itself
last. A run never depends on its bases later: the merged config it writes is one flat file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from posecore.config import toml_value, apply_overrides, loads, read_toml
from posecore.errors import ConfigError

PACKAGED = Path(__file__).parent / "configs"
"""The bases shipped with posecore, named ``posecore:NAME.toml`` in ``extends``."""
PACKAGE_PREFIX = "posecore:"
REPLACE = "__replace__"
"""``__replace__ = true`` in a table: it replaces the table of the files applied before it instead of merging."""

_REFERENCE = re.compile(r"\$\{([^{}]*)\}")


@dataclass(frozen=True)
class Source:
    """Where values came from: a config file (``file`` set) or a command-line flag such as ``--cfg-options``."""

    name: str
    """The file as named (``examples/run.toml``, ``posecore:coco.toml``) or the flag."""
    file: Path | None = None
    chain: tuple[str, ...] = ()
    """The files from the top config down to this one, through ``extends``."""


@dataclass
class Composition:
    """A config with its bases merged, overrides applied and references resolved, and each key's source."""

    config: dict[str, Any]
    root: Source
    sources: dict[str, Source] = field(default_factory=dict)
    """Dotted key (tables too) -> the file or flag that last set it."""
    references: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Dotted key -> (the key whose ``${...}`` value brought it, the key it was copied from)."""

    def origin(self, key: str) -> str:
        """The file or flag(s) that set ``key``, for error messages and for resolving input paths (a path
        copied by a reference is relative to the file that wrote it)."""
        key = key.split("[")[0]  # an item of an array comes from where the array was set
        while key in self.references:
            key = self.references[key][1]
        flags = [source.name for name, source in self.sources.items() if source.file is None and
                 (name == key or name.startswith(key + ".") or key.startswith(name + "."))]
        if flags:
            return " and ".join(dict.fromkeys(flags))
        parts = key.split(".")
        for end in range(len(parts), 0, -1):
            source = self.sources.get(".".join(parts[:end]))
            if source is not None:
                return source.name
        return self.root.name

    def explain(self, config: Mapping[str, Any]) -> str:
        """Each key of ``config`` (the validated config) as ``key = value  # where it came from``: valid TOML."""
        lines: dict[Path, dict[str, int]] = {}
        rows = [(f"{key} = {toml_value(value)}", self._describe(key, lines)) for key, value in leaves(config)]
        width = max((len(text) for text, _ in rows if len(text) <= 60), default=0)
        return "".join(f"{text.ljust(width)}  # {source}\n" for text, source in rows)

    def _describe(self, key: str, lines: dict[Path, dict[str, int]]) -> str:
        if key in self.references:
            holder, target = self.references[key]
            written = f"${{{self.references[holder][1]}}} at {self._where(holder, lines)}"
            return f"{written} <- {self._describe(target, lines)}"
        return self._where(key, lines) if key in self.sources else "default"

    def _where(self, key: str, lines: dict[Path, dict[str, int]]) -> str:
        source = self.sources[key]
        if source.file is None:
            return source.name
        if source.file not in lines:
            lines[source.file] = _line_numbers(source.file.read_text(encoding="utf-8"))
        line = lines[source.file].get(key)
        where = source.name if line is None else f"{source.name}:{line}"
        return f"{where} (base of {source.chain[-2]})" if len(source.chain) > 1 else where


def compose(path: str | Path, overrides: Iterable[str | tuple[str, str]] = ()) -> Composition:
    """Read the config at ``path`` with its bases, apply the overrides, then resolve ``${key}`` references.

    An override is ``KEY=VALUE`` from ``--cfg-options``, or ``(KEY=VALUE, flag)`` for one that a shorthand flag
    (``--amp``) stands for: errors about its key then name that flag, the one the user typed.
    """
    root = Source(str(path), Path(path), (str(path),))
    composition = Composition({}, root)
    for source, layer, replaced in _layers(root, Path(path), ()):
        _merge(composition.config, layer, source, replaced, composition.sources, "")
    for override in overrides:
        text, flag = (override, "--cfg-options") if isinstance(override, str) else override
        for key in apply_overrides(composition.config, [text]):
            _forget(composition.sources, key)
            value = _get(composition.config, key)
            if value is not None:
                composition.sources.update(dict.fromkeys((k for k, _ in _paths(value, key)), Source(flag)))
    composition.config = _Resolver(composition).value(composition.config, "")
    return composition


def _layers(source: Source, file: Path, seen: tuple[Path, ...]) -> Iterator[tuple[Source, dict[str, Any], set[str]]]:
    """Each file to apply, in order (its bases, depth first, then itself), without ``extends`` and
    ``__replace__``, with the dotted keys of the tables that say ``__replace__ = true``."""
    seen = (*seen, file.resolve())
    try:
        layer = read_toml(file)
    except ConfigError as err:
        if len(source.chain) == 1:
            raise
        raise ConfigError(f"{' -> '.join(source.chain[:-1])} -> {err}") from None
    bases = layer.pop("extends", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"{source.name}: 'extends' must be a file name or an array of them, e.g. "
                          f"extends = [\"posecore:runtime.toml\", \"_base_/data.toml\"]")
    for base in bases:
        name, base_file = _locate(base, file, source.chain)
        chain = (*source.chain, name)
        if base_file.resolve() in seen:
            raise ConfigError(f"{' -> '.join(chain)}: extends cycle; remove one of these extends")
        yield from _layers(Source(name, base_file, chain), base_file, seen)
    yield source, layer, _replace_markers(layer, source, "")


def _locate(base: str, naming: Path, chain: tuple[str, ...]) -> tuple[str, Path]:
    """A base's name for messages and its file: ``posecore:NAME`` in the package, else relative to the
    file that names it."""
    if base.startswith(PACKAGE_PREFIX):
        file = PACKAGED / base[len(PACKAGE_PREFIX):]
        if file.parent != PACKAGED or not file.is_file():
            known = ", ".join(PACKAGE_PREFIX + p.name for p in sorted(PACKAGED.glob("*.toml")))
            raise ConfigError(f"{' -> '.join(chain)}: extends {base!r}, which posecore does not ship; "
                              f"it ships {known}")
        return base, file
    file = Path(os.path.normpath(naming.parent / Path(base).expanduser()))
    return str(file), file


def _replace_markers(table: dict[str, Any], source: Source, prefix: str) -> set[str]:
    """Remove ``__replace__`` keys from ``table``'s tables; the dotted keys of those that were true."""
    marked = set()
    flag = table.pop(REPLACE, False)
    if not isinstance(flag, bool):
        raise ConfigError(f"{source.name}: '{prefix}{REPLACE}' must be true or false")
    if flag:
        marked.add(prefix[:-1])
    for key, value in table.items():
        if isinstance(value, dict):
            marked |= _replace_markers(value, source, f"{prefix}{key}.")
    return marked


def _merge(into: dict[str, Any], layer: Mapping[str, Any], source: Source, replaced: set[str],
           sources: dict[str, Source], prefix: str) -> None:
    """Apply one file's values: tables merge key by key (unless marked to replace), the rest replaces."""
    for key, value in layer.items():
        dotted, old = prefix + key, into.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and dotted not in replaced:
            sources[dotted] = source
            _merge(old, value, source, replaced, sources, dotted + ".")
            continue
        if key in into and dotted not in replaced and _reference(value) is None and \
                isinstance(value, dict) != isinstance(old, dict):
            raise ConfigError(_clash(dotted, sources[dotted], source, isinstance(old, dict)))
        _forget(sources, dotted)
        into[key] = value
        sources.update(dict.fromkeys((k for k, _ in _paths(value, dotted)), source))


def _clash(key: str, base: Source, file: Source, base_is_table: bool) -> str:
    """The one-line error for a table in one file and a value (not a reference) in the file applied after it."""
    if base_is_table:
        return (f"{' -> '.join(base.chain)}: '{key}' is a table there but not in {file.name}; write a table in "
                f"{file.name} (its keys merge into the base's) or a ${{...}} reference")
    return (f"{' -> '.join(base.chain)}: '{key}' is not a table there but a table in {file.name}; add {REPLACE} = "
            f"true to the table in {file.name} to replace the base's value")


def _forget(sources: dict[str, Source], key: str) -> None:
    for name in [name for name in sources if name == key or name.startswith(key + ".")]:
        del sources[name]


def _get(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _reference(value: Any) -> str | None:
    """The key a ``"${key}"`` value refers to, or None for any other value."""
    match = _REFERENCE.fullmatch(value) if isinstance(value, str) else None
    return match.group(1).strip() if match else None


class _Resolver:
    """Replaces each ``"${key}"`` value by that key's value, resolved itself, and records where it came from."""

    def __init__(self, composition: Composition) -> None:
        self.composition = composition
        self.raw = composition.config
        self.resolving: list[str] = []

    def value(self, value: Any, key: str) -> Any:
        """``value`` (found at ``key``) with every reference in it resolved."""
        value = self.follow(value, key)
        if isinstance(value, dict):
            return {k: self.value(v, f"{key}.{k}" if key else k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return value

    def follow(self, value: Any, key: str) -> Any:
        """The value ``value`` refers to when it is a reference, else ``value``."""
        target = _reference(value)
        if target is None:
            return value
        if key in self.resolving:
            cycle = " -> ".join([*self.resolving[self.resolving.index(key):], key])
            raise ConfigError(f"{self.composition.origin(key)}: reference cycle {cycle}; set one of them to a value")
        self.resolving.append(key)
        found = self.value(self.lookup(target, key), target)
        self.resolving.pop()
        for (copy, _), (original, _) in zip(_paths(found, key), _paths(found, target)):
            self.composition.references[copy] = (key, original)
        return found

    def lookup(self, target: str, key: str) -> Any:
        node: Any = self.raw
        walked: list[str] = []
        for part in target.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{self.composition.origin(key)}: '{key}' refers to '${{{target}}}', which is not "
                                  f"set; a reference names a key set in a config file or --cfg-options (not a default)")
            walked.append(part)
            node = self.follow(node[part], ".".join(walked))
        return node


def _paths(value: Any, key: str) -> Iterator[tuple[str, Any]]:
    """``(key, value)`` and, for a table, every key path inside it (tables and values), dotted."""
    yield key, value
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _paths(item, f"{key}.{name}")


def _keys(config: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Each key path of ``config`` (tables and values), dotted, with its value."""
    for name, value in config.items():
        yield from _paths(value, name)


def leaves(config: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Each value of ``config`` that is not a table (or is an empty one), with its dotted key."""
    return ((key, value) for key, value in _keys(config) if not isinstance(value, dict) or not value)


def _line_numbers(text: str) -> dict[str, int]:
    """The line (1-based) where each dotted key of TOML ``text`` is set. TOML parsers give no positions, so
    each prefix of whole lines is parsed: a key is set on the line after the last prefix that parses without
    it (a value over several lines, such as an array, starts there)."""
    lines = text.splitlines(keepends=True)
    found: dict[str, int] = {}
    parsed_until = 0
    for end in range(1, len(lines) + 1):
        try:
            prefix = loads("".join(lines[:end]))
        except ConfigError:
            continue  # inside a value that spans lines
        for key, _ in _keys(prefix):
            found.setdefault(key, parsed_until + 1)
        parsed_until = end
    return found


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """The values that differ between two configs, as ``(dotted key, old value, new value)``; None: not set."""
    before, after = dict(leaves(old)), dict(leaves(new))
    return [(key, before.get(key), after.get(key)) for key in dict.fromkeys([*before, *after])
            if before.get(key) != after.get(key)]
