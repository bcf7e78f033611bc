"""Batches of inputs as pytrees, and the canonical model the gradient kernels compute with.

Inputs. A batch ``x`` is an array ``(N, ...)`` or any pytree of arrays that share the leading batch size ``N``: a
dict ``{"tokens": int32 (N, L), "mask": bool (N, L)}``, a tuple ``(image, metadata)``, a registered dataclass...
Integer and boolean leaves are allowed (tokens, masks: the kernels differentiate the parameters, never ``x``); float
leaves must be finite; complex leaves are refused. A list or tuple of Python numbers only (no arrays) is one array,
as before. Every row operation of the tiling code (slice, pad, reshape into blocks, concatenate) maps over the leaves.

Outputs. ``apply_fn(params, x)`` returns ``(N, C)`` logits or ``(N, ..., C)`` (per-token logits ``(N, L, V)``). The
gradient kernels treat the per-example output as one flat vector of ``C_out = L·V`` outputs in C order (output
index ``t·V + c`` for position ``t`` and class ``c``): the trace kernels sum over positions and classes, pNTK sums
the outputs and divides by ``C_out``, eNTK has class axes ``(C_out, C_out)``.

Canonical model. The implementations (Jacobians, NTK-vector products, structured derivatives, projections) take one
input array and 2-D outputs. :func:`canonical` gives ``(fn, x1c, x2c)``: a pytree batch is packed into one ``uint8``
array ``(N, B)`` holding the bytes of its leaves (bit-exact for every dtype; x1 and x2 packed with one layout, their
dtypes promoted leaf by leaf), unpacked inside ``fn`` before ``apply_fn`` is called; outputs ``(N, ..., C)`` are
reshaped to ``(N, C_out)``. The wrapper is memoized per ``(apply_fn, layout)``, so compiled code and the choice of
``implementation="auto"`` are reused across calls. An array batch with 2-D outputs passes through unchanged (the
same ``apply_fn``, bit-identical results).

Example:
  >>> def model(params, x):                          # tokens + mask -> per-token logits (N, L, V)
  ...     h = jnp.tanh(params["emb"][x["tokens"]]) * x["mask"][..., None]
  ...     return h @ params["out"]
  >>> k1, k2 = jax.random.split(jax.random.key(0))
  >>> params = {"emb": jax.random.normal(k1, (7, 4)), "out": jax.random.normal(k2, (4, 7))}
  >>> x = {"tokens": jnp.array([[1, 2, 3], [4, 5, 0]]), "mask": jnp.array([[True, True, False], [True] * 3])}
  >>> jc.trace_ntk(model)(params, x).shape          # traced over positions and classes
  (2, 2)
  >>> jc.empirical_ntk(model)(params, x).shape      # (position, class) pairs as outputs: 3 · 7 = 21
  (2, 2, 21, 21)
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_finite
from ._memo import memoized

__all__ = [
    "is_array",
    "batch_size",
    "describe",
    "validate_x",
    "validate_pair",
    "take_rows",
    "pad_rows",
    "tree_rows",
    "Layout",
    "canonical",
    "check_outputs",
    "ModelModeError",
]


class ModelModeError(ValueError):
    """A model adapter found the model in a mode kernels cannot use (training mode); passed through unwrapped."""


def is_array(x: Any) -> bool:
    """True for one array (NumPy, JAX, a tracer), False for a pytree of arrays."""
    return hasattr(x, "shape") and hasattr(x, "dtype")


def batch_size(x: Any) -> int:
    """The leading size ``N`` of a (validated) batch: an array or a pytree of arrays."""
    if is_array(x):
        return int(x.shape[0])
    return int(jax.tree_util.tree_leaves(x)[0].shape[0])


def describe(x: Any) -> str:
    """``"shape (4, 3)"`` for an array; ``"{'mask': bool(4, 8), 'tokens': int32(4, 8)}"`` for a pytree."""
    if is_array(x):
        return f"shape {tuple(x.shape)}"
    leaves = jax.tree_util.tree_leaves_with_path(x)
    parts = [f"{jax.tree_util.keystr(p) or '.'}: {jnp.result_type(l)}{tuple(jnp.shape(l))}" for p, l in leaves]
    return "pytree {" + ", ".join(parts) + "}"


def _check_array(x: Any, name: str) -> jax.Array:
    if len(x.shape) < 1:
        raise ValueError(f"{name} must be a batch of shape (N, ...), got a scalar.")
    if x.shape[0] < 1:
        raise ValueError(f"{name} is empty: expected at least one example along axis 0, got shape {tuple(x.shape)}.")
    try:
        dt = jnp.result_type(x)
    except TypeError:  # object arrays, strings, raw bytes
        hint = (
            f"convert it first, e.g. np.asarray({name}, dtype=np.float32)"
            if x.dtype.kind == "O"
            else "encode it as numbers first (e.g. token ids)"
        )
        raise TypeError(f"{name} has dtype {x.dtype}: expected numbers (float, int or bool); {hint}.") from None
    if jnp.issubdtype(dt, jnp.complexfloating):
        raise TypeError(
            f"{name} has complex dtype {jnp.result_type(x)}: kernels of complex inputs are not "
            "supported (a real kernel of them would be silently different); pass real inputs, e.g. "
            "the real and imaginary parts as features."
        )
    check_finite(x, name)
    if isinstance(x, np.ndarray) and x.dtype == np.float64 and not jax.config.jax_enable_x64 and x.size:
        big = float(np.max(np.abs(x)))
        if big > float(np.finfo(np.float32).max):  # finite here, inf once JAX takes it in float32
            raise ValueError(
                f"{name} has values up to {big:.3g}, beyond float32's range (3.4e38), and JAX runs in float32 "
                "(jax_enable_x64 is off): rescale the inputs, or enable x64 (jax.config.update('jax_enable_x64', "
                "True), JAX_ENABLE_X64=1)."
            )
    return x


def validate_x(x: Any, name: str) -> Any:
    """A non-empty batch: an array ``(N, ...)`` or a pytree of arrays with one leading size ``N >= 1``.

    Errors name the argument and, for a pytree, the leaf (``x1['mask']``). Leaves that are not arrays are converted
    with ``jnp.asarray``; a list or tuple of Python numbers only is one array.
    """
    if x is None:
        raise TypeError(f"{name} is required, got None.")
    if not is_array(x):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(x)
        if not any(is_array(l) for _, l in leaves) and isinstance(x, (list, tuple)) and leaves:
            try:  # nested Python numbers: one array, as before pytree inputs
                x = jnp.asarray(x)
            except (TypeError, ValueError) as e:
                raise TypeError(f"{name} must be an array of shape (N, ...), got {type(x).__name__}: {e}") from None
    if is_array(x):
        return _check_array(x, name)
    if not leaves:
        raise ValueError(
            f"{name} holds no arrays: expected an array of shape (N, ...) or a pytree (dict, tuple...) of arrays "
            f"with a leading batch axis, got {type(x).__name__}."
        )
    out = []
    for path, leaf in leaves:
        where = f"{name}{jax.tree_util.keystr(path)}"
        if not is_array(leaf):
            try:
                leaf = jnp.asarray(leaf)
            except (TypeError, ValueError) as e:
                raise TypeError(f"{where} must be an array, got {type(leaf).__name__}: {e}") from None
        try:
            dt = jnp.result_type(leaf)
        except TypeError:  # object arrays, strings, raw bytes
            dt = leaf.dtype
        if not (jnp.issubdtype(dt, jnp.number) or jnp.issubdtype(dt, jnp.bool_)):
            raise TypeError(f"{where} has dtype {dt}: expected numbers (float, int or bool).")
        if len(leaf.shape) < 1:
            raise ValueError(f"{where} is a scalar: every leaf of {name} needs the batch as axis 0, shape (N, ...).")
        out.append(leaf)
    sizes = {int(l.shape[0]) for l in out}
    if len(sizes) > 1:
        each = ", ".join(f"{name}{jax.tree_util.keystr(p)}: {int(l.shape[0])}" for (p, _), l in zip(leaves, out))
        raise ValueError(f"every leaf of {name} must have the same leading (batch) size N; got {each}.")
    for (path, _), leaf in zip(leaves, out):
        _check_array(leaf, f"{name}{jax.tree_util.keystr(path)}")
    return jax.tree_util.tree_unflatten(treedef, out)


def validate_pair(x1: Any, x2: Any, names: tuple[str, str] = ("x1", "x2")) -> tuple[Any, Any]:
    """``x1`` (and ``x2`` when given) are non-empty finite batches with the same structure and per-example shapes;
    errors call them ``names``."""
    n1, n2 = names
    x1 = validate_x(x1, n1)
    if x2 is None:
        return x1, x2
    x2 = validate_x(x2, n2)
    if is_array(x1) and is_array(x2):
        if tuple(x1.shape[1:]) != tuple(x2.shape[1:]):
            raise ValueError(
                f"{n1} and {n2} must have the same per-example shape: {n1} has {tuple(x1.shape[1:])}, "
                f"{n2} has {tuple(x2.shape[1:])} (shapes {tuple(x1.shape)} and {tuple(x2.shape)})."
            )
        _same_kind(x1, x2, "", names)
        return x1, x2
    t1 = None if is_array(x1) else jax.tree_util.tree_structure(x1)
    t2 = None if is_array(x2) else jax.tree_util.tree_structure(x2)
    if (t1 is None) != (t2 is None) or (t1 is not None and t1 != t2):  # (a PyTreeDef refuses to compare with None)
        raise ValueError(
            f"{n1} and {n2} must have the same structure: {n1} is a {describe(x1)}, {n2} is a {describe(x2)}."
        )
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(x1), jax.tree_util.tree_leaves(x2)):
        if tuple(a.shape[1:]) != tuple(b.shape[1:]):
            k = jax.tree_util.keystr(path)
            raise ValueError(
                f"{n1} and {n2} must have the same per-example shapes: {n1}{k} has {tuple(a.shape[1:])}, "
                f"{n2}{k} has {tuple(b.shape[1:])} (shapes {tuple(a.shape)} and {tuple(b.shape)})."
            )
        _same_kind(a, b, jax.tree_util.keystr(path), names)
    return x1, x2


def _same_kind(a: Any, b: Any, k: str, names: tuple[str, str] = ("x1", "x2")) -> None:
    """Integer (or boolean) against floating leaves: promoted together they would turn token ids into floats."""
    fa, fb = (jnp.issubdtype(jnp.result_type(v), jnp.inexact) for v in (a, b))
    if fa != fb:
        raise TypeError(
            f"{names[0]}{k} and {names[1]}{k} must both be integer or both floating-point (they are batched "
            f"together), got {jnp.result_type(a)} and {jnp.result_type(b)}; cast one of them (token ids stay integers)."
        )


def tree_rows(f: Callable, *xs: Any) -> Any:
    """``f`` applied leaf by leaf to batches of one structure (an array is a one-leaf tree)."""
    return jax.tree_util.tree_map(f, *xs)


def take_rows(x: Any, lo: int, hi: int) -> Any:
    """Rows ``lo:hi`` of every leaf."""
    return jax.tree_util.tree_map(lambda l: l[lo:hi], x)


def pad_rows(x: Any, n_to: int) -> Any:
    """Pad axis 0 of every leaf to ``n_to`` rows by repeating the first row (real data: no zero-gradient
    artefacts)."""

    def pad(l):
        n = l.shape[0]
        if n == n_to:
            return l
        fill = jnp.broadcast_to(l[:1], (n_to - n,) + tuple(l.shape[1:]))
        return jnp.concatenate([l, fill], axis=0)

    return jax.tree_util.tree_map(pad, x)


# ------------------------------------------------------------------------------------------------------------------
# the canonical model: one uint8 input array, 2-D outputs
# ------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Layout:
    """Per-example layout of a packed pytree batch: structure, per-leaf shapes and dtypes (hashable)."""

    treedef: Any
    shapes: tuple
    dtypes: tuple

    def nbytes(self) -> tuple:
        return tuple(math.prod(s) * np.dtype(d).itemsize for s, d in zip(self.shapes, self.dtypes))


def _layout(x1: Any, x2: Any) -> Layout:
    leaves, treedef = jax.tree_util.tree_flatten(x1)
    others = jax.tree_util.tree_leaves(x2) if x2 is not None else leaves
    dtypes = tuple(np.dtype(jnp.result_type(a, b)).name for a, b in zip(leaves, others))
    return Layout(treedef, tuple(tuple(int(s) for s in l.shape[1:]) for l in leaves), dtypes)


def _pack(x: Any, layout: Layout) -> jax.Array:
    cols = []
    for leaf, dt in zip(jax.tree_util.tree_leaves(x), layout.dtypes):
        n = leaf.shape[0]
        leaf = jnp.asarray(leaf).astype(dt)
        if leaf.dtype == jnp.bool_:
            b = leaf.astype(jnp.uint8)
        else:
            b = jax.lax.bitcast_convert_type(leaf, jnp.uint8)  # (..., itemsize), or (...) for 1-byte dtypes
        cols.append(b.reshape(n, -1))
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=1)


def _unpack(xb: jax.Array, layout: Layout) -> Any:
    n = xb.shape[0]
    leaves, off = [], 0
    for shape, dt, nb in zip(layout.shapes, layout.dtypes, layout.nbytes()):
        b = xb[:, off : off + nb]
        off += nb
        dt = np.dtype(dt)
        if dt == np.bool_:
            leaves.append(b.reshape((n,) + shape) != 0)
        elif dt.itemsize == 1:
            leaves.append(jax.lax.bitcast_convert_type(b.reshape((n,) + shape), dt))
        else:
            leaves.append(jax.lax.bitcast_convert_type(b.reshape((n,) + shape + (dt.itemsize,)), dt))
    return jax.tree_util.tree_unflatten(layout.treedef, leaves)


def _wrapped(apply_fn: Callable, layout: Layout | None, flatten: bool) -> Callable:
    def fn(params, x):
        out = apply_fn(params, x if layout is None else _unpack(x, layout))
        return out.reshape(out.shape[0], -1) if flatten else out

    return fn


_CANON: collections.OrderedDict = collections.OrderedDict()  # memo of a pure function of static data
_CANON_SIZE = 256


def canonical(apply_fn: Callable, x1: Any, x2: Any, out_ndim: int) -> tuple[Callable, Any, Any]:
    """``(fn, x1c, x2c)``: the model on one input array with 2-D outputs (module docstring); ``out_ndim`` is the
    number of axes of ``apply_fn(params, x1)``. Returns ``(apply_fn, x1, x2)`` itself for an array batch with 2-D
    outputs."""
    layout = None if is_array(x1) else _layout(x1, x2)
    flatten = out_ndim > 2
    if layout is None and not flatten:
        return apply_fn, x1, x2
    # an unhashable apply_fn gets a new wrapper (compiled code is not reused)
    fn = memoized(_CANON, (apply_fn, layout, flatten), lambda: _wrapped(apply_fn, layout, flatten), _CANON_SIZE)
    if layout is None:
        return fn, x1, x2
    return fn, _pack(x1, layout), (None if x2 is None else _pack(x2, layout))


def check_outputs(apply_fn: Callable, params: Any, x1: Any) -> tuple:
    """The shape of ``apply_fn(params, x1)`` (abstract evaluation, no FLOPs): ``(N, C)`` or ``(N, ..., C)``."""
    try:
        out = jax.eval_shape(apply_fn, params, x1)
    except ModelModeError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise TypeError(f"apply_fn(params, x1) failed for x1 of {describe(x1)}: {type(e).__name__}: {e}") from e
    shape = getattr(out, "shape", None)
    n = batch_size(x1)
    if shape is None or len(shape) < 2 or shape[0] != n:
        got = shape if shape is not None else type(out).__name__
        raise ValueError(
            f"apply_fn must return logits of shape (N, C) (or (N, ..., C), e.g. per-token logits) for a batch of N "
            f"examples; for x1 of {describe(x1)} it returned {got}. Reshape scalar outputs to (N, 1)."
        )
    if math.prod(shape[1:]) < 1:
        raise ValueError(f"apply_fn returned zero outputs per example (shape {tuple(shape)}).")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"apply_fn must return floating-point logits, got dtype {out.dtype} (shape {tuple(shape)}): outputs of "
            "integer or boolean type have no gradient, and every kernel of them would be zero. Return the logits "
            "before any argmax or cast."
        )
    return tuple(int(s) for s in shape)
