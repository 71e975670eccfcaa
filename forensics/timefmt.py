"""Durations and instants as every report prints them.

A module of its own, with no numpy, so that ``stagetrace trace`` (its report and
renderers) does not import the analysis modules' numpy just to format numbers:
that import was ~80-120 ms of the command's CPU time (docs/benchmarks.md)."""

from __future__ import annotations


def fmt_ms(ns: float) -> str:
    ms = ns / 1e6
    if ms >= 10_000:
        return f"{ms / 1000:.1f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms * 1000:.0f} µs"


def fmt_time(ns: int) -> str:
    import datetime as _dt
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
