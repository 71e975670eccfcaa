"""User-code stages by configuration: ``stage=module:qualname`` entries.

Sources, all merged (first occurrence of a target wins):

1. ``STAGETRACE_STAGES`` — ``;``-separated entries;
2. ``STAGETRACE_CONFIG=path.toml`` — its ``[tool.stagetrace]`` table (or top level);
   otherwise ``[tool.stagetrace]`` in ``./pyproject.toml``.

In TOML, ``stages`` may be the same ``;`` string, a list of ``"stage=module:qualname"``
strings, or a table ``{stage = "module:qualname" | [..]}``.

A bad entry gives one warning naming it and is skipped; the app always starts.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from stagetrace import semconv

from . import deferred

_logger = logging.getLogger("stagetrace.instrumentation")

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_STAGE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_MODULE_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*$")
_QUALNAME_RE = _MODULE_RE


@dataclass(frozen=True)
class StageTarget:
    stage: str
    module: str
    qualname: str
    entry: str  # the text as the user wrote it, for messages
    source: str  # where it came from (env var or file)


def _warn(entry: str, source: str, why: str) -> None:
    # Also called from post-import hooks, under the module's import lock: deferred.
    deferred.warning(_logger, "stagetrace: ignoring stage entry %r from %s: %s", entry, source, why)


def parse_entry(entry: str, source: str) -> StageTarget | None:
    """Parse ``stage=module:qualname``; warn and return None if malformed."""
    text = entry.strip()
    stage, eq, target = text.partition("=")
    stage, target = stage.strip(), target.strip()
    if not eq or not stage or not target:
        _warn(text, source, "expected stage=module:qualname")
        return None
    if not _STAGE_RE.match(stage):
        _warn(text, source, f"invalid stage name {stage!r}")
        return None
    module, colon, qualname = target.partition(":")
    module, qualname = module.strip(), qualname.strip()
    if not colon or not _MODULE_RE.match(module) or not _QUALNAME_RE.match(qualname):
        _warn(text, source, "expected module:qualname, e.g. app.model:Scorer.score")
        return None
    return StageTarget(stage, module, qualname, text, source)


def parse_list(text: str, source: str) -> list[StageTarget]:
    out = []
    for part in text.split(";"):
        if part.strip():
            t = parse_entry(part, source)
            if t is not None:
                out.append(t)
    return out


def _load_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib  # type: ignore[no-redef]
    with open(path, "rb") as f:
        return tomllib.load(f)


def _from_table(stages: Any, source: str) -> list[StageTarget]:
    if isinstance(stages, str):
        return parse_list(stages, source)
    out: list[StageTarget] = []
    if isinstance(stages, list):
        for item in stages:
            if isinstance(item, str):
                t = parse_entry(item, source)
                if t:
                    out.append(t)
            else:
                _warn(repr(item), source, "list items must be strings stage=module:qualname")
        return out
    if isinstance(stages, dict):
        for stage, targets in stages.items():
            for target in [targets] if isinstance(targets, str) else (targets if isinstance(targets, list) else [targets]):
                if not isinstance(target, str):
                    _warn(f"{stage}={target!r}", source, "target must be a string module:qualname")
                    continue
                t = parse_entry(f"{stage}={target}", source)
                if t:
                    out.append(t)
        return out
    _warn(repr(stages), source, "`stages` must be a string, a list or a table")
    return out


def from_file(path: Path, *, pyproject: bool) -> list[StageTarget]:
    source = str(path)
    try:
        data = _load_toml(path)
    except FileNotFoundError:
        if not pyproject:
            deferred.warning(_logger, "stagetrace: %s=%s: file not found; no stages from it", semconv.ENV_CONFIG, path)
        return []
    except Exception as exc:
        deferred.warning(_logger, "stagetrace: cannot read %s (%s); no stages from it", path, exc)
        return []
    table = data.get("tool", {}).get("stagetrace") if isinstance(data.get("tool"), dict) else None
    if table is None and not pyproject:
        table = data
    if not isinstance(table, dict) or "stages" not in table:
        return []
    return _from_table(table["stages"], source)


def tool_table(environ: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """The ``[tool.stagetrace]`` table (or a ``STAGETRACE_CONFIG`` file's top level)
    for settings other than stages; {} when there is none or it cannot be read
    (the stage loader already warned about an unreadable file)."""
    env = os.environ if environ is None else environ
    explicit = env.get(semconv.ENV_CONFIG)
    path = Path(explicit).expanduser() if explicit else (cwd or Path.cwd()) / "pyproject.toml"
    try:
        data = _load_toml(path)
    except Exception:
        return {}
    table = data.get("tool", {}).get("stagetrace") if isinstance(data.get("tool"), dict) else None
    if table is None and explicit:
        table = data
    return table if isinstance(table, dict) else {}


def load(environ: dict[str, str] | None = None, cwd: Path | None = None) -> list[StageTarget]:
    """All configured targets, de-duplicated by target (first source wins)."""
    env = os.environ if environ is None else environ
    targets: list[StageTarget] = []
    if env.get(semconv.ENV_STAGES):
        targets += parse_list(env[semconv.ENV_STAGES], semconv.ENV_STAGES)
    if env.get(semconv.ENV_CONFIG):
        targets += from_file(Path(env[semconv.ENV_CONFIG]).expanduser(), pyproject=False)
    else:
        targets += from_file((cwd or Path.cwd()) / "pyproject.toml", pyproject=True)
    seen: set[tuple[str, str]] = set()
    out = []
    for t in targets:
        key = (t.module, t.qualname)
        if key in seen:
            continue
        seen.add(key)
        out.append(t)
    return out


def by_target(table: dict[str, Any], qualname: str, name: str | None) -> Any:
    """The entry of a per-stage settings table (profile feature names, model names) for
    a span of target ``qualname`` whose model the library calls ``name``: keyed by the
    qualname, the model name, or ``module:qualname``; None when there is none."""
    for key in (qualname, name):
        if key and key in table:
            return table[key]
    suffix = ":" + qualname
    for k, v in table.items():
        if k.endswith(suffix):
            return v
    return None


def module_findable(name: str) -> bool:
    """Whether ``name`` can be imported, *without executing it or any parent not yet imported*.

    Uses the full import machinery (so editable installs and other custom finders
    count) wherever the parent is already imported, and plain path search below
    that. The current directory is searched too: uvicorn and gunicorn put it on
    ``sys.path`` only after we have been loaded.
    """
    if name in sys.modules:
        return True
    parts = name.split(".")
    locations: list[str] = []
    for i in range(len(parts)):
        qual = ".".join(parts[: i + 1])
        module = sys.modules.get(qual)
        if module is not None:
            locations = list(getattr(module, "__path__", None) or [])
            continue
        try:
            if i == 0 or ".".join(parts[:i]) in sys.modules:
                # the parent is imported (or there is none): find_spec executes nothing
                spec = importlib.util.find_spec(qual)
                if spec is None and i == 0:
                    spec = PathFinder.find_spec(qual, [os.getcwd()])
            else:
                spec = PathFinder.find_spec(qual, locations)
        except Exception:
            return False
        if spec is None:
            return False
        locations = list(spec.submodule_search_locations or [])
        if i < len(parts) - 1 and not locations:
            return False  # a plain module cannot have submodules
    return True


def resolve(module: Any, qualname: str) -> tuple[Any, str]:
    """(owner, attribute name) for ``qualname`` inside ``module``; raises AttributeError.

    Called while the module is still initialising, so the message is ours:
    Python's would blame a circular import.
    """
    parts = qualname.split(".")
    owner = module
    path = module.__name__
    for i, p in enumerate(parts):
        if p not in getattr(owner, "__dict__", {}) and not hasattr(type(owner), p) and not (isinstance(owner, type) and hasattr(owner, p)):
            raise AttributeError(f"{path} has no attribute {p!r}")
        if i < len(parts) - 1:
            owner = getattr(owner, p)
            path = f"{path}.{p}"
    return owner, parts[-1]
