"""Fingerprints of a kernel computation for the on-disk store (:func:`kernel_to_disk`): data and model.

Data: SHA-256 of every leaf (dtype, shape, bytes) and tree structure of the options, parameters and inputs.
Model: SHA-256 of the jaxpr of the tile function traced at the tile shapes (which names every primitive the model
applies, its constants and the implementation chosen), with process-specific text (object addresses) removed, plus
the code of every Python function the kernel closes over (byte code, constants, names, and recursively the
functions and arrays in their closures and defaults). Two models that compute different things therefore have
different fingerprints, and the same model has the same fingerprint in every process (a resumed run matches).

Numeric mode: beside the fingerprints a store records ``jax_enable_x64`` and the dtypes of its inputs
(:func:`numeric_mode`), so that a resume refused for a changed mode says so (:func:`mode_change`) instead of
"different inputs".
"""

from __future__ import annotations

import functools
import hashlib
import re
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["data_fingerprint", "model_fingerprint", "numeric_mode", "mode_change"]

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{6,}")
_MAX_DEPTH = 6


def _update_leaf(h: Any, leaf: Any) -> None:
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    elif callable(leaf):
        _update_code(h, leaf, 0, set())
    else:
        h.update(_ADDRESS.sub("", repr(leaf)).encode())


def data_fingerprint(header: str, trees: dict[str, Any]) -> str:
    """SHA-256 of ``header`` and of every named pytree (structure and leaf bytes)."""
    h = hashlib.sha256(header.encode())
    for name, tree in trees.items():
        h.update(name.encode())
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        h.update(_ADDRESS.sub("", str(treedef)).encode())
        for leaf in leaves:
            _update_leaf(h, leaf)
    return h.hexdigest()


def _update_code(h: Any, obj: Any, depth: int, seen: set) -> None:
    """Hash what a Python callable computes: code objects, closure cells, defaults, partial arguments."""
    if depth > _MAX_DEPTH or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, functools.partial):
        _update_code(h, obj.func, depth + 1, seen)
        for a in list(obj.args) + list(obj.keywords.values()):
            _update_value(h, a, depth + 1, seen)
        return
    if hasattr(obj, "spec") and hasattr(obj.spec, "base"):  # a kernel record: its model and construction
        _update_code(h, obj.spec.apply_fn, depth + 1, seen)
        return
    fn = getattr(obj, "__wrapped__", None) or obj
    code = getattr(fn, "__code__", None)
    if code is None:
        h.update(type(obj).__qualname__.encode())
        call = getattr(type(obj), "__call__", None)  # noqa: B004
        if call is not None and hasattr(call, "__code__"):
            _update_code(h, call, depth + 1, seen)
        return
    _update_code_object(h, code)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            _update_value(h, cell.cell_contents, depth + 1, seen)
        except ValueError:  # empty cell
            h.update(b"<empty>")
    for d in getattr(fn, "__defaults__", None) or ():
        _update_value(h, d, depth + 1, seen)


def _stable_repr(c: Any) -> str:
    """``repr`` of a constant in an order that does not depend on the process: a set's (``x in {"a", "b"}``
    compiles to a frozenset) follows string hashing, which ``PYTHONHASHSEED`` randomises per process, so the same
    model got another fingerprint in every run and no store or cache could be resumed."""
    if isinstance(c, (set, frozenset)):
        return type(c).__name__ + "{" + ", ".join(sorted(_stable_repr(e) for e in c)) + "}"
    if isinstance(c, tuple) and _holds_set(c):
        return "(" + ", ".join(_stable_repr(e) for e in c) + ",)"
    return _ADDRESS.sub("", repr(c))  # everything else as before: the fingerprints of existing stores stand


def _holds_set(c: Any) -> bool:
    return isinstance(c, (set, frozenset)) or (isinstance(c, tuple) and any(_holds_set(e) for e in c))


def _update_code_object(h: Any, code: types.CodeType) -> None:
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _update_code_object(h, c)
        else:
            h.update(_stable_repr(c).encode())


def _update_value(h: Any, v: Any, depth: int, seen: set) -> None:
    if callable(v) and not isinstance(v, type):
        _update_code(h, v, depth, seen)
    elif isinstance(v, (jax.Array, np.ndarray)):
        _update_leaf(h, v)
    elif isinstance(v, (bool, int, float, complex, str, bytes, type(None))):
        h.update(repr(v).encode())
    elif isinstance(v, (set, frozenset)):
        h.update(_stable_repr(v).encode())
    elif isinstance(v, (tuple, list)) and len(v) <= 64:
        for x in v:
            _update_value(h, x, depth + 1, seen)
    elif isinstance(v, dict) and len(v) <= 64:
        for k, x in v.items():
            h.update(repr(k).encode())
            _update_value(h, x, depth + 1, seen)
    else:
        h.update(type(v).__qualname__.encode())


def model_fingerprint(
    fns: dict[str, Callable | None], traced: dict[str, tuple[Callable, tuple]], model: Callable | None
) -> str:
    """SHA-256 of the jaxprs of ``traced`` (name → (function, abstract arguments)), the code of ``fns`` and of the
    model function ``model``."""
    h = hashlib.sha256()
    for name, (f, args) in traced.items():
        closed = jax.make_jaxpr(f)(*args)
        h.update(name.encode())
        h.update(_ADDRESS.sub("", str(closed.jaxpr)).encode())
        for c in closed.consts:
            _update_leaf(h, c)
    for name, f in list(fns.items()) + [("model", model)]:
        h.update(name.encode())
        if f is not None:
            _update_code(h, f, 0, set())
    return h.hexdigest()


def numeric_mode(trees: Any) -> dict:
    """What a store records of the numeric mode of a call: ``x64`` (``jax_enable_x64`` in effect, a context manager
    included) and ``input_dtypes`` (the distinct dtypes of the leaves of ``trees``, as given)."""
    leaves = jax.tree_util.tree_leaves(trees)
    dtypes = sorted({str(leaf.dtype) if hasattr(leaf, "dtype") else type(leaf).__name__ for leaf in leaves})
    return dict(x64=bool(jax.dtypes.canonicalize_dtype(np.float64) == np.float64), input_dtypes=dtypes)


def _dtype_name(s: Any) -> str:
    try:
        return np.dtype(s).name
    except TypeError:
        return str(s)


def mode_change(stored: dict, now: dict) -> tuple[bool, str]:
    """How the numeric mode of a call (``now``: :func:`numeric_mode`, plus ``dtype``, the output's, when known)
    differs from the one recorded in a store's header: ``(True, what differs)``, else ``(False, note)`` — the note
    a hint that the mode may have changed when the header records no mode (a store made before it was kept), else
    empty."""
    on = {True: "on", False: "off"}
    parts = []
    if isinstance(stored.get("x64"), bool) and stored["x64"] != now["x64"]:
        parts.append(f"jax_enable_x64 was {on[stored['x64']]} when the store was begun and is {on[now['x64']]} now")
    if isinstance(stored.get("input_dtypes"), list) and stored["input_dtypes"] != now["input_dtypes"]:
        was, now_ = ", ".join(map(str, stored["input_dtypes"])), ", ".join(now["input_dtypes"])
        parts.append(f"the inputs' dtypes were {was} and are {now_} now")
    if "dtype" in now and isinstance(stored.get("dtype"), str) and stored["dtype"] != now["dtype"]:
        parts.append(f"the stored dtype is {_dtype_name(stored['dtype'])}, this call's {_dtype_name(now['dtype'])}")
    if parts:
        return True, "; ".join(parts)
    return (
        False,
        "" if "x64" in stored else "or jax_enable_x64 / the inputs' dtypes changed: the store does not record them",
    )
