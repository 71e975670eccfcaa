/* The optional C accelerator of instrumentation/snapshot.py: the call-time snapshot of a
 * profiled call's input and output arrays, for deferred profiles.
 *
 * Why it exists: in a one-row call, the snapshot is most of what the profile costs the
 * call, and in Python most of that is the interpreter's dispatch of the checks and four
 * generic attribute reads of numpy objects that CPython 3.11 does not specialise
 * (nbytes, dtype, dtype.kind, shape, the tobytes method) (docs/benchmarks.md, sessions 9-10).
 * Here the common case (a C-contiguous array of one of numpy's numeric dtypes) takes one
 * attribute read (dtype), one buffer export (PyObject_GetBuffer), one memcpy and a small tuple.
 *
 * What it must equal: snapshot.py's pure-Python functions, result for result: the same
 * decision, and a snapshot (x.tobytes(), x.dtype, x.shape) equal to theirs. Anything the
 * fast path does not know (other dtype objects, non-contiguous arrays, buffer export
 * refused) goes through the same attribute reads and method call as the Python code.
 * tests/test_profile_snapshot.py compares the two on the same inputs.
 *
 * Only the CPython C API and the buffer protocol: no numpy headers at build time. The
 * ndarray type and the dtypes come from numpy at run time (configure()).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *ndarray_type;      /* numpy.ndarray, or NULL until configure() */
static PyObject *float64;           /* numpy.dtype("float64") */
#define MAX_KNOWN 32
static PyObject *known[MAX_KNOWN];  /* numpy's own dtype objects of kinds f, i, u, b (told by identity) */
static int n_known;
static PyObject *s_nbytes, *s_dtype, *s_kind, *s_tobytes, *s_shape, *s_fiub;

/* Hand the three new references out (1), or drop what was made and fail (-1) when one of
 * them could not be made (its exception is set). */
static int
hand_out(PyObject *b, PyObject *d, PyObject *t, PyObject **raw, PyObject **dt, PyObject **shape)
{
    if (b == NULL || d == NULL || t == NULL) {
        Py_XDECREF(b);
        Py_XDECREF(d);
        Py_XDECREF(t);
        return -1;
    }
    *raw = b;
    *dt = d;
    *shape = t;
    return 1;
}

/* The Python path, step for step, for what the fast path does not answer:
 * 0 < x.nbytes <= max_bytes and (x.dtype is float64 or x.dtype.kind in "fiub"),
 * then x.tobytes(), x.dtype, x.shape. */
static int
snap_slow(PyObject *x, Py_ssize_t max_bytes, PyObject **raw, PyObject **dt, PyObject **shape)
{
    PyObject *nb = PyObject_GetAttr(x, s_nbytes);
    if (nb == NULL)
        return -1;
    Py_ssize_t n = PyLong_AsSsize_t(nb);
    Py_DECREF(nb);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n <= 0 || n > max_bytes)
        return 0;
    PyObject *d = PyObject_GetAttr(x, s_dtype);
    if (d == NULL)
        return -1;
    if (d != float64) {
        PyObject *k = PyObject_GetAttr(d, s_kind);
        if (k == NULL) {
            Py_DECREF(d);
            return -1;
        }
        int ok = PyUnicode_Contains(s_fiub, k);  /* `kind in "fiub"`, TypeError included */
        Py_DECREF(k);
        if (ok != 1) {
            Py_DECREF(d);
            return ok;  /* 0: not numeric; -1: the error the Python path raises */
        }
    }
    PyObject *b = PyObject_CallMethodNoArgs(x, s_tobytes);
    PyObject *t = b != NULL ? PyObject_GetAttr(x, s_shape) : NULL;
    return hand_out(b, d, t, raw, dt, shape);
}

/* 1 and three new references (bytes, dtype, shape) when x is a snapshot-able array of at
 * most max_bytes, 0 when it is not (not an exact ndarray, empty, too large, not f/i/u/b),
 * -1 on error.
 *
 * The fast path: numpy's own dtype object of a numeric kind (an identity test), and a
 * C-contiguous array, whose buffer (PyBUF_ND: the data, its length = nbytes, the shape;
 * numpy refuses it for any other layout) is copied as tobytes() copies it. Not asked for
 * the buffer's format or strides: numpy builds a format string for that, which costs
 * more than the rest of the snapshot (measured: docs/benchmarks.md, session 10). */
static int
snap(PyObject *x, Py_ssize_t max_bytes, PyObject **raw, PyObject **dt, PyObject **shape)
{
    if (ndarray_type == NULL || (PyObject *)Py_TYPE(x) != ndarray_type)
        return 0;
    PyObject *d = PyObject_GetAttr(x, s_dtype);
    if (d == NULL)
        return -1;
    int i = 0;
    while (i < n_known && known[i] != d)
        i++;
    Py_buffer view;
    if (i == n_known || PyObject_GetBuffer(x, &view, PyBUF_ND) != 0) {
        Py_DECREF(d);
        PyErr_Clear();  /* not C-contiguous (or not exported): ask as Python does */
        return snap_slow(x, max_bytes, raw, dt, shape);
    }
    if (view.len <= 0 || view.len > max_bytes) {
        PyBuffer_Release(&view);
        Py_DECREF(d);
        return 0;
    }
    PyObject *t = PyTuple_New(view.ndim);
    PyObject *b = t != NULL ? PyBytes_FromStringAndSize((const char *)view.buf, view.len) : NULL;
    for (int j = 0; b != NULL && j < view.ndim; j++) {
        PyObject *n = PyLong_FromSsize_t(view.shape[j]);
        if (n == NULL)
            Py_CLEAR(b);
        else
            PyTuple_SET_ITEM(t, j, n);
    }
    PyBuffer_Release(&view);
    return hand_out(b, d, t, raw, dt, shape);
}

/* 1 when a function got its number of positional arguments, else 0 and a TypeError */
static int
arity(const char *name, Py_ssize_t nargs, Py_ssize_t want)
{
    if (nargs == want)
        return 1;
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, want, nargs);
    return 0;
}

/* snap() with its byte limit given as a Python int */
static int
snap_arg(PyObject *x, PyObject *limit, PyObject **raw, PyObject **dt, PyObject **shape)
{
    Py_ssize_t max_bytes = PyLong_AsSsize_t(limit);
    if (max_bytes == -1 && PyErr_Occurred())
        return -1;
    return snap(x, max_bytes, raw, dt, shape);
}

PyDoc_STRVAR(pending_input_doc,
"pending_input(x, max_bytes, prof, instance, qualname, model) -> list | None\n\n"
"The deferred-profile list of a call whose model input is x: [prof, bytes, dtype, shape,\n"
"instance, qualname, model, None, None, None], or None when x is not snapshotted.");

static PyObject *
pending_input(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!arity("pending_input", nargs, 6))
        return NULL;
    PyObject *raw, *dt, *shape;
    int got = snap_arg(args[0], args[1], &raw, &dt, &shape);
    if (got < 0)
        return NULL;
    if (got == 0)
        Py_RETURN_NONE;
    PyObject *list = PyList_New(10);
    if (list == NULL) {
        Py_DECREF(raw);
        Py_DECREF(dt);
        Py_DECREF(shape);
        return NULL;
    }
    PyList_SET_ITEM(list, 0, Py_NewRef(args[2]));
    PyList_SET_ITEM(list, 1, raw);
    PyList_SET_ITEM(list, 2, dt);
    PyList_SET_ITEM(list, 3, shape);
    PyList_SET_ITEM(list, 4, Py_NewRef(args[3]));
    PyList_SET_ITEM(list, 5, Py_NewRef(args[4]));
    PyList_SET_ITEM(list, 6, Py_NewRef(args[5]));
    for (int i = 7; i < 10; i++)
        PyList_SET_ITEM(list, i, Py_NewRef(Py_None));
    return list;
}

PyDoc_STRVAR(pending_output_doc,
"pending_output(pending, result, max_bytes) -> bool\n\n"
"Snapshot the call's result into pending[7:10] (bytes, dtype, shape); False, and pending\n"
"unchanged, when result is not snapshotted or pending is not a list (nothing was deferred).");

static PyObject *
pending_output(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!arity("pending_output", nargs, 3))
        return NULL;
    PyObject *pending = args[0];
    if (!PyList_CheckExact(pending))  /* True (captured in the call) or "unsampled": nothing deferred */
        Py_RETURN_FALSE;
    if (PyList_GET_SIZE(pending) != 10) {
        PyErr_SetString(PyExc_ValueError, "pending_output: pending must be the 10-slot list of pending_input");
        return NULL;
    }
    PyObject *raw, *dt, *shape;
    int got = snap_arg(args[1], args[2], &raw, &dt, &shape);
    if (got < 0)
        return NULL;
    if (got == 0)
        Py_RETURN_FALSE;
    PyObject *items[3] = {raw, dt, shape};
    for (int i = 0; i < 3; i++) {
        PyObject *old = PyList_GET_ITEM(pending, 7 + i);
        PyList_SET_ITEM(pending, 7 + i, items[i]);
        Py_DECREF(old);
    }
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(configure_doc,
"configure(ndarray, float64, known) -> None\n\n"
"numpy's ndarray type, its float64 dtype, and a tuple of numpy's dtype objects of kinds\n"
"f, i, u and b (float64 first): an array whose dtype is one of them (by identity) may take\n"
"the fast path; every other array is asked as the Python functions ask it.");

static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *nd, *f8, *table;
    if (!PyArg_ParseTuple(args, "O!OO!:configure", &PyType_Type, &nd, &f8, &PyTuple_Type, &table))
        return NULL;
    if (PyTuple_GET_SIZE(table) > MAX_KNOWN) {
        PyErr_SetString(PyExc_ValueError, "configure: too many dtypes");
        return NULL;
    }
    for (int i = 0; i < n_known; i++)
        Py_CLEAR(known[i]);
    n_known = (int)PyTuple_GET_SIZE(table);
    for (int i = 0; i < n_known; i++)
        known[i] = Py_NewRef(PyTuple_GET_ITEM(table, i));
    Py_XSETREF(float64, Py_NewRef(f8));
    Py_XSETREF(ndarray_type, Py_NewRef(nd));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pending_input", (PyCFunction)(void (*)(void))pending_input, METH_FASTCALL, pending_input_doc},
    {"pending_output", (PyCFunction)(void (*)(void))pending_output, METH_FASTCALL, pending_output_doc},
    {"configure", configure, METH_VARARGS, configure_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_snapshot",
    "C accelerator of stagetrace.instrumentation.snapshot (see that module).", -1, methods,
};

PyMODINIT_FUNC
PyInit__snapshot(void)
{
    s_nbytes = PyUnicode_InternFromString("nbytes");
    s_dtype = PyUnicode_InternFromString("dtype");
    s_kind = PyUnicode_InternFromString("kind");
    s_tobytes = PyUnicode_InternFromString("tobytes");
    s_shape = PyUnicode_InternFromString("shape");
    s_fiub = PyUnicode_InternFromString("fiub");
    if (!s_nbytes || !s_dtype || !s_kind || !s_tobytes || !s_shape || !s_fiub)
        return NULL;
    return PyModule_Create(&module);
}
