"""The matmul precision of the package's Gram products, eigen-decompositions and kernel contractions.

``HIGHEST`` (full float32 accuracy on every backend: no TF32 on GPU, no bf16 passes on TPU) wherever a result is
compared with a float64 oracle or feeds an eigen-decomposition; it is the one constant every module imports.

The NTK family (:mod:`jaxcompare.ntk`) follows a *precision policy* instead, chosen per kernel (``precision=`` of
the factories) or for a block of code (``with jaxcompare.ntk.precision("high"):``):

``"highest"`` (default, every backend)
  float32 matrix products at full float32 accuracy (``lax.Precision.HIGHEST``): what a comparison with a float64
  oracle needs.
``"high"``
  ``lax.Precision.HIGH``: TF32 tensor cores on GPU, three bf16 passes on TPU; float32 accumulation.
``"default"``
  ``lax.Precision.DEFAULT``: the backend's fastest float32 product (TF32 on GPU, one bf16 pass on TPU); float32
  accumulation.

On CPU float32 products are exact float32 products whatever the setting: the three policies give the same kernel.
The policy covers the kernel contractions and every matrix product or convolution of the model that does not set its
own ``precision`` (applied with :func:`jax.default_matmul_precision` while the kernel is traced). It is resolved when
a kernel function is called (the factory's ``precision=`` first, else the innermost active context, else
``"highest"``) and reaches the compiled code as a static argument, so changing it recompiles.

Low-precision parameters (bfloat16, float16): gradients are computed in the parameters' dtype, every contraction
accumulates in float32 (:func:`accumulation_dtype`) and the kernel is returned in float32 by every implementation
(NTK-vector products form each entry in the model's dtype, then sum in float32). A kernel whose float32 sum would
overflow float16 is therefore returned finite; when the float16 gradients themselves overflow (inf/NaN in the
un-normalized kernel or its diagonal while params and inputs are finite) a :class:`FloatingPointError` names float16
and suggests float32/bfloat16 or loss scaling (:func:`check_overflow`). The flag is computed on device and one scalar
comes back; under the user's ``jax.jit`` it is a host callback and the error arrives as jax's runtime error wrapping the
same message. float32/float64 models are not checked (no extra host sync).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import types
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "HIGHEST",
    "PRECISIONS",
    "precision",
    "resolve_precision",
    "policy_precision",
    "traced_with_policy",
    "accumulation_dtype",
    "kernel_dtype",
    "low_precision_dtype",
    "finite_flag",
    "check_overflow",
]

HIGHEST = jax.lax.Precision.HIGHEST

#: the precision policies of the NTK family and the ``lax.Precision`` of their contractions
PRECISIONS: Mapping[str, jax.lax.Precision] = types.MappingProxyType(
    {"highest": jax.lax.Precision.HIGHEST, "high": jax.lax.Precision.HIGH, "default": jax.lax.Precision.DEFAULT}
)

# the policy of the innermost `precision(...)` block, or None; a context variable (per thread and task), read when a
# kernel is called and, inside the kernel's compiled function, while it is traced
_POLICY: contextvars.ContextVar[str | None] = contextvars.ContextVar("jaxcompare_ntk_precision", default=None)


def _check(policy: Any, name: str) -> str:
    if not isinstance(policy, str) or policy not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, PRECISIONS))}, got {policy!r}.")
    return policy


@contextlib.contextmanager
def precision(policy: str) -> Iterator[str]:
    """Precision policy of the NTK family's kernels called inside the block (unless their factory set ``precision=``).

    ``"highest"`` (default): float32 matrix products at full float32 accuracy on every backend (what a comparison
    with a float64 oracle needs). ``"high"``: TF32 on GPU, three bf16 passes on TPU, float32 accumulation.
    ``"default"``: the backend's fastest float32 product (TF32 on GPU, one bf16 pass on TPU). On CPU the three give
    the same kernel. The policy is part of the compiled function's cache key: a kernel called under another policy
    is compiled again, never served stale. Under your own ``jax.jit`` the policy in effect when the function is
    traced is the one compiled in (jit again, or set ``precision=`` on the factory, to change it).

    Args:
      policy: ``"highest"``, ``"high"`` or ``"default"``.

    Returns:
      A context manager (yielding ``policy``); blocks nest, the innermost wins.

    Example:
      >>> def apply_fn(params, x):                         # a tiny two-layer MLP: (N, 3) -> (N, 2) logits
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x = jax.random.normal(k3, (10, 3))
      >>> with jc.ntk.precision("high"):                    # TF32 / bf16x3 products on GPU / TPU
      ...     K = jc.trace_ntk(apply_fn)(params, x)
      >>> K.shape, bool(jnp.allclose(jnp.diag(K), 1.0))
      ((10, 10), True)
      >>> p16 = jax.tree_util.tree_map(lambda l: l.astype(jnp.bfloat16), params)
      >>> jc.trace_ntk(apply_fn)(p16, x).dtype             # bfloat16 model: accumulated and returned in float32
      dtype('float32')
    """
    token = _POLICY.set(_check(policy, "precision"))
    try:
        yield policy
    finally:
        _POLICY.reset(token)


def resolve_precision(policy: str | None = None) -> str:
    """The policy of a call: ``policy`` when given (validated), else the innermost active context, else
    ``"highest"``."""
    if policy is not None:
        return _check(policy, "precision")
    current = _POLICY.get()
    return "highest" if current is None else current


def policy_precision() -> jax.lax.Precision:
    """The ``lax.Precision`` of the contractions traced now (read at trace time by the kernel code)."""
    return PRECISIONS[resolve_precision()]


@contextlib.contextmanager
def traced_with_policy(policy: str) -> Iterator[None]:
    """Used inside a compiled function whose cache key holds ``policy`` (a static argument): while it is traced,
    the contractions read ``policy`` (:func:`policy_precision`) and the model's own products without an explicit
    precision follow it (:func:`jax.default_matmul_precision`)."""
    token = _POLICY.set(_check(policy, "precision"))
    try:
        with jax.default_matmul_precision(policy):
            yield
    finally:
        _POLICY.reset(token)


def accumulation_dtype(*arrays: Any) -> Any:
    """The dtype contractions of ``arrays`` accumulate in: their result type, at least float32 (bfloat16 and
    float16 factors are contracted with ``preferred_element_type=float32``)."""
    return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def kernel_dtype(params: Any) -> Any:
    """The dtype of a kernel of ``params``: the result type of its floating leaves, at least float32 (bfloat16 and
    float16 models get float32 kernels, float64 models float64)."""
    leaves = [l for l in jax.tree_util.tree_leaves(params) if jnp.issubdtype(jnp.result_type(l), jnp.floating)]
    if not leaves:
        return jnp.dtype(jnp.result_type(float))
    return jnp.promote_types(jnp.result_type(*leaves), jnp.float32)


def low_precision_dtype(params: Any) -> str | None:
    """The name of the narrowest floating dtype of ``params`` when it is narrower than float32 (``"float16"``,
    ``"bfloat16"``), else None: kernels of such models are checked for overflow."""
    names = {
        jnp.dtype(jnp.result_type(l)).name
        for l in jax.tree_util.tree_leaves(params)
        if jnp.issubdtype(jnp.result_type(l), jnp.floating) and jnp.dtype(jnp.result_type(l)).itemsize < 4
    }
    if not names:
        return None
    return "float16" if "float16" in names else sorted(names)[0]


def finite_flag(params: Any, *arrays: Any) -> jax.Array | None:
    """For a bfloat16/float16 model (:func:`low_precision_dtype`): a scalar array, all of ``arrays`` (None entries
    skipped) finite, computed on device inside the caller's compiled function; else None (nothing is checked)."""
    if low_precision_dtype(params) is None:
        return None
    flags = [
        np.all(np.isfinite(a)) if isinstance(a, np.ndarray) else jnp.all(jnp.isfinite(a))  # where the array lives
        for a in arrays
        if a is not None
    ]
    return functools.reduce(jnp.logical_and if any(isinstance(f, jax.Array) for f in flags) else np.logical_and, flags)


def _overflow_message(dtype: str | None, what: str, impl_name: str | None, source: str) -> str:
    where = (
        " (implementation 'ntvp' forms the kernel entries themselves in the model's dtype: 'structured' or 'jacobian'"
        " accumulate them in float32)"
        if impl_name == "ntvp"
        else ""
    )
    return (
        f"the {what} of this {dtype} model is not finite (inf or NaN) although params and inputs are finite: its "
        f"{dtype} {source} overflowed{where}"
        + (" (float16 holds values up to 65504)" if dtype == "float16" else "")
        + ". No kernel is returned. Use float32 or bfloat16 parameters, or scale the logits down inside apply_fn "
        "(loss scaling: dividing them by s divides the gradients by s and the unnormalized kernels by s², and leaves "
        "the normalized ones unchanged)."
    )


def _raise_if_not_finite(finite: Any, *, message: str) -> None:
    if not np.all(np.asarray(finite)):
        raise FloatingPointError(message)


def check_overflow(
    finite: Any, dtype: str | None, what: str, impl_name: str | None = None, source: str = "gradients"
) -> None:
    """Raise :class:`FloatingPointError` when the flag of :func:`finite_flag` is false (None: nothing to check).

    Eagerly one scalar comes back to the host (the kernel never does). Under a trace (the user's ``jax.jit`` or
    ``vmap``) the check is a host callback on that scalar: the error reaches the caller as jax's runtime error
    (``JaxRuntimeError``) wrapping the same message when the result is computed.

    Args:
      finite: the flag (a concrete or traced boolean array), or None.
      dtype: the low-precision dtype named in the message (``"float16"``, ``"bfloat16"``).
      what: what was computed (``"trace kernel"``).
      impl_name: the implementation, for its own advice (``"ntvp"``).
      source: what overflowed (``"gradients"``, ``"features"``).
    """
    if finite is None:
        return
    message = _overflow_message(dtype, what, impl_name, source)
    if isinstance(finite, jax.core.Tracer):
        jax.debug.callback(functools.partial(_raise_if_not_finite, message=message), finite)
    else:
        _raise_if_not_finite(finite, message=message)
