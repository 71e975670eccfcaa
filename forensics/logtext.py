"""The message of a log line, without the header its own logging framework wrote.

Logs collected from files or stdout (the Collector's filelog receiver, Loki's
promtail) carry each framework's header in the body: logback/log4j
``2024-05-01 14:00:00.123 ERROR [http-nio-8080-exec-1] c.s.ContactsServiceImpl#42
TraceID: … SpanID: … - message``, Python ``logging`` (``ERROR:root:message``, or
``asctime levelname name message``), Go's ``2024/05/01 14:00:00 message``, JSON
lines and logfmt. Templating the header gives templates such as
``<NUM>:<NUM>:<NUM> ERROR c.s.X#<NUM> TraceID: <HEX>``, which say nothing; so
templates, fingerprints and titles are built from :func:`message` instead.
The full line is still what the trace view shows.
"""

from __future__ import annotations

import functools
import json
import re

_TS = (r"(?:\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"
       r"|\d{4}/\d{2}/\d{2}[ T]\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?"
       r"|\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?"
       r"|[A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2}"  # syslog
       r"|\d{10}(?:\.\d+)?)")  # epoch seconds
_LEVEL = (r"(?:(?:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|FATAL|CRITICAL|SEVERE|FINE)(?![\w.])"
          r"|[TDIWEF](?=\d{4}\s))")  # glog: E1205 10:00:00.123456
_IDS = r"(?:trace[_ -]?id|span[_ -]?id|traceid|spanid|dd\.trace_id|dd\.span_id)\s*[:=]\s*\[?[0-9a-fA-F-]{8,}\]?"
_SEP = r"[\s\-:|,;>\]]*"
# Header pieces that may start a line, in any order.
_HEAD = [
    re.compile(rf"^\[?{_TS}\]?{_SEP}"),
    re.compile(rf"^[\[<(]?{_LEVEL}[\]>)]?{_SEP}"),  # upper case: "Error while ..." is a message
    re.compile(rf"^\[?{_IDS}\]?{_SEP}", re.IGNORECASE),
    re.compile(rf"^\[[^\]\n]{{1,80}}\]{_SEP}"),  # [thread], [main], [pid 42]
    re.compile(r"^\d{1,7}\s+(?:---\s+)?(?=\S)"),  # a pid: "12345 ERROR ...", Spring's "1 --- [main]"
]
# A logger name once a level was seen: dotted (com.acme.Svc, c.s.ContactsServiceImpl#42, uvicorn.error)
# and followed by a separator, or with a line number; Python's "LEVEL:name:message" form.
_LOGGER = re.compile(r"^(?:[A-Za-z_$][\w$]*\.)+(?:\[[^\]\s]*\]\.?)+(?:[#:]\d+)?\s+"  # Tomcat's o.a.c.c.C.[.[.[/].[x]#175
                     r"|^(?:[A-Za-z_$][\w$]*\.)+[\w$]+(?:[#:]\d+)?\]?(?:\s+-\s+|\s*:\s+|\s+\|\s+|\s+(?=\S))"
                     r"|^[A-Za-z_$][\w$]*[#:]\d+\s*[:-]?\s+"
                     r"|^[A-Za-z_][\w.]*:(?=\S)")
_LEVEL_TOKEN = re.compile(rf"^{_LEVEL}$")
_IDS_ANYWHERE = re.compile(rf"\s*\[?{_IDS}\]?,?", re.IGNORECASE)
_LOGFMT_MSG = re.compile(r'(?:^|\s)(?:msg|message)=(?:"((?:[^"\\]|\\.)*)"|(\S+))')
_MESSAGE_KEYS = ("message", "msg", "@message", "log", "event", "text")


@functools.lru_cache(maxsize=1 << 16)  # pure, and the same error line repeats thousands of times
def message(text: str, level_seen: bool = False) -> str:
    """The message part of one log line (the line itself when it has no header).
    ``level_seen``: the line's level was already cut (by a learned prefix), so a logger
    name may come first."""
    s = text.strip()
    if not s:
        return s
    if s[0] == "{":
        try:
            doc = json.loads(s)
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            for k in _MESSAGE_KEYS:
                v = doc.get(k)
                if isinstance(v, str) and v.strip():
                    return message(v) if v.strip() != s else v.strip()
            return s
    m = _LOGFMT_MSG.search(s)
    if m and re.match(r"^[\w.@-]+=", s):  # logfmt: the line starts with key=value
        return (m.group(1) if m.group(1) is not None else m.group(2)).replace('\\"', '"').strip()
    out, saw_level, saw_head, saw_logger = s, level_seen, level_seen, False
    for _ in range(12):  # a header has a handful of pieces; bounded either way
        for i, rx in enumerate(_HEAD):
            if saw_logger and i != 2:
                continue  # after the logger name only ids remain of the header: "[a][b]" is the message
            m = rx.match(out)
            if m and m.end() > 0 and m.end() < len(out):
                saw_head = True
                saw_level = saw_level or i == 1
                out = out[m.end():]
                break
        else:
            if saw_level:
                m = _LOGGER.match(out)
                if m and m.end() < len(out):
                    out = out[m.end():]
                    saw_level = False  # one logger name per header
                    saw_logger = True
                    continue
            break
    if saw_head or out is not s:
        out = _IDS_ANYWHERE.sub("", out).strip(" -:|")
    return out or s


# --- A service's constant line prefix, learned from its own lines -------------------------
# The regexes above know the common frameworks. A service with a format of its own still
# writes the same *shape* of header on every line (a time, a level, a thread, a logger,
# ids), so the header is learned from the lines themselves: the longest run of leading
# tokens whose shape (digits, hex ids and letters folded) is the same on nearly every line
# and looks like a header field, not like a word of a sentence.

_HEXID = re.compile(r"^[0-9a-fA-F-]{8,}$")
_HEXRUN = re.compile(r"(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}")


def _shape(tok: str) -> str:
    if _HEXID.match(tok) and any(c.isdigit() for c in tok):
        return "H"
    out = _HEXRUN.sub("H", tok)  # ids inside a token: rid=7ed4d57b1e2feb89
    out = re.sub(r"\d+", "9", out)
    out = re.sub(r"[A-Z]+", "A", out)
    return re.sub(r"[a-z]+", "a", out)


def _headerish(tok: str, shape: str) -> bool:
    """A field a header has (time, level, ids, logger#line, [thread], key:), not a plain word."""
    if shape in ("a", "Aa", "aAa", "AaAa"):
        return False  # a word: the message has begun
    return (any(c.isdigit() for c in tok) or shape == "H" or tok.isupper() or tok.endswith(":")
            or tok.startswith(("[", "<", "(")) or "." in tok or "#" in tok or "=" in tok)


def learn_prefix(lines: list[str], min_lines: int = 20, agree: float = 0.9) -> list[str]:
    """The shapes of a service's constant header tokens, learned from its lines (empty when
    there are too few lines or no common header)."""
    if len(lines) < min_lines:
        return []
    toks = [ln.split() for ln in lines[:2000]]
    prefix: list[str] = []
    for i in range(12):
        shapes: dict[str, int] = {}
        for t in toks:
            if len(t) > i + 1:  # a header is followed by a message
                s = _shape(t[i])
                if _headerish(t[i], s):
                    shapes[s] = shapes.get(s, 0) + 1
        if not shapes:
            break
        s, n = max(shapes.items(), key=lambda kv: kv[1])
        if n < agree * len(toks):
            break
        prefix.append(s)
    return prefix


def strip_learned(text: str, prefix: list[str]) -> str:
    """``text`` without its learned header, when the line has it; else :func:`message`."""
    if prefix:
        toks = text.split()
        if len(toks) > len(prefix) and all(_shape(t) == s for t, s in zip(toks, prefix)):
            rest = text.strip()
            for t in toks[:len(prefix)]:  # cut token by token, keeping the message's own spacing
                rest = rest[rest.index(t) + len(t):].lstrip()
            rest = rest.lstrip(" -:|>")  # the header's own separator
            # a logger name may follow a level the prefix took (one class per line: not constant)
            level = any(_LEVEL_TOKEN.match(t.strip("[]<>()|")) for t in toks[:len(prefix)])
            return message(rest, level_seen=level) if rest else text
    return message(text)


class MessageTexts:
    """Message texts of many log records: headers cut by the framework rules and by each
    service's learned prefix. ``text(rec)`` after ``learn(records)``."""

    def __init__(self) -> None:
        self.prefix: dict[str, list[str]] = {}
        self._memo: dict[tuple[str, str], str] = {}  # (service, body) -> text: the same error repeats

    def learn(self, records) -> "MessageTexts":
        from .logmining import body_text
        by_svc: dict[str, list[str]] = {}
        for r in records:
            b = body_text(r)
            if b:
                by_svc.setdefault(r.service_name, []).append(b)
        self.prefix = {svc: learn_prefix(lines) for svc, lines in by_svc.items()}
        return self

    def text(self, rec) -> str:
        from .logmining import body_text
        body, svc = body_text(rec), rec.service_name
        hit = self._memo.get((svc, body))
        if hit is None:
            hit = strip_learned(body, self.prefix.get(svc, []))
            if len(self._memo) < 200_000:  # bounded memory
                self._memo[(svc, body)] = hit
        return hit
