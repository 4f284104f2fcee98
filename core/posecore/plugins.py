"""Plugin discovery, activation and the config that results from both.

Activation rule (the one place it is decided): the core is always active; an installed plugin is
active when it is *named* (``plugins = ["amp"]`` in TOML or ``--plugin amp``) or when the config
*uses what it provides*: a top-level key or section it owns (``[amp]``, ``resume``, ``[randomness]``)
or a vis backend type it registers (``TensorboardVisBackend``). A section whose ``enabled`` key is
set to false does not activate. ``no:NAME`` (TOML or ``--plugin no:NAME``) blocks a plugin, which
then may not be used. A named plugin that provides vis backends, none of which ``visualizer.vis_backends``
lists, gets them appended with their defaults: ``--plugin tensorboard`` alone logs to TensorBoard. The CLI
shorthands map onto config keys: ``--amp`` is ``amp.enabled=true``, ``--resume`` is ``resume=true``,
``--resume PATH`` adds ``load_from=PATH``.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Callable, Iterable, Iterator, Mapping

import pluggy

from posecore import __version__, hookspecs
from posecore.compose import compose
from posecore.config import Schema, Section, Types, Variants, check_dependencies, validate, validate_table
from posecore.errors import ConfigError, PosecoreError

ENTRY_POINT_GROUP = "posecore"

# What first-party plugins provide, so a config that uses it without the plugin names the install.
FIRST_PARTY_PROVIDES = {
    "amp": "amp",
    "resume": "resume",
    "randomness": "seed",
    "TensorboardVisBackend": "tensorboard",
    "MLflowVisBackend": "mlflow",
    "WandbVisBackend": "wandb",
    "ema": "ema",
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

    def __init__(self, active: list[PluginInfo], pm: pluggy.PluginManager, types: Provided) -> None:
        self.active = active
        self.pm = pm
        self.hook = pm.hook
        self.types = types
        """The component types of the active plugins: ``{kind: {type name: (plugin, class or reference)}}``."""
        self.monitored = False
        """Set when pluggy call monitoring or tracing is on: every hook call then goes through pluggy."""

    def type_of(self, kind: str, name: str) -> type:
        """The class of component type ``name`` of ``kind`` (``"model"``, ``"dataset"``, ``"codec"``,
        ``"metric"``, ``"vis_backend"``), imported now if its plugin gave a reference."""
        return load_type(*self.types[kind][name])

    def build(self, kind: str, entry: Mapping[str, Any], **context: Any) -> Any:
        """An instance of the type a validated config table names: ``cls(**context, **its options)`` (keys the
        core reads for every type of the kind, such as ``model.flip_test``, are left out)."""
        cls = self.type_of(kind, entry["type"])
        return cls(**context, **{key: value for key, value in entry.items() if key in cls.options.keys})

    def layout(self, dataset: Mapping[str, Any]) -> Any:
        """The keypoint layout of a validated ``*_dataloader.dataset`` table (its type's ``layout``)."""
        return self.type_of("dataset", dataset["type"]).layout(dataset)

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
    types = provided_types(pm)

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
    listed = _backend_entries(user, origin)
    backend_entries = listed + _backends_of_named(wanted, types, listed)
    for entry in backend_entries:
        if isinstance(entry.get("type"), str):
            use(entry["type"], _owner(types, "vis_backend", entry["type"]), "visualizer.vis_backends")
    for kind, place in _TYPE_PLACES:
        table = _table_at(user, place)
        if isinstance(table.get("type"), str):
            use(table["type"], _owner(types, kind, table["type"]), f"{place}.type")

    all_schema = with_types({key: spec for schema in schemas.values() for key, spec in schema.items()}, types)
    merged = validate(user, all_schema, origin)
    config = {key: value for key, value in merged.items() if owner_of[key] in active}
    for key, value in config.items():  # an active plugin's switch reads as on, however it was activated
        if owner_of[key] != "core" and isinstance(value, dict) and "enabled" in value:
            value["enabled"] = True
    backend_variants = _variants(types, "vis_backend", None)
    config["visualizer"]["vis_backends"] = [
        validate_table(entry, backend_variants, origin, f"visualizer.vis_backends[{i}]")
        for i, entry in enumerate(backend_entries)
    ]

    for plugin in candidates:
        if plugin.name not in active:
            pm.unregister(name=plugin.name)
    pm.check_pending()
    plugin_set = PluginSet([p for p in candidates if p.name in active], pm,
                           {kind: {name: ref for name, ref in named.items() if ref[0] in active}
                            for kind, named in types.items()})
    try:
        pm.hook.configure(config=config)
    except ConfigError:
        raise
    except Exception as err:
        raise PosecoreError(f"{plugin_set.blame(err) or 'configure'}: {type(err).__name__}: {err}") from err
    check_requirements(config.get("require", []))
    check_dependencies(config, all_schema, origin)
    _check_layouts(config, plugin_set, origin)
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


TYPE_HOOKS = {"model": "model_types", "dataset": "dataset_types", "codec": "codec_types",
              "metric": "metric_types", "vis_backend": "vis_backends"}
"""The hook through which plugins provide each kind of component type."""

_TYPE_PLACES = (("model", "model"), ("dataset", "train_dataloader.dataset"), ("dataset", "val_dataloader.dataset"),
                ("codec", "codec"), ("metric", "val_evaluator"))
"""The config tables whose ``type`` names a component type (vis backends: the array ``visualizer.vis_backends``)."""

Provided = Mapping[str, Mapping[str, tuple[str, Any]]]
"""``{kind: {type name: (plugin, class or "module:attribute" reference)}}``."""


def provided_types(pm: pluggy.PluginManager) -> dict[str, dict[str, tuple[str, Any]]]:
    """Every component type the registered plugins provide, by kind; a name two plugins provide for one kind
    stops every command (which of them would a config mean?)."""
    types: dict[str, dict[str, tuple[str, Any]]] = {}
    for kind, hook in TYPE_HOOKS.items():
        found = types[kind] = {}
        for plugin, provided in call_each(pm, hook).items():
            for name, ref in provided.items():
                if name in found:
                    raise PosecoreError(f"{kind.replace('_', ' ')} type '{name}' is provided by plugins "
                                        f"'{found[name][0]}' and '{plugin}'; uninstall one")
                found[name] = (plugin, ref)
    return types


def load_type(plugin: str, ref: Any) -> type:
    """The class a plugin registered: itself, or imported from its ``"module:attribute"`` reference (so that
    listing types imports nothing heavy). A reference that fails to import blames the plugin."""
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in attribute.split("."):
            found = getattr(found, part)
    except Exception as err:
        raise PosecoreError(f"plugin '{plugin}': its type {ref} failed to import: {type(err).__name__}: "
                            f"{err}") from err
    return found


class _TypeOptions(Mapping[str, Section]):
    """The option sections of one kind's types, each type's class imported only when its section is read."""

    def __init__(self, named: Mapping[str, tuple[str, Any]], common: Mapping[str, Any],
                 defaults: Mapping[str, Mapping[str, Any]]) -> None:
        self.named, self.common, self.defaults = named, common, defaults

    def __getitem__(self, name: str) -> Section:
        options = load_type(*self.named[name]).options
        keys = {**self.common, **options.keys}
        for key, default in self.defaults.get(name, {}).items():
            keys[key] = replace(keys[key], default=default)
        return Section(keys, options.help, options.requires)

    def __iter__(self) -> Iterator[str]:
        return iter(self.named)

    def __len__(self) -> int:
        return len(self.named)


def _variants(types: Provided, kind: str, spec: Types | None) -> Variants:
    named = types.get(kind, {})
    options = _TypeOptions(named, spec.common if spec else {}, spec.defaults if spec else {})
    return Variants(options, (spec.default or None) if spec else None, spec.help if spec else "",
                    {name: plugin for name, (plugin, _) in named.items()})


def with_types(schema: Schema, types: Provided) -> Schema:
    """``schema`` with each :class:`~posecore.config.Types` table made a :class:`~posecore.config.Variants` of
    the installed types of its kind."""
    filled: dict[str, Any] = {}
    for name, spec in schema.items():
        if isinstance(spec, Types):
            spec = _variants(types, spec.kind, spec)
        elif isinstance(spec, Section):
            spec = Section(with_types(spec.keys, types), spec.help, spec.requires)
        filled[name] = spec
    return filled


def reference_page() -> str:
    """``posecore config --reference``: every key of the core and the installed plugins, with every installed
    component type's options."""
    from posecore.config import reference

    pm = new_manager()
    for plugin in [core_plugin()] + discover():
        pm.register(plugin.module, name=plugin.name)
    types = provided_types(pm)
    schemas = {owner: with_types(schema, types) for owner, schema in call_each(pm, "config_schema").items()}
    return reference(schemas, _variants(types, "vis_backend", Types("vis_backend", "", "Where scalars go.")))


def _owner(types: Provided, kind: str, name: str) -> str | None:
    return types.get(kind, {}).get(name, (None,))[0]


def _table_at(user: Mapping[str, Any], place: str) -> Mapping[str, Any]:
    node: Any = user
    for part in place.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def _check_layouts(config: Mapping[str, Any], plugin_set: PluginSet, origin: Any) -> None:
    """Both datasets must describe one keypoint layout (or at least as many keypoints): one model predicts one. The
    half body needs the training layout's upper body."""
    layouts = []
    for section in ("train_dataloader", "val_dataloader"):
        try:
            layouts.append(plugin_set.layout(config[section]["dataset"]))
        except ValueError as err:
            raise ConfigError(f"{origin(section + '.dataset')}: {section}.dataset: {err}") from None
    for key, options in (("augment.half_body_prob", config["augment"]),
                         ("augment.switch.half_body_prob", config["augment"]["switch"])):
        if (options.get("half_body_prob") or 0) > 0 and layouts[0].upper_body is None:
            raise ConfigError(f"{origin(key)}: {key} > 0 needs the upper body's keypoints: set "
                              f"train_dataloader.dataset.upper_body (0-based indices)")
    counts = [layout.num_keypoints for layout in layouts]
    if counts[0] != counts[1]:
        raise ConfigError(f"train_dataloader.dataset has {counts[0]} keypoints but val_dataloader.dataset has "
                          f"{counts[1]}; one model predicts one layout")


def _backends_of_named(named: Iterable[str], types: Provided, listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The vis backends to append for the named plugins whose backends ``listed`` has none of, as ``{"type": ...}``
    tables (validation fills in the defaults)."""
    listed_types = {entry["type"] for entry in listed if isinstance(entry.get("type"), str)}
    added = []
    for plugin in named:
        provided = [name for name, (owner, _) in types["vis_backend"].items() if owner == plugin]
        if listed_types.isdisjoint(provided):
            added += [{"type": name} for name in provided]
    return added


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
    """Read a TOML config with its bases (``extends``), apply overrides, resolve ``${key}`` references, activate
    plugins and validate. Errors name the file or flag that set the key (:func:`posecore.compose.compose`).

    An override is ``KEY=VALUE`` from ``--cfg-options``, or ``(KEY=VALUE, flag)`` for one that a shorthand
    flag (``--amp``) stands for: errors about its key then name that flag, the one the user typed.
    """
    path = Path(path)
    composition = compose(path, overrides)
    composition.config.setdefault("work_dir", str(Path("work_dirs") / path.stem))
    return resolve(composition.config, composition.origin, cli_plugins, extra=extra)


def module_plugin(name: str, module: ModuleType | object, version: str = "0") -> PluginInfo:
    """Wrap an object with hook implementations as a plugin, without an entry point."""
    return PluginInfo(name, name, version, module)
