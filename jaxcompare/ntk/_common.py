"""Shared pieces of the NTK family: argument checks, per-example functions, normalization, the kernel spec.

Vocabulary (shared/spec/ntk.md): ``apply_fn(params, x) -> (N, C)`` logits; ``g_c(x) = d f^c(x) / d params``
flattened over the parameter pytree.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._precision import (
    HIGHEST,  # noqa: F401 - re-exported to the area's modules
    accumulation_dtype,
    kernel_dtype,
    policy_precision,
)
from .._validation import check_finite_tree, is_concrete
from ._inputs import batch_size, canonical, check_outputs, describe, validate_pair, validate_x  # noqa: F401

__all__ = [
    "check_apply_fn",
    "KernelSpec",
    "Kernel",
    "Implementation",
    "kernel_spec",
    "cosine_normalize",
    "validate_kernel_args",
    "canonical_args",
    "validate_x",
    "validate_pair",
    "batch_size",
    "describe",
    "validate_params",
    "single_example",
    "tree_dot",
    "output_dtype",
    "contract",
]


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """What a kernel function built by this package is, so that other transforms can work with its parts.

    Attributes:
      name: registry name (``"trntk"``, ``"trntk0"``, ``"entk"``, ``"pntk"``, ``"pntk0"``, ``"ck"``, ``"em"``...;
        see :data:`jaxcompare.ntk.KERNELS`).
      base: the un-normalized kernel function ``(params, x1, x2=None) -> (N1, N2[, C, C])``.
      diag: ``(params, x) -> (N,)`` the diagonal ``base(params, x)[i, i]`` without forming the kernel, or None.
      normalize: whether the public kernel is ``base / sqrt(diag_i diag_j)`` (cosine normalization).
      swap_trailing: the kernel has trailing class axes ``(C, C)`` that swap when ``x1`` and ``x2`` swap
        (``K(x2, x1)[j, i, c', c] = K(x1, x2)[i, j, c, c']``).
      apply_fn: the model function the kernel was built from (for feature kernels: the feature/layers function).
      options: the construction options, for reports and for transforms that rebuild the kernel.
      label: display label (``"trNTK"``, ``"trNTK⁰"``, ``"pNTK"``, ``"proj-trNTK"``...).
      transforms: the transforms applied on top of the factory's kernel, outermost last (``("sharded",
        "batched")``), for reports and fingerprints.
    """

    name: str
    base: Callable
    diag: Callable | None
    normalize: bool = False
    swap_trailing: bool = False
    apply_fn: Callable | None = None
    options: tuple = ()
    label: str = ""
    transforms: tuple = ()


@dataclasses.dataclass(frozen=True, eq=False)
class Kernel:
    """A kernel function with its metadata: a callable frozen record ``kernel_fn(params, x1, x2=None)``.

    The metadata (:class:`KernelSpec`) is part of the object, not a function attribute, so transforms
    (:func:`batched`, :func:`sharded`, :func:`kernel_to_disk`) always see it and return new records whose
    ``spec.base``/``spec.diag`` are the transformed parts (``batched(sharded(k))`` tiles the sharded kernel).
    ``functools.partial`` of a record is a plain callable: transforms warn and treat it as a user kernel.

    Attributes:
      fn: the public kernel function ``(params, x1, x2=None) -> (N1, N2[, C, C])``.
      spec: its :class:`KernelSpec`.
    """

    fn: Callable
    spec: KernelSpec

    def __call__(self, params: Any, x1: Any, x2: Any = None) -> jax.Array:
        return self.fn(params, x1, x2)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def normalize(self) -> bool:
        return self.spec.normalize

    @property
    def jc_spec(self) -> KernelSpec:
        """The spec (the name of the former function attribute, kept for one release)."""
        return self.spec

    def __repr__(self) -> str:
        t = "".join(f"{n}(" for n in reversed(self.spec.transforms))
        return f"Kernel({t}{self.spec.name!r}{')' * len(self.spec.transforms)}, label={self.spec.label!r})"


def check_apply_fn(apply_fn: Any, name: str = "apply_fn") -> None:
    """A callable model, not one of our kernel functions: a kernel's ``(N1, N2)`` output would otherwise be taken for
    ``N2`` outputs per example and give a plausible but meaningless answer."""
    if not callable(apply_fn):
        raise TypeError(f"{name} must be a callable (params, x) -> ..., got {type(apply_fn).__name__}.")
    f, seen = apply_fn, 0
    while not isinstance(f, Kernel) and hasattr(f, "__wrapped__") and seen < 16:
        f, seen = f.__wrapped__, seen + 1
    if isinstance(f, Kernel):
        raise TypeError(
            f"{name} is a kernel function ({f!r}), not a model: pass the model itself, {name}(params, x), not a "
            f"kernel built from it such as jc.trace_ntk({name})."
        )


def kernel_spec(kernel_fn: Any, caller: str) -> KernelSpec | None:
    """The :class:`KernelSpec` of a kernel record, or None for a plain callable (documented fallback: treated as an
    opaque kernel, not re-normalized after tiling and not assumed symmetric).

    Wrappers that keep the signature (``jax.jit``, ``functools.wraps``: ``__wrapped__``) are looked through;
    ``functools.partial`` of a record warns, because its bound arguments may change what the kernel computes.
    """
    seen = 0
    f = kernel_fn
    while not isinstance(f, Kernel) and hasattr(f, "__wrapped__") and seen < 16:
        f = f.__wrapped__
        seen += 1
    if isinstance(f, Kernel):
        return f.spec
    if isinstance(kernel_fn, functools.partial) and isinstance(kernel_fn.func, Kernel):
        warnings.warn(
            f"{caller}: kernel_fn is a functools.partial of the kernel {kernel_fn.func.spec.name!r}; its metadata "
            "(normalization, symmetry) is not used — it is treated as a plain kernel function. Pass the kernel "
            "itself to keep them.",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


@dataclasses.dataclass(frozen=True)
class Implementation:
    """An implementation of the gradient kernels: pure, traceable functions (see ``_implementations``)."""

    name: str
    full: Callable
    trace: Callable
    pseudo: Callable
    trace_diag: Callable
    pseudo_diag: Callable
    description: str = ""


def tree_dot(a: Any, b: Any, spec: str) -> jax.Array:
    """Sum over the leaves of a parameter pytree of ``einsum(spec, leaf_a, leaf_b)`` with leaves flattened.

    Leaves are reshaped to ``lead_shape + (P_leaf,)`` where lead_shape has as many axes as the einsum operand
    minus one, so ``spec`` names the parameter axis ``p`` last, e.g. ``"icp,jcp->ij"``.
    """
    lhs, out = spec.split("->")
    sa, sb = lhs.split(",")
    total = None
    for la, lb in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        la = la.reshape(la.shape[: len(sa) - 1] + (-1,))
        lb = lb.reshape(lb.shape[: len(sb) - 1] + (-1,))
        t = contract(spec, la, lb)
        total = t if total is None else total + t
    if total is None:
        raise ValueError("params has no array leaves: there is nothing to differentiate.")
    return total


def single_example(apply_fn: Callable) -> Callable:
    """``f(params, x) -> (C,)`` for one example ``x`` (an array of shape ``x1.shape[1:]``, or a pytree of them)."""

    def f(params, x):
        return apply_fn(params, jax.tree_util.tree_map(lambda l: l[None], x))[0]

    return f


def output_dtype(params: Any) -> Any:
    """dtype of the kernels of ``params``: their floating result type, at least float32 (bfloat16/float16 models get
    float32 kernels; see :mod:`jaxcompare._precision`)."""
    return kernel_dtype(params)


def contract(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """``einsum(spec, a, b)`` of the kernel contractions: at the precision policy traced now and accumulated in at
    least float32 (``preferred_element_type``: bfloat16/float16 factors are never summed in their own dtype)."""
    return jnp.einsum(spec, a, b, precision=policy_precision(), preferred_element_type=accumulation_dtype(a, b))


_GRAM_COLS = 16384  # CPU: columns of a long row-block Gram product summed per step


def gram_rows(a: jax.Array, b: jax.Array) -> jax.Array:
    """``contract("ip,jp->ij", a, b)`` of two row blocks ``(N1, P)``, ``(N2, P)``. On CPU a long ``P`` is summed
    :data:`_GRAM_COLS` columns at a time, so that both operands' slices stay in cache: 1.35–1.6× faster for
    blocks of 32–256 rows and ``P`` from 0.2 M to 1.2 M (XLA:CPU, 2 cores; ``docs/benchmarks.md``). Elsewhere, or
    for a short ``P``, one product."""
    kc = _GRAM_COLS
    p = a.shape[1]
    if jax.default_backend() != "cpu" or p < 2 * kc:
        return contract("ip,jp->ij", a, b)
    steps = p // kc

    def step(i, acc):
        x = jax.lax.dynamic_slice_in_dim(a, i * kc, kc, 1)
        y = jax.lax.dynamic_slice_in_dim(b, i * kc, kc, 1)
        return acc + contract("ip,jp->ij", x, y)

    acc = jnp.zeros((a.shape[0], b.shape[0]), accumulation_dtype(a, b))
    acc = jax.lax.fori_loop(0, steps, step, acc)
    if steps * kc < p:
        acc = acc + contract("ip,jp->ij", a[:, steps * kc :], b[:, steps * kc :])
    return acc


def cosine_normalize(k: jax.Array, d1: jax.Array, d2: jax.Array) -> jax.Array:
    """``k[i, j] / sqrt(d1[i] d2[j])`` with the zero-norm convention: entries of a point whose norm is 0 are 0.

    A point whose gradient (or feature vector) is exactly zero has no direction, so its cosine similarity to any
    point, itself included, is defined as 0 rather than NaN. The result is clipped to [-1, 1] to remove round-off.
    """
    d1 = jnp.maximum(d1, 0)
    d2 = jnp.maximum(d2, 0)
    s1 = jnp.sqrt(d1)
    s2 = jnp.sqrt(d2)
    ok1 = s1 > 0
    ok2 = s2 > 0
    inv1 = jnp.where(ok1, 1 / jnp.where(ok1, s1, 1), 0)
    inv2 = jnp.where(ok2, 1 / jnp.where(ok2, s2, 1), 0)
    scale = inv1[:, None] * inv2[None, :]
    if k.ndim > 2:
        scale = scale.reshape(scale.shape + (1,) * (k.ndim - 2))
    return jnp.clip(k * scale.astype(k.dtype), -1, 1)


def warn_zero_norm(diag: Any, what: str) -> None:
    """Warn (eagerly only) when points have zero norm under cosine normalization."""
    if not is_concrete(diag):
        return
    n0 = int(np.sum(np.asarray(diag) <= 0))
    if n0:
        warnings.warn(
            f"{n0} point(s) have a zero {what}; their normalized kernel rows and columns are set to 0 "
            "(cosine similarity is undefined there).",
            RuntimeWarning,
            stacklevel=3,
        )


def validate_params(params: Any) -> None:
    """``params`` leaves are finite, real floating-point arrays (the kernels differentiate every leaf).

    Integer or boolean leaves have no gradient (they used to give an all-zero integer kernel) and complex leaves
    would need a Hermitian kernel this package does not define: both are refused, naming the leaf.
    """
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError("params has no array leaves: there is nothing to differentiate.")
    for path, leaf in leaves:
        dt = jnp.result_type(leaf)
        where = f"params{jax.tree_util.keystr(path)}"
        if jnp.issubdtype(dt, jnp.complexfloating):
            raise TypeError(
                f"{where} has complex dtype {dt}: kernels of complex parameters are not supported; "
                "pass real floating-point parameters."
            )
        if not jnp.issubdtype(dt, jnp.floating):
            raise TypeError(
                f"{where} has dtype {dt}: every leaf of params is differentiated, so it must be "
                "floating-point (cast it, or close over non-trainable integer state in the model)."
            )
    check_finite_tree(params, "params")


def validate_kernel_args(
    params: Any, x1: Any, x2: Any, *, apply_fn: Callable | None = None, check_params: bool = True
) -> tuple[Any, Any, int | None]:
    """Common checks of ``kernel_fn(params, x1, x2=None)``; returns ``(x1, x2, n_outputs)``.

    Checks: x1/x2 are non-empty batches (arrays or pytrees of arrays, :mod:`._inputs`) with the same structure and
    per-example shapes; params and inputs are finite (when concrete); ``apply_fn`` returns logits ``(N, C)`` or
    ``(N, ..., C)`` with the batch size of its input (checked abstractly, no FLOPs). ``n_outputs`` is the number of
    outputs per example (``C``, or ``L·C`` for ``(N, L, C)``); None without ``apply_fn``.
    """
    x1, x2 = validate_pair(x1, x2)
    if check_params:
        validate_params(params)
    if apply_fn is None:
        return x1, x2, None
    shape = check_outputs(apply_fn, params, x1)
    return x1, x2, int(np.prod(shape[1:], dtype=np.int64))


def canonical_args(params: Any, x1: Any, x2: Any, apply_fn: Callable) -> tuple:
    """:func:`validate_kernel_args`, then the canonical model (:func:`._inputs.canonical`): returns
    ``(fn, x1c, x2c, n_outputs, x1, x2)`` where ``fn(params, x1c) -> (N, n_outputs)`` takes one input array and
    ``x1, x2`` are the validated user inputs. For an array batch with 2-D outputs ``fn is apply_fn``."""
    x1, x2 = validate_pair(x1, x2)
    validate_params(params)
    shape = check_outputs(apply_fn, params, x1)
    fn, c1, c2 = canonical(apply_fn, x1, x2, len(shape))
    return fn, c1, c2, int(np.prod(shape[1:], dtype=np.int64)), x1, x2
