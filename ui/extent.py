"""When the search page opens on the data's extent instead of the default range.

Why: the page opens on "last 1h". After ``stagetrace demo`` (a few minutes of
load) or any short burst, every point then sits in one narrow column of the
scatter plot and nothing can be read or brushed. So when the range was not
chosen (no ``since``/``from``/``to`` in the URL) and the matching requests cover
much less of it than :data:`FIT_BELOW`, the search is run again over their extent,
with a margin, and the page puts that range in its URL (``from``/``to``), so the
link shows the same view to anyone who opens it.
"""

from __future__ import annotations

FIT_BELOW = 0.25  # fit when the data, with its margin, covers less than this share of the range
MARGIN = 0.05  # of the extent, on each side
MIN_MARGIN_NS = 1_000_000_000  # a burst of one request still gets a readable plot
_SECOND_NS = 1_000_000_000


def fitted_window(first_ns: int, last_ns: int, start_ns: int, end_ns: int) -> tuple[int, int] | None:
    """The range to show instead of [start_ns, end_ns) when the requests (first and last
    start time) cover much less of it, or None to keep it. Whole seconds, so the URL
    stays short; never wider than the range itself."""
    if last_ns < first_ns or end_ns <= start_ns:
        return None
    margin = max(int((last_ns - first_ns) * MARGIN), MIN_MARGIN_NS)
    lo = max(start_ns, (first_ns - margin) // _SECOND_NS * _SECOND_NS)
    hi = min(end_ns, -(-(last_ns + margin) // _SECOND_NS) * _SECOND_NS)
    if hi <= lo or (hi - lo) >= FIT_BELOW * (end_ns - start_ns):
        return None
    return lo, hi
