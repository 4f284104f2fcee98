"""Read an MMEngine Python config (MMPose's configs) and its ``_base_`` chain without running it.

MMEngine executes a config file. This module parses it with :mod:`ast` and evaluates only the literal subset
MMPose's configs are written in: assignments to names; numbers, strings, True/False/None; list, tuple and dict
displays (with ``*`` and ``**``); ``dict(...)``, ``list(...)``, ``tuple(...)`` and ``range(...)``; names assigned
earlier in the file and ``_base_.NAME`` (the bases' values); subscripts, slices and attribute access on dicts;
arithmetic and ``+``/``*`` on strings, lists and tuples; f-strings; list comprehensions. Anything else (an import,
another call, a loop, a condition) is a one-line error naming the file and line. The result is what
``mmengine.Config.fromfile(path).to_dict()`` gives (tests/golden/ checks it), merged as MMEngine merges: the bases
in order (no key in two of them), then the file, dicts key by key, ``_delete_=True`` replacing the base's dict.
"""

from __future__ import annotations

import ast
import operator
import os
import re
from collections import ChainMap
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from posecore.config import read_text
from posecore.errors import ConfigError

BASE = "_base_"
DELETE = "_delete_"
_RESERVED = ("filename", "text", "pretty_text", "env_variables")  # MMEngine's Config refuses these keys
_MAX_ITEMS = 100_000  # the longest sequence an expression may build: a config is small, reading it stays fast
# MMEngine replaces these in a file's text before running it; read literally, they would give other values.
_SUBSTITUTION = re.compile(r"\{\{\s*(\$\w|_base_\.|file(Dirname|Basename|BasenameNoExtension|Extname)\b)")
_FLATTEN = ("flatten it first with MMEngine: python -c \"from mmengine import Config; "
            "Config.fromfile('FILE.py').dump('flat.py')\"")
_ARITHMETIC: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_CONVERSIONS: dict[int, Callable[[Any], str]] = {-1: lambda v: v, ord("s"): str, ord("r"): repr, ord("a"): ascii}


def read_config(path: str | Path) -> dict[str, Any]:
    """The config at ``path`` with its bases merged: the dict MMEngine's ``Config.fromfile(path).to_dict()``
    gives, tuples included. Errors are one line: ``FILE:LINE: problem`` (a base's error names the chain)."""
    return _read(Path(path), (str(path),), ())


def _read(file: Path, chain: tuple[str, ...], seen: tuple[Path, ...]) -> dict[str, Any]:
    where = " -> ".join(chain)
    text = read_text(file, where, "an MMEngine .py config")
    try:
        tree = ast.parse(text, str(file))
    except SyntaxError as err:
        raise ConfigError(f"{where}:{err.lineno}: invalid Python: {err.msg}") from None
    seen = (*seen, file.resolve())
    bases: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name in _base_names(tree, where):
        if "::" in name:
            raise ConfigError(f"{where}: _base_ {name!r} is in another package; posecore reads bases in files only")
        base = Path(os.path.normpath(file.parent / name))
        base_chain = (*chain, str(base))
        if base.suffix != ".py":
            raise ConfigError(f"{' -> '.join(base_chain)}: posecore reads .py bases only")
        if base.resolve() in seen:
            raise ConfigError(f"{' -> '.join(base_chain)}: _base_ cycle; remove one of these _base_ entries")
        layer = _read(base, base_chain, seen)
        for key in layer:
            if key in owner:
                raise ConfigError(f"{where}: '{key}' is set by two bases, {owner[key]} and {base}; MMEngine allows a "
                                  f"key in one base only")
            owner[key] = str(base)
        bases.update(layer)
    names = _Evaluator(where, {BASE: bases}).run(tree)
    own = {key: _fresh(value) for key, value in names.items() if key != BASE and not key.startswith("__")}
    for key in own:
        if key in _RESERVED:
            raise ConfigError(f"{where}: '{key}' is a reserved name in MMEngine configs; rename it")
    return _merge(own, bases, where)


def _base_names(tree: ast.Module, where: str) -> list[str]:
    """The files the first ``_base_ = ...`` names (MMEngine reads that one), as written."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == BASE for t in node.targets):
            names = _Evaluator(where, {}).value(node.value)
            names = names if isinstance(names, list) else [names]
            if not all(isinstance(name, str) for name in names):
                raise ConfigError(f"{where}:{node.lineno}: _base_ must be a file name or a list of them")
            return names
    return []


def _merge(child: dict[str, Any], base: dict[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """MMEngine's merge of a file's values into its bases': a dict merges into the base's dict key by key unless it
    says ``_delete_=True`` (popped from the file's dict, as MMEngine does); anything else replaces."""
    merged = dict(base)
    for key, value in child.items():
        if not isinstance(value, dict):
            merged[key] = value
        elif key in base and not value.pop(DELETE, False):
            if not isinstance(base[key], dict):
                raise ConfigError(f"{where}: '{prefix}{key}' is a dict here but not in its base; add {DELETE}=True "
                                  f"to replace the base's value")
            merged[key] = _merge(value, base[key], where, f"{prefix}{key}.")
        else:
            merged[key] = value
    return merged


def _fresh(value: Any) -> Any:
    """A copy of every container in ``value``: MMEngine deep-copies each value of a file, and each item of it, before
    merging, so that two names holding one dict become two dicts (``_delete_`` popped from one stays in the other)."""
    if isinstance(value, dict):
        return {key: _fresh(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_fresh(item) for item in value)
    return value


class _Evaluator:
    """Evaluates a config's statements in the literal subset; ``names`` are the values assigned so far."""

    def __init__(self, where: str, names: Mapping[str, Any]) -> None:
        self.where = where
        self.names: Mapping[str, Any] = dict(names)

    def run(self, tree: ast.Module) -> dict[str, Any]:
        """Every name the file assigns (and ``_base_``), in the order first assigned."""
        names = dict(self.names)
        self.names = names
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == BASE for t in targets):
                    continue  # MMEngine removes the _base_ assignment; _base_ holds the bases' values
                for target in targets:
                    if not isinstance(target, ast.Name):
                        raise self.error(target, "assigns to something other than a name")
                value = self.value(node.value)
                for target in targets:
                    names[target.id] = value  # type: ignore[attr-defined]
            elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                      and isinstance(node.value.value, str)):  # a docstring
                raise self.error(node, _describe(node))
        return names

    def error(self, node: ast.AST, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}:{getattr(node, 'lineno', '?')}: {problem}; posecore reads MMEngine "
                           f"configs without running them, in the literal subset MMPose's configs use "
                           f"(or {_FLATTEN})")

    def value(self, node: ast.AST) -> Any:
        """The value of expression ``node``."""
        handler = getattr(self, f"_{type(node).__name__}", None)
        if handler is None:
            raise self.error(node, _describe(node))
        return handler(node)

    def _Constant(self, node: ast.Constant) -> Any:
        value = node.value
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise self.error(node, f"a {type(value).__name__} literal")
        if isinstance(value, str) and _SUBSTITUTION.search(value):
            raise self.error(node, "MMEngine's {{...}} text substitution (write _base_.NAME for a base's value)")
        return value

    def _Name(self, node: ast.Name) -> Any:
        if node.id not in self.names:
            raise self.error(node, f"'{node.id}' is not assigned before this line (a base's values are "
                                   f"_base_.{node.id})")
        return self.names[node.id]

    def _List(self, node: ast.List) -> list[Any]:
        items: list[Any] = []
        for item in node.elts:
            if isinstance(item, ast.Starred):
                items += self._iterate(item.value)
            else:
                items.append(self.value(item))
        return self._sized(node, items)

    def _Tuple(self, node: ast.Tuple) -> tuple[Any, ...]:
        return tuple(self._List(node))  # type: ignore[arg-type]

    def _Dict(self, node: ast.Dict) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key, item in zip(node.keys, node.values):
            if key is None:
                result.update(self._mapping(item))
            else:
                result[self._key(key)] = self.value(item)
        return result

    def _Call(self, node: ast.Call) -> Any:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in ("dict", "list", "tuple", "range") or name in self.names:
            raise self.error(node, f"calls {ast.unparse(node.func)}() (only dict, list, tuple and range are read)")
        if any(isinstance(arg, ast.Starred) for arg in node.args) or (node.keywords and name != "dict"):
            raise self.error(node, f"{name}() with these arguments")
        if name == "dict":
            if len(node.args) > 1:
                raise self.error(node, "dict() with more than one positional argument")
            result = dict(self._pairs(node.args[0])) if node.args else {}
            for keyword in node.keywords:
                if keyword.arg is None:
                    result.update(self._mapping(keyword.value))
                else:
                    result[keyword.arg] = self.value(keyword.value)
            return result
        if name == "range":
            bounds = [self.value(arg) for arg in node.args]
            if not 1 <= len(bounds) <= 3 or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
                raise self.error(node, "range() takes one to three integers")
            try:
                return self._sized(node, list(range(*bounds)))
            except ValueError as err:
                raise self.error(node, f"range(): {err}") from None
        if len(node.args) > 1:
            raise self.error(node, f"{name}() with more than one argument")
        items = self._iterate(node.args[0]) if node.args else []
        return items if name == "list" else tuple(items)

    def _Attribute(self, node: ast.Attribute) -> Any:
        owner = self.value(node.value)
        if not isinstance(owner, dict) or node.attr not in owner:
            raise self.error(node, f"{ast.unparse(node)}: no key '{node.attr}' in {ast.unparse(node.value)}")
        return owner[node.attr]

    def _Subscript(self, node: ast.Subscript) -> Any:
        owner = self.value(node.value)
        index = self.value(node.slice)
        if not isinstance(owner, (dict, list, tuple, str)):
            raise self.error(node, f"{ast.unparse(node)}: a {type(owner).__name__} has no items")
        try:
            return owner[index]
        except (KeyError, IndexError, TypeError) as err:
            raise self.error(node, f"{ast.unparse(node)}: {type(err).__name__} {err}") from None

    def _Slice(self, node: ast.Slice) -> slice:
        bounds = [None if part is None else self.value(part) for part in (node.lower, node.upper, node.step)]
        if not all(b is None or isinstance(b, int) for b in bounds):
            raise self.error(node, "a slice bound that is not an integer")
        return slice(*bounds)

    def _BinOp(self, node: ast.BinOp) -> Any:
        left, right = self.value(node.left), self.value(node.right)
        function = _ARITHMETIC.get(type(node.op))
        numbers = all(isinstance(v, (int, float)) for v in (left, right))
        sequences = (str, list, tuple)
        allowed = function is not None and (
            numbers or (isinstance(node.op, ast.Add) and isinstance(left, sequences) and type(left) is type(right))
            or (isinstance(node.op, ast.Mult) and any(isinstance(a, sequences) and isinstance(b, int)
                                                       for a, b in ((left, right), (right, left)))))
        if not allowed:
            raise self.error(node, f"{ast.unparse(node)}: {type(left).__name__} {_symbol(node.op)} "
                                   f"{type(right).__name__}")
        if isinstance(node.op, ast.Pow) and isinstance(right, int) and abs(right) > 1000:
            raise self.error(node, f"{ast.unparse(node)}: an exponent over 1000")
        if isinstance(node.op, ast.Mult) and not numbers:
            sequence, count = (left, right) if isinstance(left, sequences) else (right, left)
            if len(sequence) * count > _MAX_ITEMS:
                raise self.error(node, f"{ast.unparse(node)}: more than {_MAX_ITEMS} items")
        try:
            return function(left, right)  # type: ignore[misc]
        except (ArithmeticError, ValueError) as err:
            raise self.error(node, f"{ast.unparse(node)}: {err}") from None

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        operand = self.value(node.operand)
        if not isinstance(node.op, (ast.USub, ast.UAdd)) or not isinstance(operand, (int, float)):
            raise self.error(node, f"{ast.unparse(node)}: only + and - on numbers")
        return -operand if isinstance(node.op, ast.USub) else +operand

    def _JoinedStr(self, node: ast.JoinedStr) -> str:
        parts = []
        for part in node.values:
            if isinstance(part, ast.FormattedValue):
                spec = "" if part.format_spec is None else self.value(part.format_spec)
                try:
                    parts.append(format(_CONVERSIONS[part.conversion](self.value(part.value)), spec))
                except (ValueError, TypeError) as err:
                    raise self.error(part, f"f-string: {err}") from None
            else:
                parts.append(self.value(part))
        return "".join(parts)

    def _ListComp(self, node: ast.ListComp | ast.GeneratorExp) -> list[Any]:
        scopes: list[dict[str, Any]] = [{}]
        for generator in node.generators:
            if generator.ifs or generator.is_async:
                raise self.error(generator.iter, "a comprehension with a condition")
            scopes = [{**scope, **bound} for scope in scopes
                      for item in self._in_scope(scope, lambda: self._iterate(generator.iter))
                      for bound in [self._bind(generator.target, item)]]
            self._sized(node, scopes)
        return [self._in_scope(scope, lambda: self.value(node.elt)) for scope in scopes]

    _GeneratorExp = _ListComp

    def _in_scope(self, scope: dict[str, Any], evaluate: Callable[[], Any]) -> Any:
        outer = self.names
        self.names = ChainMap(scope, outer)
        try:
            return evaluate()
        finally:
            self.names = outer

    def _bind(self, target: ast.AST, item: Any) -> dict[str, Any]:
        if isinstance(target, ast.Name):
            return {target.id: item}
        if isinstance(target, ast.Tuple) and all(isinstance(t, ast.Name) for t in target.elts):
            if not isinstance(item, (list, tuple)) or len(item) != len(target.elts):
                raise self.error(target, f"cannot unpack {item!r} into {ast.unparse(target)}")
            return {t.id: v for t, v in zip(target.elts, item)}  # type: ignore[attr-defined]
        raise self.error(target, "a comprehension target other than names")

    def _iterate(self, node: ast.AST) -> list[Any]:
        value = self.value(node)
        if not isinstance(value, (list, tuple, str, dict)):
            raise self.error(node, f"{ast.unparse(node)} is a {type(value).__name__}, not a sequence")
        return list(value)

    def _mapping(self, node: ast.AST) -> dict[Any, Any]:
        value = self.value(node)
        if not isinstance(value, dict):
            raise self.error(node, f"** of {ast.unparse(node)}, a {type(value).__name__}")
        return value

    def _pairs(self, node: ast.AST) -> Iterable[tuple[Any, Any]]:
        value = self.value(node)
        if isinstance(value, dict):
            return value.items()
        if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
            return value
        raise self.error(node, "dict() of something other than a dict or (key, value) pairs")

    def _key(self, node: ast.AST) -> Any:
        key = self.value(node)
        if isinstance(key, (list, dict)):
            raise self.error(node, f"a {type(key).__name__} as a dict key")
        return key

    def _sized(self, node: ast.AST, items: list[Any]) -> list[Any]:
        if len(items) > _MAX_ITEMS:
            raise self.error(node, f"more than {_MAX_ITEMS} items")
        return items


def _describe(node: ast.AST) -> str:
    """What a construct outside the subset is, for the error."""
    kinds = {ast.Import: "an import", ast.ImportFrom: "an import (MMEngine's new-style configs are not read)",
             ast.For: "a for loop", ast.While: "a while loop", ast.If: "an if statement", ast.With: "a with statement",
             ast.FunctionDef: "a function definition", ast.ClassDef: "a class definition",
             ast.Lambda: "a lambda", ast.IfExp: "a conditional expression", ast.Compare: "a comparison",
             ast.BoolOp: "and/or", ast.Set: "a set display (MMEngine's {{...}} substitution is not read: write "
                                            "_base_.NAME)"}
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        return f"a statement calling {ast.unparse(node.value.func)}()"
    return kinds.get(type(node), f"a {type(node).__name__} ({ast.unparse(node)[:40]})")


def _symbol(op: ast.operator) -> str:
    symbols = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
               ast.Pow: "**"}
    return symbols.get(type(op), type(op).__name__)
