"""Capture of input/output profiles (numpy; imported at the first profiled call).
See :mod:`.profiling` for the settings and :mod:`stagetrace.mlprofile` for the format."""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import random
import struct
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from stagetrace import mlprofile, semconv

from .profiling import ProfileSettings

MAX_SAMPLED_ROWS = 256  # rows binned per call (a strided sample above; summaries cover all rows)
MAX_OUTPUT_ROWS = 256  # rows whose score/class is kept (label joins by row index below that)
_SAMPLE_LIMIT = 1024  # characters of an opted-in raw sample


# --- feature names ----------------------------------------------------------------

_per_model: dict[int, tuple[Any, tuple[str, ...] | None, list[str] | None]] = {}
_PER_MODEL_MAX = 256


def _model_info(instance: Any) -> tuple[tuple[str, ...] | None, list[str] | None]:
    """(feature names, class labels) of a model, looked up once per instance: the
    look-ups go through properties that raise (a Pipeline's ``feature_names_in_``),
    which cost more than the whole profile."""
    hit = _per_model.get(id(instance))
    if hit is not None and hit[0] is instance:
        return hit[1], hit[2]
    names, classes = _model_names(instance), _classes_of(instance)
    if len(_per_model) >= _PER_MODEL_MAX:
        _per_model.clear()
    _per_model[id(instance)] = (instance, names, classes)
    return names, classes


def _model_names(instance: Any) -> tuple[str, ...] | None:
    """Names the model was fitted with: sklearn ``feature_names_in_``, XGBoost
    ``feature_names`` (Booster) / ``get_booster()``, LightGBM ``feature_name()``."""
    if instance is None:
        return None
    names = getattr(instance, "feature_names_in_", None)
    if names is None:
        fn = getattr(instance, "feature_names", None)  # xgboost.Booster property
        if isinstance(fn, (list, tuple)):
            names = fn
    if names is None:
        fn = getattr(instance, "feature_name", None)  # lightgbm.Booster method
        if callable(fn) and type(instance).__module__.startswith("lightgbm"):
            try:
                names = fn()
            except Exception:
                names = None
    if names is None:
        fn = getattr(instance, "feature_name_", None)  # lightgbm sklearn wrapper
        if isinstance(fn, (list, tuple)):
            names = fn
    if names is None:
        return None
    try:
        return tuple(str(n) for n in names)
    except TypeError:
        return None


_generic_names: dict[int, tuple[str, ...]] = {}


def _generic(d: int) -> tuple[str, ...]:
    names = _generic_names.get(d)
    if names is None:
        names = _generic_names[d] = tuple(f"f{i}" for i in range(d))
    return names


# --- inputs ------------------------------------------------------------------------

_kinds_cache: dict[tuple[int, frozenset], str] = {}


def _numeric_kinds(names: tuple[str, ...], redact: frozenset) -> str:
    if not redact:
        return "n" * len(names)
    key = (hash(names), redact)
    k = _kinds_cache.get(key)
    if k is None:
        k = _kinds_cache[key] = "".join("r" if n in redact else "n" for n in names)
    return k


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _as_matrix(x: Any) -> tuple[Any, tuple[str, ...] | None] | None:
    """(2-D array or column table, names from the data) for a model input, or None."""
    if isinstance(x, np.ndarray):
        return x, None
    mod = type(x).__module__
    if mod.startswith("pandas"):
        if hasattr(x, "columns"):
            return x, tuple(str(c) for c in x.columns)
        if hasattr(x, "to_numpy"):  # a Series: one feature
            return x.to_numpy().reshape(-1, 1), (str(x.name) if x.name is not None else "f0",)
        return None
    if _is_torch(x):
        try:
            return x.detach().cpu().numpy(), None
        except Exception:
            return None
    if isinstance(x, Mapping):
        names = tuple(str(k) for k in x)
        vals = list(x.values())
        if vals and all(isinstance(v, (list, tuple, np.ndarray)) for v in vals):  # columnar batch
            return _Columns(names, [list(v) for v in vals]), names
        return _Columns(names, [[v] for v in vals]), names
    if isinstance(x, str):
        return _text_columns([x]), _TEXT_FEATURES
    if isinstance(x, (list, tuple)) and x:
        first = x[0]
        if isinstance(first, Mapping):
            names = tuple(str(k) for k in first)
            return _Columns(names, [[row.get(k) if isinstance(row, Mapping) else None for row in x] for k in first]), names
        if isinstance(first, str):
            return _text_columns(x), _TEXT_FEATURES
        try:
            return np.asarray(x), None
        except Exception:
            return None
    return None


# A text input (transformers pipelines) is profiled by its size, never its content: the
# length in characters and the number of whitespace-separated words of each text. Token
# counts would need the model's tokenizer to run a second time in the call.
_TEXT_FEATURES = ("text.length", "text.words")


def _text_columns(texts: Any) -> _Columns:
    ok = [t if isinstance(t, str) else None for t in texts]
    return _Columns(_TEXT_FEATURES, [[None if t is None else len(t) for t in ok],
                                     [None if t is None else len(t.split()) for t in ok]])


class _Columns:
    """Row-of-values input (dicts, lists of dicts) held column by column."""

    __slots__ = ("names", "cols")

    def __init__(self, names: tuple[str, ...], cols: list[list]) -> None:
        self.names = names
        self.cols = cols

    @property
    def rows(self) -> int:
        return len(self.cols[0]) if self.cols else 0


def _column_codes(values: list, redacted: bool) -> tuple[str, np.ndarray]:
    """(kind, int16 codes) of one column of Python values."""
    if redacted:
        return "r", np.array([mlprofile.MISSING_CODE if _missing(v) else 0 for v in values], dtype=np.int16)
    numeric = True
    for v in values:
        if not (v is None or isinstance(v, (int, float, np.number)) and not isinstance(v, bool)):
            numeric = False
            break
    if numeric:
        return "n", mlprofile.bin_codes([math.nan if v is None else float(v) for v in values])
    return "c", np.array([mlprofile.category_code(v) for v in values], dtype=np.int16)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def _frame_codes(df: Any, names: tuple[str, ...], redact: frozenset) -> tuple[str, np.ndarray]:
    try:  # all-numeric frame: one conversion, no per-column work
        mat = df.to_numpy(dtype=np.float64)
        if not redact:
            return "n" * len(names), mlprofile.bin_codes(mat)
        kinds = _numeric_kinds(names, redact)
        codes = mlprofile.bin_codes(mat)
        for j, k in enumerate(kinds):
            if k == "r":
                codes[:, j] = np.where(np.isnan(mat[:, j]), mlprofile.MISSING_CODE, 0)
        return kinds, codes
    except (TypeError, ValueError):
        pass
    kinds, cols = [], []
    for j, name in enumerate(names):
        col = df.iloc[:, j]
        if name in redact:
            k, c = "r", np.where(col.isna().to_numpy(), mlprofile.MISSING_CODE, 0).astype(np.int16)
        elif col.dtype.kind in "biuf":
            k, c = "n", mlprofile.bin_codes(col.to_numpy(dtype=np.float64, na_value=np.nan))
        else:
            k, c = _column_codes(col.tolist(), False)
        kinds.append(k)
        cols.append(c)
    return "".join(kinds), np.column_stack(cols) if cols else np.zeros((len(df), 0), dtype=np.int16)


# --- the fast path: an all-numeric matrix of at most MAX_SAMPLED_ROWS rows -------------
# In a real call the capture code runs with cold caches (the model just ran), where every
# numpy call costs microseconds: the fast path makes one (``tobytes``) and does the rest
# with bytes slicing, which is a single C loop each. The two top bytes of each
# little-endian double hold sign, exponent and the leading mantissa bits; the bits below
# the bin are masked off by ``translate`` (mlprofile format version 2).
_LITTLE = sys.byteorder == "little"
_MASK_LOW = bytes(i & 0xFC for i in range(256))  # keep the 2 leading mantissa bits of the 2nd byte
_F8 = np.dtype(np.float64)
_b2a = binascii.b2a_base64


def _fast_codes(arr: np.ndarray) -> str:
    """base64 of the version-2 codes of a 2-D numeric array, row-major and planar (the
    masked low bytes of the top 16 bits of every value, then their high bytes)."""
    if arr.dtype is not _F8:
        arr = arr.astype(_F8)
    raw = arr.tobytes()  # C order whatever the strides
    return _b2a(raw[6::8].translate(_MASK_LOW) + raw[7::8], newline=False).decode("ascii")


class _Plan:
    """What one model (or stage function) and feature count always give: the names, their
    attribute text, the kinds, whether the fast path applies (no redacted feature)."""

    __slots__ = ("owner", "names", "names_text", "kinds", "fast")

    def __init__(self, owner: Any, names: tuple[str, ...], redact: frozenset) -> None:
        self.owner = owner
        self.names = names
        self.names_text = mlprofile.feature_list(names)
        self.kinds = _numeric_kinds(names, redact)
        self.fast = _LITTLE and "r" not in self.kinds


_plans: dict[tuple, _Plan] = {}


_last_plan: list = [None, None, None, 0, None, None]  # instance, prof, qualname, d, model, plan: the common case


def _plan(prof: ProfileSettings, instance: Any, qualname: str, model: str | None, d: int) -> _Plan:
    last = _last_plan
    if last[0] is instance and last[1] is prof and last[3] == d and last[2] == qualname and last[4] == model:
        return last[5]  # identity checks only: cheaper than hashing a key with cold caches
    p = _plan_lookup(prof, instance, qualname, model, d)
    _last_plan[:] = [instance, prof, qualname, d, model, p]
    return p


def _plan_lookup(prof: ProfileSettings, instance: Any, qualname: str, model: str | None, d: int) -> _Plan:
    key = (id(instance), qualname, model, d, id(prof))
    p = _plans.get(key)
    if p is not None and p.owner is instance:
        return p
    names = (_model_info(instance)[0] if instance is not None else None) or prof.configured_names(qualname, model)
    if names is None or len(names) != d:
        names = _generic(d)
    if len(_plans) >= _PER_MODEL_MAX:
        _plans.clear()
    p = _plans[key] = _Plan(instance, names, prof.redact)
    return p


def input_attributes(prof: ProfileSettings, x: Any, instance: Any, qualname: str, model: str | None) -> dict[str, Any]:
    """``ml.input.*`` attributes for one call's model input ({} if it cannot be profiled)."""
    if type(x) is np.ndarray and x.ndim == 2 and x.dtype.kind in "fiu":
        n, d = x.shape
        if 0 < n <= MAX_SAMPLED_ROWS and d:
            plan = _plan(prof, instance, qualname, model, d)
            if plan.fast:
                attrs = {semconv.ML_INPUT_FEATURES: plan.names_text,
                         semconv.ML_INPUT_PROFILE: f"2|{n}|{n}|{plan.kinds}|{_fast_codes(x)}||||"}
                if prof.sample_rate and random.random() < prof.sample_rate:
                    attrs[semconv.ML_INPUT_SAMPLE] = _raw_sample(x, plan.names, prof.redact)
                return attrs
    got = _as_matrix(x)
    if got is None:
        return {}
    data, names = got
    redact = prof.redact
    if isinstance(data, _Columns):
        n = data.rows
        kinds_l, cols = [], []
        for name, values in zip(data.names, data.cols):
            k, c = _column_codes(values, name in redact)
            kinds_l.append(k)
            cols.append(c)
        kinds = "".join(kinds_l)
        codes = np.column_stack(cols) if cols else np.zeros((n, 0), dtype=np.int16)
    elif names is not None:  # DataFrame
        n = len(data)
        if _LITTLE and 0 < n <= MAX_SAMPLED_ROWS and names and not redact.intersection(names):
            try:  # all-numeric frame: one conversion, then the fast path
                mat = data.to_numpy(dtype=np.float64)
            except (TypeError, ValueError):
                mat = None
            if mat is not None and mat.ndim == 2 and mat.shape[1] == len(names):
                attrs = {semconv.ML_INPUT_FEATURES: mlprofile.feature_list(names),
                         semconv.ML_INPUT_PROFILE: f"2|{n}|{n}|{'n' * len(names)}|{_fast_codes(mat)}||||"}
                if prof.sample_rate and random.random() < prof.sample_rate:
                    attrs[semconv.ML_INPUT_SAMPLE] = _raw_sample(data, names, redact)
                return attrs
        kinds, codes = _frame_codes(data, names, redact)
    else:
        arr = data
        if arr.ndim == 0:
            return {}
        n = int(arr.shape[0])
        if arr.ndim == 1:
            arr = arr.reshape(-1, 1)
        elif arr.ndim > 2:  # images, sequences: the per-row mean stands for the row
            with np.errstate(all="ignore"):
                arr = arr.reshape(n, -1).astype(np.float64).mean(axis=1, keepdims=True)
        d = arr.shape[1]
        plan = _plan(prof, instance, qualname, model, d)
        names = plan.names
        if arr.dtype.kind in "biuf":
            if plan.fast and 0 < n <= MAX_SAMPLED_ROWS and d:
                attrs = {semconv.ML_INPUT_FEATURES: plan.names_text,
                         semconv.ML_INPUT_PROFILE: f"2|{n}|{n}|{plan.kinds}|{_fast_codes(arr)}||||"}
                if prof.sample_rate and random.random() < prof.sample_rate:
                    attrs[semconv.ML_INPUT_SAMPLE] = _raw_sample(data, names, redact)
                return attrs
            codes = mlprofile.bin_codes(arr)
            kinds = plan.kinds
            if redact:
                for j, k in enumerate(kinds):
                    if k == "r":
                        codes[:, j] = np.where(mlprofile.is_missing(codes[:, j]), mlprofile.MISSING_CODE, 0)
        else:  # object / string matrix: column by column
            kinds_l, cols = [], []
            for j, name in enumerate(names):
                k, c = _column_codes(arr[:, j].tolist(), name in redact)
                kinds_l.append(k)
                cols.append(c)
            kinds = "".join(kinds_l)
            codes = np.column_stack(cols)
    if n > MAX_SAMPLED_ROWS:
        sample = codes[:: -(-n // MAX_SAMPLED_ROWS)]
        miss = mlprofile.is_missing(codes)
        num = np.frombuffer(kinds.encode(), dtype=np.uint8) == ord("n")
        lo, hi = mlprofile._range_codes(codes, miss, num)
        distinct = [len(set(codes[:, j].tolist())) if k == "c" else 0 for j, k in enumerate(kinds)]
        text = mlprofile.encode_input(n, kinds, sample, miss.sum(axis=0), lo, hi, distinct)
    else:
        text = mlprofile.encode_input(n, kinds, codes)
    attrs: dict[str, Any] = {semconv.ML_INPUT_FEATURES: mlprofile.feature_list(names), semconv.ML_INPUT_PROFILE: text}
    if prof.sample_rate and random.random() < prof.sample_rate:
        attrs[semconv.ML_INPUT_SAMPLE] = _raw_sample(data, names, redact)
    return attrs


def _raw_sample(data: Any, names: tuple[str, ...], redact: frozenset) -> str:
    """The first row as JSON, redacted fields replaced: opt-in only."""
    if isinstance(data, _Columns):
        row = [c[0] if c else None for c in data.cols]
    elif hasattr(data, "iloc"):
        row = data.iloc[0].tolist()
    else:
        arr = np.asarray(data)
        row = arr.reshape(arr.shape[0], -1)[0].tolist() if arr.ndim else [arr.item()]
    out = {}
    for name, v in zip(names, row):
        if name in redact:
            out[name] = "<redacted>"
        elif isinstance(v, float) and v != v:
            out[name] = None
        else:
            out[name] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return json.dumps(out, default=str)[:_SAMPLE_LIMIT]


# --- outputs -----------------------------------------------------------------------

def _booster_library(instance: Any) -> str | None:
    """"lightgbm" or "xgboost" for a library's own ``Booster`` (no ``classes_``; its 1-D
    output is the positive class's probability when its objective is binary), else None."""
    cls = type(instance)
    if cls.__name__ != "Booster":
        return None
    mod = cls.__module__
    return "lightgbm" if mod.startswith("lightgbm") else "xgboost" if mod.startswith("xgboost") else None


# objectives whose output is class probabilities (anything else, e.g. XGBoost's binary:logitraw
# or LightGBM's regression, names no classes)
_LGBM_MULTICLASS = ("multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr")
_XGB_MULTICLASS = ("multi:softprob", "multi:softmax")


def _booster_classes(instance: Any, library: str) -> list[str] | None:
    """A Booster's classes from its objective: binary -> 0/1, multiclass -> 0..num_class-1."""
    try:
        if library == "lightgbm":
            objective = str(instance.params.get("objective", "")).split()[0] if instance.params else ""
            if objective == "binary":
                return ["0", "1"]
            if objective in _LGBM_MULTICLASS:
                return [str(i) for i in range(int(instance.num_model_per_iteration()))]
            return None
        learner = json.loads(instance.save_config())["learner"]  # once per model (_model_info)
        objective = learner["objective"]["name"]
        if objective == "binary:logistic":
            return ["0", "1"]
        if objective in _XGB_MULTICLASS:
            return [str(i) for i in range(int(learner["learner_model_param"]["num_class"]))]
    except Exception:
        return None
    return None


def _classes_of(instance: Any) -> list[str] | None:
    classes = getattr(instance, "classes_", None)
    if classes is None and type(instance).__module__.startswith("onnxruntime"):
        return _onnx_classes(instance)
    if classes is None:
        library = _booster_library(instance)
        return _booster_classes(instance, library) if library is not None else None
    try:
        return [str(c) for c in classes]
    except TypeError:
        return None


_pack_f4 = struct.Struct("<f").pack
_binary: dict[int, tuple[Any, list[str], str] | None] = {}


def _binary_classes(instance: Any) -> tuple[list[str], str] | None:
    """(class labels, their encoded text) of a binary classifier, once per instance."""
    hit = _binary.get(id(instance))
    if hit is not None and hit[0] is instance:
        return hit[1], hit[2]
    known = _model_info(instance)[1]
    if known is None or len(known) != 2:
        return None
    if len(_binary) >= _PER_MODEL_MAX:
        _binary.clear()
    ctext = base64.b64encode("\x1f".join(known).encode()).decode("ascii")
    _binary[id(instance)] = (instance, known, ctext)
    return known, ctext


def output_attributes(result: Any, instance: Any) -> dict[str, Any]:
    """``ml.output.profile`` plus the readable prediction summary."""
    r = result
    if type(r) is np.ndarray and r.ndim == 2 and r.dtype.kind == "f" and r.shape[1] == 2 and r.shape[0] \
            and instance is not None:
        # a binary classifier's probabilities (the common case): the positive-class score
        # says it all (class and confidence are derived by the reader)
        got = _binary_classes(instance)
        if got is not None:
            classes, ctext = got
            rows = r.shape[0]
            if rows == 1:
                m = r.item(0, 1)
                packed = _pack_f4(m)
            else:
                col = r[:MAX_OUTPUT_ROWS, 1].astype("<f4")
                packed = col.tobytes()
                m = sum(col.tolist()) / len(col)
                if m != m:  # a row without a score (NaN input): the mean of the others
                    m = _nanmean(col)
            attrs = {semconv.ML_OUTPUT_PROFILE: f"{mlprofile.VERSION}|{rows}|{ctext}|{_b2a(packed, newline=False).decode('ascii')}||"}
            if m == m:
                attrs[semconv.ML_PREDICTION_SCORE_MEAN] = m
                if rows == 1:  # (its confidence, max(score, 1 - score), is left to the reader)
                    attrs[semconv.ML_PREDICTION_CLASS] = classes[1] if m > 0.5 else classes[0]
            return attrs
    scores: Any = None
    predicted: Any = None
    conf: Any = None
    classes: list[str] = []
    r = result
    known: list[str] | None = None
    total = None  # the output's row count, when r holds only its first rows
    if isinstance(r, list) and r and instance is not None and type(instance).__module__.startswith("onnxruntime"):
        r, known, total = _onnx_output(r, instance)
    if isinstance(r, Mapping) and not _is_label_scores(r):  # transformers ModelOutput of a model called directly
        r = r.get("logits")
    if _is_torch(r):
        r = r.detach().cpu().numpy()
    if isinstance(r, (float, int, np.floating, np.integer)) and not isinstance(r, bool):
        rows = 1
        scores = np.array([float(r)], dtype=np.float32)
    elif isinstance(r, Mapping) or isinstance(r, (list, tuple)) and r and isinstance(r[0], (Mapping, list)) \
            and _is_label_scores(r[0]):
        # transformers text classification: {label, score} per text (a list of them per text with top_k)
        rows, classes, scores, predicted, conf = _label_scores([r] if isinstance(r, Mapping) else r, instance)
    else:
        if isinstance(r, (list, tuple)):
            try:
                r = np.asarray(r)
            except Exception:
                return {}
        if not isinstance(r, np.ndarray) or r.ndim == 0 or r.ndim > 2:
            return {}
        rows = int(r.shape[0]) if total is None else total
        a = r[:MAX_OUTPUT_ROWS]
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if known is None:
            known = _model_info(instance)[1] if instance is not None else None
        if known is not None and len(known) == 2 and a.dtype.kind in "fiu" and (
                a.ndim == 2 and a.shape[1] == 2 or a.ndim == 1 and a.dtype.kind == "f" and _booster_library(instance) is not None):
            # a binary classifier's probabilities (a LightGBM or XGBoost Booster's 1-D output
            # is the positive class's): the positive-class score says it all (class and confidence
            # are derived by the reader), which halves the work; Python sums beat numpy
            # reductions on arrays this small
            scores = (a[:, 1] if a.ndim == 2 else a).astype(np.float32)
            classes = known
            values = scores.tolist()
            k = len(values)
            attrs = {semconv.ML_OUTPUT_PROFILE: _encode_output(rows, classes, scores, None, None, k)}
            m = sum(values) / k
            if m != m:
                m = _nanmean(scores)
            if m == m:
                attrs[semconv.ML_PREDICTION_SCORE_MEAN] = m
                if k == 1:
                    attrs[semconv.ML_PREDICTION_CLASS] = classes[1] if m > 0.5 else classes[0]
                    attrs[semconv.ML_PREDICTION_CONFIDENCE_MEAN] = m if m > 0.5 else 1.0 - m
            return attrs
        if a.ndim == 2 and a.dtype.kind in "fiu":  # class scores (predict_proba, logits)
            p = a.astype(np.float32, copy=False)
            predicted = p.argmax(axis=1).astype(np.int16)
            conf = p.max(axis=1)
            scores = conf
            classes = known or [str(i) for i in range(p.shape[1])]
        elif a.dtype.kind == "f":
            scores = a.astype(np.float32, copy=False)
        elif a.dtype.kind in "biuUSO":  # predicted labels
            labels = a.tolist()
            classes = known if known is not None else sorted({str(v) for v in labels})
            index = {c: i for i, c in enumerate(classes)}
            predicted = np.array([index.get(str(v), -1) for v in labels], dtype=np.int16)
        else:
            return {}
    k = len(scores) if scores is not None else (len(predicted) if predicted is not None else 0)
    if k == 0:
        return {}
    attrs = _finish(rows, classes, scores, predicted, conf, k)
    # plain sums, not nanmean (several times slower on small arrays); a NaN mean is left out
    if conf is not None:
        m = float(conf.sum()) / k
        if m != m:
            m = _nanmean(conf)
        if m == m:
            attrs[semconv.ML_PREDICTION_CONFIDENCE_MEAN] = m
    if predicted is not None and rows == 1 and 0 <= int(predicted[0]) < len(classes):
        attrs[semconv.ML_PREDICTION_CLASS] = classes[int(predicted[0])]
    return attrs


def _onnx_output(outputs: list, session: Any) -> tuple[Any, list[str] | None, int | None]:
    """(what to summarise, its class labels, the row count when that holds only the first
    rows) of ``InferenceSession.run``'s list of outputs. A converted classifier returns its predicted labels and its probabilities, either a 2-D
    array (columns in class order, the labels read from the model: ``_onnx_classes``; a
    binary one's column 1 is the positive-class score, as for scikit-learn) or, with skl2onnx's default ZipMap, one ``{class: p}`` dict per
    row (whose keys are the class labels). Otherwise the first 2-D float output (scores,
    logits), else the first output."""
    labels = next((o for o in outputs if isinstance(o, np.ndarray) and o.ndim == 1), None)
    for o in outputs:
        if isinstance(o, list) and o and isinstance(o[0], Mapping):  # ZipMap
            keys = list(o[0])
            probs = np.array([[row.get(k, math.nan) for k in keys] for row in o[:MAX_OUTPUT_ROWS]], dtype=np.float32)
            return probs, [str(k) for k in keys], len(o)
    arrays = [o for o in outputs if isinstance(o, np.ndarray)]
    probs = next((o for o in arrays if o.ndim == 2 and o.dtype.kind == "f"), None)
    if probs is not None and labels is not None:  # a classifier: its labels from the model, else column numbers
        known = _model_info(session)[1]
        if known is not None and len(known) == probs.shape[1]:
            return probs, known, None
        return probs, (["0", "1"] if probs.shape[1] == 2 else None), None
    if probs is not None:
        return probs, None, None
    return (arrays[0] if arrays else None), None, None


_ONNX_MAX_BYTES = 128 << 20  # a larger model is not parsed a second time for its labels


def _onnx_classes(session: Any) -> list[str] | None:
    """The class labels of a converted classifier without ZipMap: the ``classlabels_*``
    attribute of its last ``ai.onnx.ml`` node that has one (LinearClassifier,
    TreeEnsembleClassifier, SVMClassifier...). ONNX Runtime does not expose the graph, so
    this parses the model (with the ``onnx`` package, when installed; once per session:
    ``_model_info``). None when it cannot say (the caller falls back to column numbers)."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        raw, path = getattr(session, "_model_bytes", None), getattr(session, "_model_path", None)
        if isinstance(raw, bytes) and 0 < len(raw) <= _ONNX_MAX_BYTES:
            model = onnx.load_model_from_string(raw)
        elif isinstance(path, str) and os.path.getsize(path) <= _ONNX_MAX_BYTES:
            model = onnx.load(path, load_external_data=False)
        else:
            return None
        found = None
        for node in model.graph.node:
            if node.domain != "ai.onnx.ml":
                continue
            for att in node.attribute:
                if att.name == "classlabels_strings" and att.strings:
                    found = [b.decode("utf-8", "replace") for b in att.strings]
                elif att.name in ("classlabels_int64s", "classlabels_ints") and att.ints:
                    found = [str(i) for i in att.ints]
        return found
    except Exception:
        return None


def _is_label_scores(x: Any) -> bool:
    if isinstance(x, list):
        x = x[0] if x else None
    return isinstance(x, Mapping) and "label" in x


def _pipeline_classes(instance: Any) -> list[str] | None:
    """A transformers pipeline's class labels, in index order (``model.config.id2label``)."""
    if instance is None or not type(instance).__module__.startswith("transformers"):
        return None
    id2label = getattr(getattr(getattr(instance, "model", None), "config", None), "id2label", None)
    if not isinstance(id2label, Mapping) or not id2label:
        return None
    try:
        return [str(id2label[i]) for i in sorted(id2label, key=int)]
    except (TypeError, ValueError, KeyError):
        return None


def _label_scores(items: list, instance: Any) -> tuple[int, list[str], Any, Any, Any]:
    """(rows, classes, scores, predicted, confidence) of a text classifier's output: per
    text its top ``{label, score}`` (the first of a list: pipelines sort by score). The
    classes are the model's (``id2label``) so every call indexes them the same way; for a
    binary model the score is the positive class's probability, as for scikit-learn."""
    rows = len(items)
    top = [(x[0] if x else None) if isinstance(x, list) else x for x in items[:MAX_OUTPUT_ROWS]]
    labels = [str(x.get("label")) if isinstance(x, Mapping) else None for x in top]
    conf = np.array([float(x.get("score", math.nan)) if isinstance(x, Mapping) else math.nan for x in top],
                    dtype=np.float32)
    classes = _pipeline_classes(instance) or sorted({lb for lb in labels if lb is not None})
    index = {c: i for i, c in enumerate(classes)}
    predicted = np.array([index.get(lb, -1) if lb is not None else -1 for lb in labels], dtype=np.int16)
    scores = None
    if len(classes) == 2:
        scores = np.where(predicted == 1, conf, np.where(predicted == 0, 1.0 - conf, np.nan)).astype(np.float32)
    return rows, classes, scores, predicted, conf


def _nanmean(a: Any) -> float:
    """Mean of the non-NaN values (NaN if none): only on the rare path where a plain sum
    met a NaN (nanmean is several times slower than a sum on small arrays)."""
    ok = a[a == a]
    return float(ok.mean()) if len(ok) else math.nan


def _finish(rows: int, classes: list[str], scores: Any, predicted: Any, conf: Any, k: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {semconv.ML_OUTPUT_PROFILE: _encode_output(rows, classes, scores, predicted, conf, k)}
    if scores is not None:
        m = float(scores.sum()) / k if k > 1 else float(scores[0])
        if m != m and k > 1:
            m = _nanmean(scores)
        if m == m:
            attrs[semconv.ML_PREDICTION_SCORE_MEAN] = m
    return attrs


_classes_text: dict[tuple, str] = {}


def _encode_output(rows: int, classes: list[str], scores: Any, predicted: Any, conf: Any, k: int) -> str:
    key = tuple(classes)
    ctext = _classes_text.get(key)
    if ctext is None:
        ctext = _classes_text[key] = base64.b64encode("\x1f".join(classes).encode()).decode("ascii")
    def b64(a: Any, dt: str) -> str:  # an array not recorded is empty (the reader derives or fills it)
        return base64.b64encode(a.astype(dt, copy=False).tobytes()).decode("ascii") if a is not None else ""

    return "|".join((mlprofile.VERSION, str(rows), ctext, b64(scores, "<f4"), b64(predicted, "<i2"), b64(conf, "<f4")))


# --- deferred capture (profile_export.py): the call snapshots its arrays (wrapping._begin, _end),
# the export thread encodes them here ---------------------------------------------------------

def resolve_input(prof: ProfileSettings, raw: bytes, dtype: Any, shape: tuple, instance: Any, qualname: str,
                  model: str | None) -> dict[str, Any]:
    return input_attributes(prof, np.frombuffer(raw, dtype).reshape(shape), instance, qualname, model)


def resolve_output(raw: bytes, dtype: Any, shape: tuple, instance: Any) -> dict[str, Any]:
    return output_attributes(np.frombuffer(raw, dtype).reshape(shape), instance)
