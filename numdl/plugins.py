"""The plugin manager and the registry of named layers, losses and optimizers.

``plugin_manager()`` loads numdl's built-ins and every package of the ``numdl`` entry-point group
once. ``registry()`` asks every plugin for its items and indexes them by name; it is rebuilt when a
plugin is registered or unregistered through ``register``/``unregister``.
"""

import pluggy

from numdl import hookspecs
from numdl.errors import RegistryError, UnknownNameError

KINDS = ("layer", "loss", "optimizer", "schedule", "dataset", "metric", "callback")
PLURALS = {"layer": "layers", "loss": "losses", "optimizer": "optimizers", "schedule": "schedules",
           "dataset": "datasets", "metric": "metrics", "callback": "callbacks"}
_HOOKS = {"layer": "numdl_register_layers", "loss": "numdl_register_losses",
          "optimizer": "numdl_register_optimizers", "schedule": "numdl_register_schedules",
          "dataset": "numdl_register_datasets", "metric": "numdl_register_metrics",
          "callback": "numdl_register_callbacks"}

_manager = None
_registry = None


class Entry:
    """One registered item: the class and the plugin that registered it."""

    __slots__ = ("name", "cls", "source")

    def __init__(self, name, cls, source):
        self.name, self.cls, self.source = name, cls, source


class Registry:
    def __init__(self, items):
        self.items = items  # kind -> {name: Entry}

    def get(self, kind, name):
        table = self.items[kind]
        if name not in table:
            from numdl.config import short

            raise UnknownNameError(f"unknown {kind} {short(name)}; available: {', '.join(sorted(table))}")
        return table[name].cls

    def names(self, kind):
        return sorted(self.items[kind])


def create_plugin_manager():
    """A new manager holding numdl's built-ins and every installed ``numdl`` entry point."""
    pm = pluggy.PluginManager("numdl")
    pm.add_hookspecs(hookspecs.NumdlHookSpecs)
    from numdl import builtin

    pm.register(builtin, name="numdl")
    pm.load_setuptools_entrypoints("numdl")
    return pm


def plugin_manager():
    """The process-wide manager, created on first use."""
    global _manager
    if _manager is None:
        _manager = create_plugin_manager()
    return _manager


def source_name(pm, plugin):
    """'plugin-name (package version)' of a registered plugin."""
    name = pm.get_name(plugin)
    for dist_plugin, dist in pm.list_plugin_distinfo():
        if dist_plugin is plugin:
            return f"{name} ({dist.project_name} {dist.version})"
    return name


def build_registry(pm):
    """Index every plugin's items by name; a duplicate name raises RegistryError naming both."""
    items = {kind: {} for kind in KINDS}
    for kind in KINDS:
        hook = getattr(pm.hook, _HOOKS[kind])
        for impl in hook.get_hookimpls():
            source = source_name(pm, impl.plugin)
            for cls in impl.function() or ():
                name = getattr(cls, "name", None)
                if not isinstance(name, str) or not name:
                    raise RegistryError(f"{kind} class {cls.__qualname__} from plugin {source} has no 'name'")
                if name in items[kind]:
                    other = items[kind][name].source
                    raise RegistryError(f"duplicate {kind} name {name!r}: registered by {other} and by {source}")
                items[kind][name] = Entry(name, cls, source)
    return Registry(items)


def registry():
    global _registry
    if _registry is None:
        _registry = build_registry(plugin_manager())
    return _registry


def register(plugin, name=None):
    """Register a plugin module or object at run time (tests, notebooks); returns its name."""
    global _registry
    registered = plugin_manager().register(plugin, name=name)
    _registry = None
    try:
        registry()
    except RegistryError:
        plugin_manager().unregister(plugin)
        _registry = None
        raise
    return registered


def unregister(plugin):
    global _registry
    plugin_manager().unregister(plugin)
    _registry = None
