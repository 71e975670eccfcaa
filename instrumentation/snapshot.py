"""Call-time snapshots of a profiled call's arrays, for deferred profiles (profile_export.py).

Why a module of its own: a deferred profile costs the call only these snapshots, a copy of
the model's input and output (the app may reuse its buffers once the call returns), and
with one row that copy is most of the profile's in-call cost. So there are two
implementations of the same two functions:

* ``_snapshot`` (``_snapshot.c``), an optional C accelerator built by ``pip install``
  when a compiler is there: for the common array one attribute read (its dtype), one
  buffer export and one copy, with no interpreter dispatch in between;
* the pure-Python functions below, used when the accelerator did not build or when
  ``STAGETRACE_NO_ACCEL=1`` is set (tests run both and compare them).

Both must give the same answer on every input: the same decision (snapshot or not, or the
same exception) and the same ``(x.tobytes(), x.dtype, x.shape)``. What the exporter then
records from them is the same (tests/test_profile_snapshot.py).

Nothing here imports numpy: :func:`configure` is handed it at the first deferred call
(``wrapping._defer_recheck``, which imports this module then).
"""

from __future__ import annotations

from typing import Any

from stagetrace import semconv

from .wrapping import env_flag

_ndarray: Any = None  # numpy.ndarray, once configured
_float64: Any = None  # numpy's float64 dtype: the usual model input and output, told by identity


def py_pending_input(x: Any, max_bytes: int, prof: Any, instance: Any, qualname: str,
                     model: str | None) -> list | None:
    """The deferred-profile list of a call whose model input is ``x`` (a numeric ndarray of at
    most ``max_bytes``): slots 0-6 are ``profile_capture.resolve_input``'s arguments, 7-9 the
    output's (filled by :func:`py_pending_output`); None when ``x`` is not snapshotted."""
    if type(x) is _ndarray and 0 < x.nbytes <= max_bytes:  # type(): what C's Py_TYPE sees (not a Mock's __class__)
        dt = x.dtype
        if dt is _float64 or dt.kind in "fiub":
            return [prof, x.tobytes(), dt, x.shape, instance, qualname, model, None, None, None]
    return None


def py_pending_output(pending: Any, result: Any, max_bytes: int) -> bool:
    """Snapshot ``result`` into ``pending[7:10]`` (bytes, dtype, shape); False, ``pending``
    unchanged, when it is not snapshotted or ``pending`` is not a list (nothing was deferred):
    the output is then captured in the call. (The accelerator also checks the list has its 10
    slots, which only :func:`py_pending_input` makes.)"""
    if type(pending) is list and type(result) is _ndarray and 0 < result.nbytes <= max_bytes:
        dt = result.dtype
        if dt is _float64 or dt.kind in "fiub":
            pending[7:] = result.tobytes(), dt, result.shape
            return True
    return False


def _load_accelerator() -> Any:
    if env_flag(semconv.ENV_NO_ACCEL):
        return None
    try:
        from . import _snapshot
    except ImportError:  # not built (no compiler at install): the Python functions
        return None
    return _snapshot


_accel = _load_accelerator()
ACCELERATED: bool = _accel is not None
pending_input = _accel.pending_input if _accel is not None else py_pending_input
pending_output = _accel.pending_output if _accel is not None else py_pending_output

# numpy's own dtype objects of kinds f, i, u and b: an array whose dtype is one of them (by
# identity; float64, the usual model input and output, first) is snapshotted by the
# accelerator without reading its attributes one by one.
_FAST_DTYPES = "dfelqihbLQIHB?g"


def configure(np: Any) -> None:
    """Hand numpy to both implementations (at the first deferred call, never at import)."""
    global _ndarray, _float64
    _ndarray, _float64 = np.ndarray, np.dtype(np.float64)
    if _accel is not None:
        known = tuple(dict.fromkeys(np.dtype(c) for c in _FAST_DTYPES))  # 'l' and 'q' may be one object
        _accel.configure(np.ndarray, np.dtype(np.float64), known)
