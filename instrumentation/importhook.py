"""Post-import hooks: run a callback right after a module has executed.

Why not wrap at instrument time: ``opentelemetry-instrument`` runs before the app
imports anything, and importing an ML library (or the user's module) early
would cost start-up time, change import order and break apps that configure
things before importing. A meta-path finder lets us wrap a module's callables
the moment the app imports it, and never otherwise.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from collections.abc import Callable
from types import ModuleType

from . import deferred

_logger = logging.getLogger(__name__)

Callback = Callable[[ModuleType], None]


class _Registry:
    def __init__(self) -> None:
        self.exact: dict[str, list[Callback]] = {}
        self.prefix: dict[str, list[Callback]] = {}  # top-level name -> callbacks for it and all submodules
        # Serialises when_imported/clear only. The import path (find_spec, exec_module)
        # never takes it: it runs under import locks, and must wait for no other thread.
        self.lock = threading.RLock()

    def callbacks_for(self, name: str) -> list[Callback]:
        # Lock-free: dict.get and list() of a list are each atomic under the GIL, and
        # lists are only ever appended to.
        found = list(self.exact.get(name, ()))
        top = name.partition(".")[0]
        found.extend(self.prefix.get(top, ()))
        return found

    def clear(self) -> None:
        self.exact.clear()
        self.prefix.clear()


_registry = _Registry()


def _reinit_lock_in_child() -> None:
    # A thread of the parent may have held the lock at fork time; it does not exist here,
    # and shutdown's fork handler calls when_imported in the child.
    _registry.lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_lock_in_child)


def _run(callbacks: list[Callback], module: ModuleType) -> None:
    """Run the callbacks for ``module``. Called under its import lock: nothing here may
    wait for another thread, so a failure is reported through :mod:`.deferred`."""
    for cb in callbacks:
        try:
            cb(module)
        except Exception:  # a hook must never break the app's import
            deferred.warning(_logger, "stagetrace: post-import hook for %s failed", module.__name__, exc_info=True)


class _HookLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the callbacks."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):  # noqa: D401 - loader protocol
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create else None

    def exec_module(self, module: ModuleType) -> None:
        # Put the real loader back first so reloads and introspection see it.
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        try:
            module.__loader__ = self._loader
        except Exception:
            pass
        self._loader.exec_module(module)
        _run(_registry.callbacks_for(module.__name__), module)

    def __getattr__(self, name):  # get_resource_reader, is_package, get_code...
        return getattr(self._loader, name)


class _HookFinder(importlib.abc.MetaPathFinder):
    """Intercepts only watched module names; everything else costs one dict lookup."""

    _local = threading.local()

    def find_spec(self, fullname, path=None, target=None):
        if not _registry.callbacks_for(fullname):
            return None
        if getattr(self._local, "busy", False):
            return None
        self._local.busy = True
        try:
            for finder in sys.meta_path:
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._local.busy = False
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # namespace package or legacy loader: nothing to execute
        spec.loader = _HookLoader(spec.loader)
        return spec


_finder = _HookFinder()


def _ensure_finder() -> None:
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def when_imported(name: str, callback: Callback, *, submodules: bool = False) -> None:
    """Call ``callback(module)`` once ``name`` is imported (now, if it already is).

    With ``submodules=True``, ``name`` must be a top-level package and the
    callback runs for it and every submodule as each is imported.
    """
    with _registry.lock:
        if submodules:
            _registry.prefix.setdefault(name, []).append(callback)
        else:
            _registry.exact.setdefault(name, []).append(callback)
        _ensure_finder()
        if submodules:
            loaded = [m for n, m in list(sys.modules.items()) if (n == name or n.startswith(name + ".")) and m is not None]
        else:
            loaded = [sys.modules[name]] if sys.modules.get(name) is not None else []
    for module in loaded:
        _run([callback], module)


def clear() -> None:
    """Forget every pending hook and remove the finder (used by uninstrument)."""
    with _registry.lock:
        _registry.clear()
        try:
            sys.meta_path.remove(_finder)
        except ValueError:
            pass
