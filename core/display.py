"""What a human-facing view does to strings that came from telemetry.

Span names, service names, attribute values and log bodies are whatever an exporter
sent. Two things in them must not reach a reader unchanged:

- control and bidirectional-override characters (NUL, ESC ``[31m``, CR, U+202E ...):
  on a terminal they recolour, overwrite or reverse what the report says, so the text
  views (:func:`visible`) print them as escapes (``\\x1b``, ``\\u202e``). JSON keeps the
  true string (it escapes them itself) and HTML escapes as HTML.
- megabyte values: a view shows at most :data:`MAX_SHOWN_BYTES` of one value
  (:func:`shown`), with a marker of how much was cut. The store keeps the whole value.

One place for both, so each renderer does not grow its own rules.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

MAX_SHOWN_BYTES = 4096  # of one attribute value or log body in a view (UTF-8 bytes); docs/report-schema.md

# C0 and C1 controls, DEL, and the characters that reorder text (Trojan Source, CVE-2021-42574):
# bidi embeddings/overrides/isolates and marks, and the line/paragraph separators some terminals honour.
_HIDDEN = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F),
           *range(0x2066, 0x206A), 0x2028, 0x2029]
_ESCAPES = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _HIDDEN}
_ESCAPES_KEEP_NEWLINES = {c: e for c, e in _ESCAPES.items() if c != 0x0A}


_NEEDS_ESCAPE = re.compile("[" + "".join(re.escape(chr(c)) for c in _HIDDEN) + "]")
_SCALARS = (int, float, bool, type(None))


def visible(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every control or bidi character written as its escape, so a terminal
    shows the name as sent instead of obeying it. ``keep_newlines`` for our own multi-line
    messages (the alert log), where only the values inside need escaping."""
    return text.translate(_ESCAPES_KEEP_NEWLINES if keep_newlines else _ESCAPES)


def visible_tree(obj: Any) -> Any:
    """A copy of ``obj`` (a report, or the dicts, lists and dataclasses in it) with
    :func:`visible` applied to every string, keys included: what the text renderers draw.
    Parts with nothing to escape are returned as they are (a 2,000-span trace report is
    mostly such parts; copying them doubled the cost of the walk)."""
    t = type(obj)
    if t is str:
        return obj.translate(_ESCAPES) if _NEEDS_ESCAPE.search(obj) else obj
    if t in _SCALARS:
        return obj
    if t is dict:
        out = {visible_tree(k): visible_tree(v) for k, v in obj.items()}
        return obj if all(a is b for a, b in zip(out.values(), obj.values())) and out.keys() == obj.keys() else out
    if t is list or t is tuple:
        items = [visible_tree(v) for v in obj]
        return obj if all(a is b for a, b in zip(items, obj)) else t(items)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {}
        for f in dataclasses.fields(obj):
            if f.init:
                v = getattr(obj, f.name)
                nv = visible_tree(v)
                if nv is not v:
                    changed[f.name] = nv
        return dataclasses.replace(obj, **changed) if changed else obj
    return obj  # numpy scalars and arrays, sets, bytes: not drawn as telemetry text


def shown(value: Any, limit: int = MAX_SHOWN_BYTES) -> Any:
    """``value`` as a view shows it: a string (or bytes) over ``limit`` UTF-8 bytes is cut
    there, with ``… [+N bytes]`` saying how much is left out; strings inside arrays and
    maps likewise. Other values are returned as they are."""
    if isinstance(value, str):
        if len(value) <= limit // 4:  # at most 4 bytes a character: short enough without encoding
            return value
        raw = value.encode("utf-8", "surrogatepass")
        if len(raw) <= limit:
            return value
        head = raw[:limit].decode("utf-8", "ignore")  # a character cut in two is dropped whole
        return f"{head}… [+{len(raw) - len(head.encode('utf-8', 'surrogatepass'))} bytes]"
    if isinstance(value, (bytes, bytearray)):
        return value if len(value) <= limit else f"{bytes(value[:limit])!r}… [+{len(value) - limit} bytes]"
    if isinstance(value, dict):
        return {k: shown(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [shown(v, limit) for v in value]
    return value


_SEVERITY_NAMES = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")  # OTLP SeverityNumber 1-4, 5-8, ... 21-24


def severity_name(text: str | None, number: int) -> str:
    """A log record's level as a view shows it: its own severity text, else the name of
    its OTLP SeverityNumber range (17 -> ERROR), else the number."""
    if text:
        return text
    return _SEVERITY_NAMES[(number - 1) // 4] if 1 <= number <= 24 else str(number)
