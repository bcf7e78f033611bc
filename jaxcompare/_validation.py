"""Input validation shared by every public function.

Rules (see shared/style.md): validate at the public boundary, in Python, before heavy work; say what was wrong and
what was expected. Value checks (finite, ranges of data) run only on concrete arrays: under ``jit``/``vmap`` the
inputs are tracers and only shapes/dtypes can be checked, which is documented on each public function.

Arrays that span devices of other processes (global arrays under ``jax.distributed``) cannot be copied to the host:
their value checks run on the devices as one jitted reduction whose small result is replicated on every process
(:func:`device_reduce`); every process runs the same checks (the SPMD script), as these reductions are collectives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "is_concrete",
    "as_float_array",
    "check_array",
    "check_finite",
    "check_finite_tree",
    "check_int",
    "check_flag",
    "host_float64",
    "at_least_float32",
    "check_float",
    "check_probability",
    "check_choice",
    "check_key",
    "check_labels",
    "check_same_length",
    "REQUIRED",
    "key_first",
    "check_real_points",
    "check_complex_points",
    "check_upper_half_plane",
    "spans_processes",
    "device_reduce",
]


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (not a tracer inside ``jit``/``vmap``/``grad``)."""
    return not isinstance(x, jax.core.Tracer)


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def spans_processes(x: Any) -> bool:
    """True for a concrete ``jax.Array`` with shards on devices of other processes (not fully addressable)."""
    return is_concrete(x) and isinstance(x, jax.Array) and not x.is_fully_addressable


def _replicated(sharding: jax.sharding.Sharding) -> jax.sharding.NamedSharding:
    """Replicated over the devices of ``sharding`` (ordered by id, the same order on every process)."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    devices = np.array(sorted(sharding.device_set, key=lambda d: d.id))
    return jax.sharding.NamedSharding(jax.sharding.Mesh(devices, ("devices",)), jax.sharding.PartitionSpec())


def device_reduce(fn: Any, x: jax.Array, *more: jax.Array) -> Any:
    """``fn(x, *more)`` (small outputs: counts, extremes) computed where ``x`` lives, returned as NumPy values.

    For an array that spans other processes the outputs are replicated on every process, so each reads them without
    copying ``x`` to the host; every process must call it (a collective). Pass a module-level ``fn`` (one compile).
    """
    out = jax.jit(fn, out_shardings=_replicated(x.sharding))(x, *more)
    return jax.tree.map(np.asarray, out)


def _nonfinite_counts(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.sum(jnp.isnan(x)), jnp.sum(jnp.isinf(x))


def _all_whole(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x) & (x == jnp.round(x)))


def _min_max(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.min(x), jnp.max(x)


def check_finite(x: Any, name: str) -> None:
    """Raise ``ValueError`` if a concrete array has NaN or inf entries (no-op on tracers)."""
    if not is_concrete(x):
        return
    if spans_processes(x):  # counted on the devices: the array cannot (and should not) come to this host
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            return
        n_nan, n_inf = (int(c) for c in device_reduce(_nonfinite_counts, x))
        shape = x.shape
    else:
        a = np.asarray(x)
        if not jnp.issubdtype(a.dtype, jnp.inexact) or np.all(np.isfinite(a)):  # bfloat16 too (NumPy kind "V")
            return
        n_nan, n_inf, shape = int(np.isnan(a).sum()), int(np.isinf(a).sum()), a.shape
    if n_nan or n_inf:
        raise ValueError(
            f"{name} must be finite, but it has {n_nan} NaN and {n_inf} infinite entries "
            f"(shape {_shape_str(shape)}); remove or impute them first."
        )


def check_finite_tree(tree: Any, name: str) -> None:
    """``check_finite`` on every leaf of a pytree, naming the leaf path on failure."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    for path, leaf in leaves:
        if hasattr(leaf, "dtype") or isinstance(leaf, (float, int)):
            check_finite(leaf, f"{name}{jax.tree_util.keystr(path)}")


def as_float_array(x: Any, name: str, dtype: Any = None) -> jax.Array:
    """Convert to a floating ``jax.Array`` keeping a floating dtype, promoting ints/bools to the default float."""
    if dtype is None and not isinstance(x, jax.Array) and not jax.config.jax_enable_x64:
        try:
            xn = np.asarray(x)
        except (TypeError, ValueError):
            xn = None  # reported below
        if xn is not None and xn.dtype.kind in "iu" and xn.size and (xn.max() > 2**31 - 1 or xn.min() < -(2**31)):
            x = xn.astype(np.float64)  # to float32 by value: JAX would wrap int64 to int32 first (2**32 -> 0)
    try:
        a = jnp.asarray(x) if dtype is None else jnp.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:  # e.g. strings, ragged lists
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}: {e}") from None
    if not jnp.issubdtype(a.dtype, jnp.floating):
        if jnp.issubdtype(a.dtype, jnp.complexfloating):
            raise TypeError(f"{name} must be real-valued, got dtype {a.dtype}.")
        a = a.astype(jnp.result_type(float))
    return a


def check_array(
    x: Any,
    name: str,
    *,
    ndim: int | Sequence[int] | None = None,
    min_size: int = 1,
    finite: bool = True,
    floating: bool = True,
    shape: Sequence[int | None] | None = None,
) -> jax.Array:
    """Validate and convert an array argument.

    Args:
      x: array-like input.
      name: argument name used in error messages.
      ndim: required number of dimensions (int or allowed ints).
      min_size: minimum length of every axis (1 rejects empty arrays).
      finite: reject NaN/inf (concrete arrays only).
      floating: convert to a floating dtype (ints promoted, floats kept).
      shape: required shape, ``None`` entries are free.

    Returns:
      ``jax.Array``.
    """
    if x is None:
        raise TypeError(f"{name} is required, got None.")
    a = as_float_array(x, name) if floating else jnp.asarray(x)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            exp = " or ".join(str(d) for d in allowed)
            raise ValueError(
                f"{name} must have {exp} dimensions, got shape {_shape_str(a.shape)} ({a.ndim} dimensions)."
            )
    if shape is not None:
        if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
            exp = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {exp}, got {_shape_str(a.shape)}.")
    if min_size and any(s < min_size for s in a.shape):
        raise ValueError(
            f"{name} must not be empty: every axis needs at least {min_size} entries, got shape {_shape_str(a.shape)}."
        )
    if finite:
        check_finite(a, name)
    return a


def at_least_float32(a: jax.Array) -> jax.Array:
    """float16/bfloat16 arrays in float32 (others unchanged): counts, sums, ranks and permutation-test ties in them
    were wrong (float16 counts stop at 2048, bfloat16 at 256; a bfloat16 tie window of 16·eps is 0.125)."""
    return a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) and a.dtype.itemsize < 4 else a


def host_float64(x: Any, a: jax.Array) -> np.ndarray:
    """The float64 host values of the input ``x`` that was validated as ``a``.

    A NumPy array or a list keeps its own precision here, which ``a`` lost when ``jax_enable_x64`` is off (float64
    values rounded to float32 can tie: ``1 + 1e-9`` and ``1 + 2e-9`` become one value); a ``jax.Array`` holds no more
    than its dtype, so its values are read from ``a``. Only for concrete ``a``.
    """
    if isinstance(x, jax.Array) or a.dtype == jnp.float64:
        return np.asarray(a, np.float64)
    return np.asarray(x, np.float64).reshape(a.shape)


def check_flag(v: Any, name: str) -> bool:
    """A yes/no option: ``True``/``False`` (NumPy's booleans too), never a string or a number read as truthy."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    raise TypeError(f"{name} must be True or False, got {v!r} ({type(v).__name__}).")


def check_int(v: Any, name: str, *, min: int | None = None, max: int | None = None) -> int:
    """Validate a Python integer parameter (not a float, not a bool)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {v!r} ({type(v).__name__}).")
    v = int(v)
    if min is not None and v < min:
        raise ValueError(f"{name} must be >= {min}, got {v}.")
    if max is not None and v > max:
        raise ValueError(f"{name} must be <= {max}, got {v}.")
    return v


def check_float(
    v: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """Validate a scalar real parameter in a (half-)open/closed interval; tracers pass through unchecked."""
    if not is_concrete(v):
        return v
    if isinstance(v, (str, bytes, bool, np.bool_)) or (  # "1e-3" passed on to jax failed deep inside; True read as 1
        hasattr(v, "dtype") and (np.dtype(v.dtype) == np.bool_ or np.dtype(v.dtype).kind in "USO")
    ):
        raise TypeError(f"{name} must be a real number, got {v!r} ({type(v).__name__}).")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {v!r}.") from None
    if not np.isfinite(f):
        raise ValueError(f"{name} must be finite, got {f}.")
    lo_ok = low is None or (f > low if low_open else f >= low)
    hi_ok = high is None or (f < high if high_open else f <= high)
    if not (lo_ok and hi_ok):
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must lie in {lb}{lo}, {hi}{hb}, got {f:g}.")
    return v


def check_probability(v: Any, name: str, *, open_low: bool = True, open_high: bool = True) -> Any:
    """A level/probability in (0, 1) by default."""
    return check_float(v, name, low=0.0, high=1.0, low_open=open_low, high_open=open_high)


def check_choice(v: Any, name: str, choices: Sequence[str]) -> str:
    if v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {v!r}.")
    return v


def check_key(key: Any, name: str = "key") -> jax.Array:
    """Accept a typed key (``jax.random.key``) or a legacy uint32[2] key; return a typed key."""
    if key is None:
        raise TypeError(f"{name} is required: pass an explicit PRNG key, e.g. jax.random.key(0).")
    if hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(_key_batch_message(name, key.shape))
        return key
    a = jnp.asarray(key) if not isinstance(key, int) else None
    if a is None or a.dtype != jnp.uint32 or a.shape[-1:] != (2,):
        raise TypeError(
            f"{name} must be a PRNG key from jax.random.key(seed) (or jax.random.PRNGKey(seed)), got {key!r}."
        )
    if a.shape != (2,):
        raise ValueError(_key_batch_message(name, a.shape[:-1]))
    return jax.random.wrap_key_data(a)


def key_from_seed(seed: Any, name: str = "seed") -> jax.Array:
    """``jax.random.key(seed)`` for an integer seed in ``[0, 2**63)``, the same key with and without x64.

    Without ``jax_enable_x64`` JAX keeps only the low 32 bits of a seed (seeds 0 and ``2**32`` gave one key, and a
    seed ``≥ 2**32`` another key than with x64). Seeds below ``2**32`` give ``jax.random.key(seed)`` exactly; larger
    ones the key that ``jax.random.key(seed)`` gives under x64 (threefry: the seed's high and low 32-bit words), or,
    for another PRNG implementation, ``fold_in(key(low word), high word)``.

    Example:
      >>> from jaxcompare._validation import key_from_seed
      >>> bool(jnp.all(jax.random.key_data(key_from_seed(7)) == jax.random.key_data(jax.random.key(7))))
      True
      >>> jax.random.key_data(key_from_seed(2**32 + 5)).tolist()
      [1, 5]
    """
    seed = check_int(seed, name, min=0, max=2**63 - 1)
    if seed < 2**32:
        return jax.random.key(seed)
    hi, lo = seed >> 32, seed & 0xFFFFFFFF
    base = jax.random.key(lo)
    if jax.random.key_data(base).shape == (2,):  # threefry2x32: key data (high word, low word) as under x64
        return jax.random.wrap_key_data(np.array([hi, lo], np.uint32), impl=jax.random.key_impl(base))
    return jax.random.fold_in(base, hi)


def _key_batch_message(name: str, batch: tuple) -> str:
    return (
        f"{name} must be one PRNG key, got a batch of keys of shape {_shape_str(tuple(batch))} (e.g. from "
        "jax.random.split); pass one of them, or jax.vmap over the keys to get one result per key."
    )


def check_labels(y: Any, name: str, n_classes: int | None = None, *, length: int | None = None) -> jax.Array:
    """Integer class labels in ``[0, n_classes)``; rejects floats with fractional parts, negatives, NaNs."""
    if not isinstance(y, jax.Array):  # NumPy or lists: checked in their own dtype (int64 beyond int32 wraps in JAX)
        yn = np.asarray(y)
        if yn.dtype.kind in "USO":
            raise TypeError(
                f"{name} must hold integer class labels in [0, n_classes), got {yn.dtype.name} values (strings or "
                f"objects); encode them first, e.g. codes = np.unique({name}, return_inverse=True)[1]."
            )
        if yn.dtype.kind == "f" and yn.size:  # whole numbers first: [0.5, 1.5] is no range error of n_classes=2
            _check_whole_host(yn, name)
        if yn.dtype.kind in "iuf" and yn.size:
            _check_label_range(yn.min(), yn.max(), name, n_classes)
    a = jnp.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer labels, got shape {_shape_str(a.shape)}.")
    if a.shape[0] == 0:
        raise ValueError(f"{name} must not be empty.")
    if length is not None and a.shape[0] != length:
        raise ValueError(f"{name} must have length {length} (one label per point), got {a.shape[0]}.")
    if jnp.issubdtype(a.dtype, jnp.floating):
        if is_concrete(a):
            if not spans_processes(a):
                _check_whole_host(np.asarray(a), name)
            elif not bool(device_reduce(_all_whole, a)):
                raise ValueError(_not_whole_message(name))
        a = a.astype(jnp.int32)
    elif jnp.issubdtype(a.dtype, jnp.bool_):
        a = a.astype(jnp.int32)
    elif not jnp.issubdtype(a.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer class labels, got dtype {a.dtype}.")
    if is_concrete(a):
        if spans_processes(a):
            lo, hi = (int(v) for v in device_reduce(_min_max, a))
        else:
            an = np.asarray(a)
            lo = int(an.min())
            hi = int(an.max())
        _check_label_range(lo, hi, name, n_classes)
    return a


def _not_whole_message(name: str, example: Any = None) -> str:
    eg = "" if example is None else f" (e.g. {example:g}, not a whole number)"
    return f"{name} must hold integer class labels; got non-integer or non-finite values{eg}."


def _check_whole_host(a: np.ndarray, name: str) -> None:
    """Float labels on the host are finite whole numbers, else ``ValueError`` naming one that is not."""
    bad = ~np.isfinite(a) | (a != np.round(a))
    if np.any(bad):
        raise ValueError(_not_whole_message(name, float(a[bad].flat[0])))


def _check_label_range(lo: Any, hi: Any, name: str, n_classes: int | None) -> None:
    top = np.iinfo(np.int32).max if n_classes is None else n_classes - 1
    if lo < 0 or hi > top:
        rng = f"[0, {n_classes})" if n_classes is not None else "[0, 2**31 - 1] (class indices)"
        lo, hi = (int(v) if float(v).is_integer() else float(v) for v in (lo, hi))
        raise ValueError(f"{name} must lie in {rng}; found values from {lo} to {hi}.")


def check_same_length(arrays: dict[str, Any], axis: int = 0) -> int:
    """All named arrays have the same length along ``axis``; returns it."""
    lens = {k: int(jnp.shape(v)[axis]) for k, v in arrays.items()}
    if len(set(lens.values())) > 1:
        desc = ", ".join(f"{k} has {v}" for k, v in lens.items())
        raise ValueError(f"lengths must match along axis {axis}: {desc}.")
    return next(iter(lens.values()))


class _Required:
    """Sentinel default of arguments that moved behind a positional key (shown as ``<required>``)."""

    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Required()


def key_first(fn_name: str, args: tuple, deprecated: dict, names: Sequence[str]) -> tuple:
    """Resolve ``(key, *data)`` for a function whose PRNG key became the first positional argument.

    The function is declared ``f(key=REQUIRED, a=REQUIRED, ..., /, *, ..., **deprecated)``: a new-style call binds
    ``args = (key, a, ...)``; an old-style call ``f(a, ..., key=k)`` (or with ``a=...`` by keyword) leaves the
    old arguments in ``args`` shifted by one and ``key`` (and the data keywords) in ``deprecated``; it is accepted
    for one release with a ``DeprecationWarning``.

    Args:
      fn_name: public name, for messages.
      args: the positional parameters as bound, key first.
      deprecated: the function's ``**kwargs`` (only ``key`` and the data names are accepted).
      names: names of the positional parameters, key first, for messages.

    Returns:
      ``(key, *data)`` in the new order.
    """
    import warnings

    data_names = list(names[1:])
    unknown = sorted(set(deprecated) - set(names))
    if unknown:
        raise TypeError(
            f"{fn_name}() got an unexpected keyword argument {unknown[0]!r}; "
            f"the signature is {fn_name}({', '.join(names)}, ...) with these passed by position."
        )
    usage = f"{fn_name}({', '.join(names)}, ...)"
    if "key" in deprecated:
        given = [a for a in args if a is not REQUIRED]
        if len(given) > len(data_names):
            raise TypeError(
                f"{fn_name}() got the PRNG key twice: pass it only as the first positional argument, {usage}."
            )
        key, data = deprecated["key"], given + [REQUIRED] * (len(data_names) - len(given))
    else:
        key, data = args[0], list(args[1:])
    for i, n in enumerate(data_names):
        if n in deprecated:
            if data[i] is not REQUIRED:
                raise TypeError(f"{fn_name}() got multiple values for argument {n!r}.")
            data[i] = deprecated[n]
    if deprecated:
        warnings.warn(
            f"{fn_name}() with {', '.join(sorted(deprecated))} passed by keyword is deprecated and will be "
            f"removed in the next release: pass the key as the first positional argument, {usage}.",
            DeprecationWarning,
            stacklevel=3,
        )
    out = (key, *data)
    missing = [n for n, a in zip(names, out) if a is REQUIRED]
    if missing:
        raise TypeError(
            f"{fn_name}() missing required positional argument(s) {', '.join(missing)}: call "
            f"{usage} with an explicit key, e.g. jax.random.key(0)."
        )
    return out


def check_real_points(x: Any, name: str) -> np.ndarray:
    """Host float64 copy of real, finite points of any shape (host-side laws: densities on a grid)."""
    try:
        a = np.asarray(x)
    except Exception as e:  # noqa: BLE001 - ragged lists, objects
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__}: {e}") from None
    if a.dtype.kind == "c":
        raise TypeError(
            f"{name} must be real points, got dtype {a.dtype}; pass the real grid (use the Stieltjes "
            f"transform for complex points)."
        )
    if a.dtype.kind not in "biuf" and a.dtype.name != "bfloat16":  # (NumPy sees bfloat16 as kind "V")
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}.")
    a = a.astype(np.float64)
    check_finite(a, name)
    return a


def check_complex_points(z: Any, name: str = "z") -> np.ndarray:
    """Host complex128 copy of finite numeric points (the common part of the Stieltjes-domain checks)."""
    try:
        a = np.asarray(z)
    except Exception as e:  # noqa: BLE001
        raise TypeError(f"{name} must be a numeric array, got {type(z).__name__}: {e}") from None
    if a.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be complex points, got dtype {a.dtype}.")
    a = a.astype(np.complex128)
    bad = ~np.isfinite(a)
    if np.any(bad):
        raise ValueError(f"{name} must be finite, but it has {int(bad.sum())} NaN/infinite entries.")
    return a


def check_upper_half_plane(z: Any, name: str = "z") -> np.ndarray:
    """Host complex128 copy of finite points with ``Im z > 0`` (where a Stieltjes transform is single-valued)."""
    if np.size(z) == 0:
        raise ValueError(f"{name} must not be empty.")
    a = check_complex_points(z, name)
    if np.any(a.imag <= 0):
        low = float(a.imag.min())
        raise ValueError(
            f"{name} must lie in the upper half-plane (Im z > 0), where the Stieltjes transform is "
            f"single-valued; got Im z = {low:g}. On the real axis use a small positive imaginary part, "
            f"e.g. x + 1e-3j."
        )
    return a
