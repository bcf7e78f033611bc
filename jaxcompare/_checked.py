"""Opt-in checked mode: value checks that also run inside ``jit``/``vmap`` (built on ``jax.experimental.checkify``).

Eager calls validate their inputs' values in Python (NaN/inf, label ranges, ...), but under ``jit``/``vmap`` the
inputs are tracers and only shapes and dtypes can be checked there, so a NaN input would give a finite, plausible
answer. While :func:`checked` traces a function, public functions therefore also place ``checkify.debug_check``
predicates on their traced inputs (and on the ``result`` of ``throw=True`` solvers), and ``checked`` functionalizes
them, so the first failed check raises ``jax.experimental.checkify.JaxRuntimeError`` naming the argument, with its
position in a ``vmap`` batch. Outside checked mode no check is placed at all: the programs are the plain ones, and
``vmap`` over arrays sharded on ``Explicit`` mesh axes works (checkify's ``vmap`` rule sorts along the batch, which
``Explicit`` sharding forbids; checked mode itself therefore needs ``Auto`` axes or unsharded batches). Checked mode
is a ``jit`` cache key (``jax.make_user_context``): a function jitted and run before is traced again, with its
checks, inside ``checked``. The checks are placed only through :func:`checked`, not by a bare
``jax.experimental.checkify.checkify``.

What is checked under ``jit`` inside :func:`checked`:

* non-finite (NaN/inf) floating inputs of ``alpha_hat``, ``trimmed_ks``, ``w1_excess``, ``ensemble_alpha_hat``,
  ``fit_kglm``, ``kglm_logits``, ``faithfulness``, ``lwr.train``, ``churn``/``accuracy``/``hard_labels``,
  ``ensemble_label`` and the ``embed`` fits, tests and transforms;
* integer labels outside ``[0, n_classes)`` and float labels that are not whole numbers (``fit_kglm``,
  ``faithfulness``, ``accuracy``, ``embed`` labels);
* trimming levels and thresholds outside their ranges (``alpha``, ``threshold``);
* a ``throw=True`` solver or fit whose ``result`` is not ``successful`` (``fit_kglm``, ``lwr.train``).

What is not checked under ``jit``, even in checked mode: NaNs produced inside the computation from finite inputs
(use ``jax.experimental.checkify.float_checks`` via ``errors=`` for that), model functions (``apply_fn``) passed to
the kernels, and properties that need a host round trip (duplicate model indices, strictly increasing grids).
Python-side arguments (sizes, options, static ints) are always validated, traced or not.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxcompare as jc
  >>> from jaxcompare._checked import checked                # exported as jaxcompare.checked
  >>> ref = jnp.linspace(0.0, 1.0, 50)
  >>> f = jax.jit(lambda c: jc.alpha_hat(c, ref, threshold=0.2))
  >>> bool(jnp.isfinite(f(ref.at[3].set(jnp.nan))))       # unchecked: a plausible number
  True
  >>> try:
  ...     checked(f)(ref.at[3].set(jnp.nan))
  ... except Exception as e:
  ...     print(type(e).__name__, str(e).split(" (found")[0])
  JaxRuntimeError candidate must be finite: 1 NaN/inf entries
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from ._validation import is_concrete

__all__ = ["checked", "traced_finite", "traced_labels", "traced_range", "traced_result"]

# Whether checked mode is tracing: part of jit's cache key, so that a function jitted outside checked mode is traced
# again (with its checks) inside it. JAX versions without jax.make_user_context place the checks always (no-ops
# outside checkify, as before), which only costs the Explicit-axes vmap.
_make_user_context = getattr(jax, "make_user_context", None)
_CHECKED_MODE = None if _make_user_context is None else _make_user_context(default_value=False)


def _placing_checks() -> bool:
    """Whether the traced checks are to be placed now (inside :func:`checked`)."""
    return _CHECKED_MODE is None or bool(_CHECKED_MODE.value)


def checked(fn: Callable, *, errors: Any = None) -> Callable:
    r"""Run ``fn`` with its value checks active under ``jit``/``vmap``; raise on the first failed check.

    ``checked(fn)(*args)`` is ``checkify.checkify(fn, errors)(*args)`` followed by ``err.throw()``: the returned
    function has ``fn``'s signature and output and raises ``jax.experimental.checkify.JaxRuntimeError`` when a
    check fails. ``fn`` may itself be ``jax.jit``- or ``jax.vmap``-transformed (or call such functions); to keep
    the checks compiled, ``jit`` the checked function's body: ``jc.checked(jax.jit(f))``.

    Args:
      fn: any function of arrays that calls ``jaxcompare`` functions.
      errors: the ``checkify`` error set (default ``checkify.user_checks``: the package's own checks; add
        ``checkify.float_checks`` to also catch NaNs produced inside the computation).

    Returns:
      The checked function.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import jaxcompare as jc
      >>> from jaxcompare._checked import checked            # exported as jaxcompare.checked
      >>> K, y = jnp.eye(4), jnp.array([0, 1, 0, 5])          # label 5 with n_classes=2
      >>> fit = jax.jit(lambda y: jc.fit_kglm(K, y, n_classes=2, throw=False).W)
      >>> try:
      ...     checked(fit)(y)
      ... except Exception as e:
      ...     print(str(e).split(" (found")[0])
      labels must lie in [0, 2)
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}.")
    errs = checkify.user_checks if errors is None else errors
    cf = checkify.checkify(fn, errors=errs)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if _CHECKED_MODE is None:
            err, out = cf(*args, **kwargs)
        else:
            with _CHECKED_MODE(True):
                err, out = cf(*args, **kwargs)
        err.throw()
        return out

    return run


def traced_finite(x: Any, name: str) -> None:
    """Checked-mode check that a traced floating array is finite (nothing is placed for concrete arrays or outside
    checked mode; concrete arrays are validated eagerly by :mod:`jaxcompare._validation`)."""
    if not _placing_checks() or is_concrete(x) or not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.inexact):
        return
    bad = jnp.sum(~jnp.isfinite(x))
    checkify.debug_check(bad == 0, f"{name} must be finite: {{}} NaN/inf entries (found under jit).", bad)


def traced_range(
    x: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Checked-mode check that every entry of a traced array lies in an interval (NaN fails)."""
    if not _placing_checks() or is_concrete(x):
        return
    x = jnp.asarray(x)
    ok = jnp.ones(x.shape, bool) & (x == x)
    if low is not None:
        ok = ok & ((x > low) if low_open else (x >= low))
    if high is not None:
        ok = ok & ((x < high) if high_open else (x <= high))
    lb, hb = ("(" if low_open else "["), (")" if high_open else "]")
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    checkify.debug_check(
        jnp.all(ok),
        f"{name} must lie in {lb}{lo}, {hi}{hb} (found under jit); got {{}}.",
        jnp.where(jnp.all(ok), jnp.zeros((), x.dtype), x.reshape(-1)[jnp.argmin(ok.reshape(-1))]),
    )


def traced_labels(y: Any, name: str, n_classes: int | None = None) -> None:
    """Checked-mode check of traced class labels: whole numbers (float labels), in ``[0, n_classes)``."""
    if not _placing_checks() or is_concrete(y):
        return
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.floating):
        whole = jnp.all(jnp.isfinite(y) & (y == jnp.round(y)))
        checkify.debug_check(
            whole, f"{name} must hold whole-number class labels (found NaN/inf or fractions under jit)."
        )
    if jnp.issubdtype(y.dtype, jnp.bool_):
        return
    lo, hi = jnp.min(y), jnp.max(y)
    ok = lo >= 0 if n_classes is None else (lo >= 0) & (hi < n_classes)
    rng = ">= 0" if n_classes is None else f"[0, {n_classes})"
    checkify.debug_check(ok, f"{name} must lie in {rng} (found under jit); got values from {{}} to {{}}.", lo, hi)


def traced_result(result: Any, throw: bool, name: str) -> None:
    """Checked-mode report of a traced ``throw=True`` solver result that is not successful."""
    if not throw or not _placing_checks() or is_concrete(result):
        return
    code = jnp.max(result)
    checkify.debug_check(
        code == 0,
        f"{name} failed under jit: result code {{}} (see jaxcompare.Result; "
        f"pass throw=False to return the flagged result).",
        code,
    )
