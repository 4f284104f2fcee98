"""Plugin discovery, activation and the config that results from both.

Activation rule (the one place it is decided): the core is always active; an installed plugin is
active when it is *named* (``plugins = ["amp"]`` in TOML or ``--plugin amp``) or when the config
*uses what it provides*: a top-level key or section it owns (``[amp]``, ``resume``, ``[randomness]``)
or a vis backend type it registers (``TensorboardVisBackend``). A section whose ``enabled`` key is
set to false does not activate. ``no:NAME`` (TOML or ``--plugin no:NAME``) blocks a plugin, which
then may not be used. The CLI shorthands map onto config keys: ``--amp`` is ``amp.enabled=true``,
``--resume`` is ``resume=true``, ``--resume PATH`` adds ``load_from=PATH``.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Callable, Iterable, Mapping

import pluggy

from posecore import __version__, hookspecs
from posecore.config import (Schema, Variants, apply_overrides, check_dependencies, read_toml, validate,
                             validate_table)
from posecore.errors import ConfigError, PosecoreError

ENTRY_POINT_GROUP = "posecore"

# What first-party plugins provide, so a config that uses it without the plugin names the install.
FIRST_PARTY_PROVIDES = {
    "amp": "amp",
    "resume": "resume",
    "randomness": "seed",
    "TensorboardVisBackend": "tensorboard",
}


@dataclass(frozen=True)
class PluginInfo:
    """An installed plugin: its entry-point name, distribution, version and loaded module."""

    name: str
    dist: str
    version: str
    module: Any

    def label(self) -> str:
        return f"{self.name}-{self.version}"


def install_hint(*names: str) -> str:
    """The pip line that installs plugins ``names``. The first-party plugins are on no package index yet: when
    the core runs from a posecore checkout (an editable install), the line installs them from it; otherwise
    it names the distributions and where they are in a checkout."""
    unknown = [name for name in names if name not in FIRST_PARTY_PROVIDES.values()]
    if unknown:
        return f"pip install the distribution that provides the posecore plugin '{unknown[0]}'"
    distributions = " ".join(f"posecore-{name}" for name in names)
    checkout = checkout_root()
    if checkout is not None:
        paths = " ".join(f"-e {checkout / 'plugins' / name}" for name in names)
        return f"pip install {paths} ({distributions}, from this posecore checkout)"
    paths = " ".join(f"-e plugins/{name}" for name in names)
    return f"pip install {distributions} (in a posecore checkout: pip install {paths})"


def checkout_root() -> Path | None:
    """The posecore checkout this core is installed from (editable), or None (e.g. installed from a wheel)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "plugins").is_dir() and (root / "core" / "posecore").is_dir() else None


def core_plugin() -> PluginInfo:
    from posecore import builtin

    return PluginInfo("core", "posecore", __version__, builtin)


def discover() -> list[PluginInfo]:
    """Load every plugin registered in the ``posecore`` entry-point group."""
    found: dict[str, PluginInfo] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "unknown"
        version = ep.dist.version if ep.dist else "0"
        if ep.name == "core" or ep.name in found:
            other = "posecore" if ep.name == "core" else found[ep.name].dist
            raise PosecoreError(f"plugin name '{ep.name}' from {dist} is already taken by {other}; uninstall one")
        try:
            module = ep.load()
        except Exception as err:
            raise PosecoreError(f"plugin '{ep.name}' ({dist} {version}) failed to import: "
                                f"{type(err).__name__}: {err}") from err
        found[ep.name] = PluginInfo(ep.name, dist, version, module)
    return list(found.values())


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


def call_one(pm: pluggy.PluginManager, hook_name: str, plugin_name: str, **kwargs: Any) -> Any:
    """Call one plugin's implementation of a hook (through pluggy, so call monitoring sees it)."""
    plugin = pm.get_plugin(plugin_name)
    others = [p for p in pm.get_plugins() if p is not plugin]
    result = pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)
    return result[0] if result else None


def call_each(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> dict[str, Any]:
    """Call a hook on each plugin separately: ``{plugin name: its result}`` (None results dropped)."""
    results = {}
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        result = call_one(pm, hook_name, impl.plugin_name, **kwargs)
        if result is not None:
            results[impl.plugin_name] = result
    return results


class PluginSet:
    """One run's plugin manager: the core plus the active plugins, and what they declared."""

    def __init__(self, active: list[PluginInfo], pm: pluggy.PluginManager, backends: dict[str, type]) -> None:
        self.active = active
        self.pm = pm
        self.hook = pm.hook
        self.backends = backends
        self.monitored = False
        """Set when pluggy call monitoring or tracing is on: every hook call then goes through pluggy."""

    def per_iteration(self, name: str) -> Callable[..., Any] | None:
        """How the loop calls hook ``name`` each iteration: not at all when nothing implements it, the
        core's own function when only the core does (pluggy's dispatch costs several µs), else pluggy."""
        caller = getattr(self.hook, name)
        implementations = caller.get_hookimpls()
        if not implementations:
            return None
        if len(implementations) == 1 and implementations[0].plugin_name == "core" and not self.monitored:
            return implementations[0].function
        return caller

    def header(self) -> str:
        """The run header's plugin list, e.g. ``plugins: amp-0.1.0, seed-0.1.0``."""
        names = [p.label() for p in self.active if p.name != "core"]
        return "plugins: " + (", ".join(names) if names else "none")

    def versions(self) -> dict[str, str]:
        return {p.name: p.version for p in self.active}

    def blame(self, error: BaseException) -> str | None:
        """Name the plugin hook that raised ``error``, from its traceback; None when no hook did."""
        owners = {}
        for hook_caller in vars(self.pm.hook).values():
            if isinstance(hook_caller, pluggy.HookCaller):
                for impl in hook_caller.get_hookimpls():
                    owners[impl.function.__code__] = (impl.plugin_name, hook_caller.name)
        tb: TracebackType | None = error.__traceback__
        while tb is not None:
            owner = owners.get(tb.tb_frame.f_code)
            if owner and owner[0] != "core":
                return f"plugin '{owner[0]}' failed in hook '{owner[1]}'"
            tb = tb.tb_next
        return None


def resolve(user: dict[str, Any], origin: Any, cli_plugins: Iterable[str] = (),
            installed: list[PluginInfo] | None = None,
            extra: Iterable[PluginInfo] = ()) -> tuple[dict[str, Any], PluginSet]:
    """Decide the active plugins for ``user`` (a raw config dict) and return the validated config.

    ``extra`` plugins are registered as if installed (tests, ``posecore.testing``).
    """
    installed = (discover() if installed is None else installed) + list(extra)
    by_name = {p.name: p for p in installed}
    named = _plugin_names(user, origin) + list(cli_plugins)
    blocked = {n[3:] for n in named if n.startswith("no:")}
    wanted = [n for n in dict.fromkeys(named) if not n.startswith("no:")]
    for name in wanted:
        if name in blocked:
            raise ConfigError(f"plugin '{name}' is both named and blocked (no:{name}); keep one")
        if name not in by_name:
            raise ConfigError(f"plugin '{name}' is not installed: {install_hint(name)}")

    pm = new_manager()
    candidates = [core_plugin()] + installed
    for plugin in candidates:
        pm.register(plugin.module, name=plugin.name)
    schemas = call_each(pm, "config_schema")
    owner_of = _owners(schemas)
    backend_owner, backends = _backends(pm)

    def use(thing: str, owner: str | None, key: str) -> None:
        if owner in blocked:
            raise ConfigError(f"{origin(key)}: '{thing}' belongs to plugin '{owner}', which is blocked by no:{owner}")
        if owner is not None:
            active.add(owner)
        elif thing in FIRST_PARTY_PROVIDES:
            plugin = FIRST_PARTY_PROVIDES[thing]
            raise ConfigError(f"{origin(key)}: '{thing}' needs the plugin '{plugin}', which is not installed: "
                              f"{install_hint(plugin)}")
        # anything else unknown is reported by validation, with a did-you-mean

    active = {"core", *wanted}
    for key, value in user.items():
        if not (isinstance(value, dict) and value.get("enabled") is False):
            use(key, owner_of.get(key), key)
    backend_entries = _backend_entries(user, origin)
    for entry in backend_entries:
        if isinstance(entry.get("type"), str):
            use(entry["type"], backend_owner.get(entry["type"]), "visualizer.vis_backends")

    all_schema = {key: spec for schema in schemas.values() for key, spec in schema.items()}
    merged = validate(user, all_schema, origin)
    config = {key: value for key, value in merged.items() if owner_of[key] in active}
    for key, value in config.items():  # an active plugin's switch reads as on, however it was activated
        if owner_of[key] != "core" and isinstance(value, dict) and "enabled" in value:
            value["enabled"] = True
    backend_variants = Variants({kind: cls.options for kind, cls in backends.items()}, None)
    config["visualizer"]["vis_backends"] = [
        validate_table(entry, backend_variants, origin, f"visualizer.vis_backends[{i}]")
        for i, entry in enumerate(backend_entries)
    ]

    for plugin in candidates:
        if plugin.name not in active:
            pm.unregister(name=plugin.name)
    pm.check_pending()
    plugin_set = PluginSet([p for p in candidates if p.name in active], pm,
                           {k: c for k, c in backends.items() if backend_owner[k] in active})
    try:
        pm.hook.configure(config=config)
    except ConfigError:
        raise
    except Exception as err:
        raise PosecoreError(f"{plugin_set.blame(err) or 'configure'}: {type(err).__name__}: {err}") from err
    check_requirements(config.get("require", []))
    check_dependencies(config, all_schema, origin)
    backends_used = {f"visualizer.vis_backends[{i}]": entry
                     for i, entry in enumerate(config["visualizer"]["vis_backends"])}
    check_dependencies(backends_used, dict.fromkeys(backends_used, backend_variants), origin)
    return config, plugin_set


def _plugin_names(user: Mapping[str, Any], origin: Any) -> list[str]:
    names = user.get("plugins", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{origin('plugins')}: 'plugins' must be an array of strings, e.g. [\"amp\"]")
    return list(names)


def _owners(schemas: Mapping[str, Schema]) -> dict[str, str]:
    owner_of: dict[str, str] = {}
    for plugin, schema in schemas.items():
        for key in schema:
            if key in owner_of:
                raise PosecoreError(f"config key '{key}' is claimed by plugins '{owner_of[key]}' and '{plugin}'; "
                                    f"uninstall one")
            owner_of[key] = plugin
    return owner_of


def _backends(pm: pluggy.PluginManager) -> tuple[dict[str, str], dict[str, type]]:
    owner: dict[str, str] = {}
    classes: dict[str, type] = {}
    for plugin, provided in call_each(pm, "vis_backends").items():
        for kind, cls in provided.items():
            if kind in owner:
                raise PosecoreError(f"vis backend '{kind}' is provided by plugins '{owner[kind]}' and '{plugin}'")
            owner[kind], classes[kind] = plugin, cls
    return owner, classes


def _backend_entries(user: Mapping[str, Any], origin: Any) -> list[dict[str, Any]]:
    visualizer = user.get("visualizer", {})
    entries = visualizer.get("vis_backends", [{"type": "LocalVisBackend"}]) if isinstance(visualizer, dict) else []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{origin('visualizer.vis_backends')}: 'visualizer.vis_backends' must be an array of "
                          f"tables, e.g. [{{type = \"LocalVisBackend\"}}]")
    return entries


def check_requirements(requirements: list[str]) -> None:
    """Check ``require = ["posecore-amp>=0.1", ...]`` against the installed distributions."""
    from packaging.requirements import InvalidRequirement, Requirement

    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement as err:
            raise ConfigError(f"require: {text!r} is not a requirement ({err})") from None
        plugin = req.name[len("posecore-"):] if req.name.startswith("posecore-") else None
        hint = install_hint(plugin) if plugin in FIRST_PARTY_PROVIDES.values() else f"pip install '{text}'"
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(f"require: {req.name} is not installed: {hint}") from None
        if not req.specifier.contains(version, prereleases=True):
            raise ConfigError(f"require: {text} but {req.name} {version} is installed: {hint}")


def load_config(path: str | Path, overrides: Iterable[str | tuple[str, str]] = (), cli_plugins: Iterable[str] = (),
                extra: Iterable[PluginInfo] = ()) -> tuple[dict[str, Any], PluginSet]:
    """Read a TOML config, apply overrides, activate plugins and validate.

    An override is ``KEY=VALUE`` from ``--cfg-options``, or ``(KEY=VALUE, flag)`` for one that a shorthand
    flag (``--amp``) stands for: errors about its key then name that flag, the one the user typed.
    """
    path = Path(path)
    user = read_toml(path)
    set_by: dict[str, str] = {}
    for override in overrides:
        text, flag = (override, "--cfg-options") if isinstance(override, str) else override
        set_by.update(dict.fromkeys(apply_overrides(user, [text]), flag))

    def origin(key: str) -> str:
        flags = [flag for t, flag in set_by.items() if t == key or t.startswith(key + ".") or key.startswith(t + ".")]
        return " and ".join(dict.fromkeys(flags)) or str(path)

    user.setdefault("work_dir", str(Path("work_dirs") / path.stem))
    return resolve(user, origin, cli_plugins, extra=extra)


def module_plugin(name: str, module: ModuleType | object, version: str = "0") -> PluginInfo:
    """Wrap an object with hook implementations as a plugin, without an entry point."""
    return PluginInfo(name, name, version, module)
