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
_IDS_ANYWHERE = re.compile(rf"\s*\[?{_IDS}\]?,?", re.IGNORECASE)
_LOGFMT_MSG = re.compile(r'(?:^|\s)(?:msg|message)=(?:"((?:[^"\\]|\\.)*)"|(\S+))')
_MESSAGE_KEYS = ("message", "msg", "@message", "log", "event", "text")


def message(text: str) -> str:
    """The message part of one log line (the line itself when it has no header)."""
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
    out, saw_level, saw_head, saw_logger = s, False, False, False
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
