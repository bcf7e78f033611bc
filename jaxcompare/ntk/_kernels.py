"""Public factories of the NTK family: ``empirical_ntk``, ``trace_ntk``, ``pseudo_ntk``, ``conjugate_kernel``,
``embedding_kernel``. Each takes a model function and returns ``kernel_fn(params, x1, x2=None)``, a pure function
that composes with ``jax.jit``, ``jax.vmap`` and the package's transforms (``batched``...)."""

from __future__ import annotations

import collections
import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._precision import (
    check_overflow,
    finite_flag,
    kernel_dtype,
    low_precision_dtype,
    resolve_precision,
    traced_with_policy,
)
from .._validation import check_choice, check_finite_tree, check_flag, is_concrete
from ._common import (
    Kernel,
    KernelSpec,
    batch_size,
    canonical_args,
    check_apply_fn,
    contract,
    cosine_normalize,
    describe,
    validate_kernel_args,
    warn_zero_norm,
)
from ._implementations import IMPLEMENTATIONS, choose_auto
from ._memo import memoized
from ._projection import RandomProjection

__all__ = ["empirical_ntk", "trace_ntk", "pseudo_ntk", "conjugate_kernel", "embedding_kernel"]

_MODES = ("full", "trace", "pseudo")


def _check_implementation(implementation: str) -> None:
    names = ("auto", *IMPLEMENTATIONS.keys())
    check_choice(implementation, "implementation", names)


def _check_projection(projection: Any) -> None:
    if projection is not None and not hasattr(projection, "features"):
        raise TypeError(
            "projection must come from jaxcompare.structured_projection(key, dim), "
            "jaxcompare.random_projection(key, dim, kind) or jaxcompare.kronecker_projection(key, dim_in, dim_out) "
            "(an object with a `features` method), "
            f"got {type(projection).__name__}."
        )


def _gradient_parts(params, x1, x2, projection, apply_fn, mode, impl_name, with_norm):
    """``(un-normalized kernel, diag of x1, diag of x2)`` (diagonals None without ``with_norm``)."""
    sym = x2 is None
    if projection is not None:
        summed = mode == "pseudo"
        phi1 = projection.features(apply_fn, params, x1, summed=summed)
        phi2 = phi1 if sym else projection.features(apply_fn, params, x2, summed=summed)
        c = jax.eval_shape(apply_fn, params, x1).shape[1] if summed else 1
        k = contract("ik,jk->ij" if summed else "ick,jck->ij", phi1, phi2) / c
        sq = lambda f: contract("ik,ik->i" if summed else "ick,ick->i", f, f) / c  # noqa: E731
        if not with_norm:
            return k, None, None
        d1 = sq(phi1)
        return k, d1, d1 if sym else sq(phi2)
    impl = IMPLEMENTATIONS[impl_name]
    k = getattr(impl, mode)(apply_fn, params, x1, x2)
    if not with_norm:
        return k, None, None
    diag = impl.pseudo_diag if mode == "pseudo" else impl.trace_diag
    d1 = diag(apply_fn, params, x1)
    return k, d1, d1 if sym else diag(apply_fn, params, x2)


def _gradient_compute(params, x1, x2, projection, *, apply_fn, mode, impl_name, with_norm, precision="highest"):
    """Traceable body shared by all gradient kernels; returns ``(kernel, diag of x1 or None, finite or None)``.

    Traced under the precision policy ``precision`` (a static argument of the jit: part of its cache key); the kernel
    is returned in :func:`~jaxcompare._precision.kernel_dtype` (float32 for bfloat16/float16 models).
    """
    with traced_with_policy(precision):
        k, d1, d2 = _gradient_parts(params, x1, x2, projection, apply_fn, mode, impl_name, with_norm)
    dt = kernel_dtype(params)
    k = k.astype(dt)
    finite = finite_flag(params, k, d1, None if d2 is d1 else d2)
    if not with_norm:
        return k, None, finite
    d1, d2 = d1.astype(dt), d2.astype(dt)
    return cosine_normalize(k, d1, d2), d1, finite


def _gradient_diag(params, x, projection, *, apply_fn, mode, impl_name, precision="highest"):
    """``(diag, finite or None)`` of the un-normalized kernel, under the precision policy ``precision``."""
    with traced_with_policy(precision):
        if projection is not None:
            phi = projection.features(apply_fn, params, x, summed=mode == "pseudo")
            c = jax.eval_shape(apply_fn, params, x).shape[1] if mode == "pseudo" else 1
            d = contract("ik,ik->i" if mode == "pseudo" else "ick,ick->i", phi, phi) / c
        else:
            impl = IMPLEMENTATIONS[impl_name]
            d = (impl.pseudo_diag if mode == "pseudo" else impl.trace_diag)(apply_fn, params, x)
    d = d.astype(kernel_dtype(params))
    return d, finite_flag(params, d)


# module-level jits: kernels built on the same apply_fn share compiled code (a projection is a pytree argument,
# so a new key does not recompile); the precision policy is static: another policy compiles another function
_compute_jit = jax.jit(_gradient_compute, static_argnames=("apply_fn", "mode", "impl_name", "with_norm", "precision"))
_diag_jit = jax.jit(_gradient_diag, static_argnames=("apply_fn", "mode", "impl_name", "precision"))


def _entry_points(run: Callable, normalize: bool) -> tuple[Callable, Callable]:
    """``(base, kernel_fn)`` from ``run(params, x1, x2, with_norm)``: the un-normalized kernel and the public one."""

    def base(params, x1, x2=None):
        return run(params, x1, x2, False)

    def kernel_fn(params, x1, x2=None):
        return run(params, x1, x2, normalize)

    return base, kernel_fn


_BYTES_CACHE: collections.OrderedDict = collections.OrderedDict()  # memo of a pure function of static data


def _memory_plan(apply_fn, params, x1, x2, n_classes, impl_name, mode) -> int | None:
    """Block size for an eager exact call whose estimated memory exceeds the budget (None: it fits); raises, before
    any work, when even one block (or the output) does not fit. See :mod:`jaxcompare.ntk._memory`."""
    from ._implementations import _auto_key
    from ._memory import format_bytes, kernel_bytes, memory_budget

    key = (_auto_key(apply_fn, params, x1, x2, n_classes), impl_name, mode)
    # kernel_bytes traces the model: memoized
    per, fixed = memoized(_BYTES_CACHE, key, lambda: kernel_bytes(apply_fn, params, x1, x2, n_classes, impl_name, mode))
    n = x1.shape[0] + (0 if x2 is None else x2.shape[0])
    budget = memory_budget()
    need = per * n + fixed
    if impl_name == "structured":  # eager structured calls run on the blocked engine (features once per block)
        from ._structured._blocks import engine_block

        return engine_block(x1.shape[0], x2, per, fixed, budget, mode)
    if per == 0 or need <= budget:
        return None
    bs = int((budget - fixed) // (2 * per)) if budget > fixed else 0
    if bs < 1 or fixed > budget // 2:
        raise ValueError(
            f"the {mode} kernel of {n} points needs an estimated {format_bytes(need)} (output {format_bytes(fixed)},"
            f" {format_bytes(per)} per point held at once), more than the memory budget {format_bytes(budget)} "
            "(JAXCOMPARE_MEMORY_BUDGET, default half the available memory); nothing was computed. Use "
            "jaxcompare.kernel_to_disk for outputs that do not fit, a projection (jaxcompare.project_gradients), or a "
            "larger budget."
        )
    warnings.warn(
        f"the {mode} kernel of {n} points needs an estimated {format_bytes(need)}, more than the memory budget "
        f"{format_bytes(budget)}: computing it in blocks of {bs} points (batched(kernel_fn, {bs})). Set "
        "JAXCOMPARE_MEMORY_BUDGET or call batched yourself to choose.",
        RuntimeWarning,
        stacklevel=4,
    )
    return bs


def _nonfinite_where(k: Any) -> str:
    """Where a kernel (or its diagonal) is not finite: the points whose whole row (column) is, first 10 of each."""
    bad = np.logical_not(np.isfinite(np.asarray(k)))
    if bad.ndim == 1:  # a diagonal
        return f"x points {np.flatnonzero(bad)[:10].tolist()}"
    b = bad.reshape(bad.shape[0], bad.shape[1], -1).any(axis=2)
    rows, cols = np.flatnonzero(b.all(axis=1))[:10].tolist(), np.flatnonzero(b.all(axis=0))[:10].tolist()
    return f"x1 points {rows} and x2 points {cols}" if rows or cols else f"{int(b.sum())} scattered entries"


def _checked_result(compute: Callable, k: Any, d1: Any, what: str, impl_name: str) -> tuple[Any, Any]:
    """``(k, d1)`` of an eager call, verified finite on device (one scalar comes back; traced values pass through).

    Parameters and inputs were checked finite before the call, so a non-finite kernel is either the model's own
    (its gradients are inf/NaN at some points: ``log(0)``, the derivative of ``sqrt`` at 0, an overflowing ``exp``)
    or a fault of the backend. JAX's compiled programs are dropped and the kernel is compiled and computed once more:
    a second non-finite result is the model's and raises :class:`FloatingPointError` naming the points; a finite one
    is returned with a :class:`RuntimeWarning`. (XLA:CPU in jaxlib 0.10.2 was seen to return an all-NaN eNTK in
    about one of twenty fresh processes, and to return it again when the same compiled program ran again: hence the
    fresh compile.) Never a silent NaN.
    """
    if isinstance(k, jax.core.Tracer) or bool(jnp.all(jnp.isfinite(k))):
        return k, d1
    # the fault seen was in a compiled program (running it again gave NaN again): compile afresh, then recompute
    jax.clear_caches()
    k2, d2, _ = compute()
    if bool(jnp.all(jnp.isfinite(k2))):
        warnings.warn(
            f"the {what} ({impl_name}) came back non-finite once for finite params and inputs and finite when "
            "compiled and computed again: a nondeterministic fault of the backend; the recomputed kernel is "
            "returned.",
            RuntimeWarning,
            stacklevel=4,
        )
        return k2, d2
    where = _nonfinite_where(k2)
    raise FloatingPointError(
        f"the {what} has inf/NaN entries although params and inputs are finite, twice (compiled afresh the second "
        f"time): the model's gradients are not finite at (first 10) {where} (e.g. log(0), the derivative of sqrt at "
        "0, an overflowing exp or division by zero inside apply_fn). No kernel is returned; evaluate jax.grad of "
        "your model at those points."
    )


def _gradient_kernel(
    apply_fn: Callable,
    mode: str,
    *,
    normalize: bool,
    projection: Any,
    implementation: str,
    record: Callable | None = None,
    precision: str | None = None,
):
    """Shared builder of the three gradient kernels: ``(kernel_fn, base, diag)``. ``record()`` returns the kernel
    record, which eager calls over the memory budget compute through :func:`batched`. ``precision``: the policy, or
    None for the one active when the kernel is called (:func:`jaxcompare.ntk.precision`)."""

    def resolve(fn, params, x1, x2, n_classes):
        if projection is not None:
            return "projection"
        if implementation != "auto":
            return implementation
        return choose_auto(fn, params, x1, x2, n_classes)

    def run(params, x1, x2, with_norm):
        # fn/c1/c2: the canonical model (one input array, 2-D outputs; see ._inputs); x1/x2: the user's batches
        fn, c1, c2, n_classes, x1, x2 = canonical_args(params, x1, x2, apply_fn)
        impl_name = resolve(fn, params, c1, c2, n_classes)
        if (
            record is not None
            and projection is None
            and all(is_concrete(l) for l in jax.tree_util.tree_leaves((params, c1, c2)))
        ):
            bs = _memory_plan(fn, params, c1, c2, n_classes, impl_name, mode)
            if bs is not None:
                from ._batching import batched

                planned = batched(record(), bs, progress_bar=False)
                blocked = planned if with_norm else planned.spec.base
                out = blocked(params, x1, x2)
                finite = finite_flag(params, out)
                check_overflow(finite, low_precision_dtype(params), f"{mode} kernel", impl_name)
                if finite is None:
                    out, _ = _checked_result(
                        lambda: (blocked(params, x1, x2), None, None), out, None, f"{mode} kernel", impl_name
                    )
                return out
        compute = functools.partial(
            _compute_jit,
            params,
            c1,
            c2,
            projection,
            apply_fn=fn,
            mode=mode,
            impl_name=impl_name,
            with_norm=with_norm,
            precision=resolve_precision(precision),
        )
        k, d1, finite = compute()
        check_overflow(finite, low_precision_dtype(params), f"{mode} kernel", impl_name)
        if finite is None:  # float32/float64 models: an eager result is checked too (one scalar comes back)
            k, d1 = _checked_result(compute, k, d1, f"{mode} kernel", impl_name)
        if with_norm and x2 is None:
            warn_zero_norm(d1, "gradient")
        return k

    def diag(params, x):
        fn, c, _, n_classes, _, _ = canonical_args(params, x, None, apply_fn)
        impl_name = resolve(fn, params, c, None, n_classes)
        compute = functools.partial(
            _diag_jit,
            params,
            c,
            projection,
            apply_fn=fn,
            mode=mode,
            impl_name=impl_name,
            precision=resolve_precision(precision),
        )
        d, finite = compute()
        check_overflow(finite, low_precision_dtype(params), f"{mode} kernel's diagonal", impl_name)
        if finite is None:
            d, _ = _checked_result(lambda: (*compute(), None), d, None, f"{mode} kernel's diagonal", impl_name)
        return d

    base, kernel_fn = _entry_points(run, normalize)
    return kernel_fn, base, diag


def _public_gradient_kernel(
    apply_fn: Callable,
    mode: str,
    name: str,
    *,
    normalize: bool,
    projection: Any,
    implementation: str,
    precision: str | None = None,
) -> Kernel:
    """Check the factory arguments and build the kernel record (:class:`Kernel`)."""
    check_apply_fn(apply_fn)
    _check_implementation(implementation)
    _check_projection(projection)
    if precision is not None:
        resolve_precision(precision)  # validated now, not at the first call
    made: list = []  # the record, set once below (eager calls over the memory budget tile it with batched)
    kernel_fn, base, diag = _gradient_kernel(
        apply_fn,
        mode,
        normalize=normalize,
        projection=projection,
        implementation=implementation,
        record=lambda: made[0],
        precision=precision,
    )
    full = mode == "full"
    spec = KernelSpec(
        name,
        base,
        None if full else diag,
        normalize,
        full,
        apply_fn,
        (("implementation", implementation), ("projection", projection))
        + ((("precision", precision),) if precision is not None else ()),
        _label(name),
    )
    made.append(Kernel(kernel_fn, spec))
    return made[0]


def _label(name: str) -> str:
    """Display label from the registry (``proj_trntk0`` and ``proj_pntk0``, not registered, derive theirs)."""
    from ._registry import KERNELS  # the registry builds kernels with this module's factories: import at call time

    if name in KERNELS:
        return KERNELS[name].label
    if name.startswith("proj_") and name[5:] in KERNELS:
        return "proj-" + KERNELS[name[5:]].label
    if name.endswith("0") and name[:-1] in KERNELS:  # unnormalized feature kernels: ck0, em0
        return KERNELS[name[:-1]].label + "⁰"
    return name


def empirical_ntk(apply_fn: Callable, *, implementation: str = "auto", precision: str | None = None) -> Callable:
    """Full empirical NTK with class blocks.

    ``K[i, j, c, c'] = <g_c(x1_i), g_c'(x2_j)>`` where ``g_c(x) = ∇_θ f^c(x; θ)`` is the gradient of logit ``c``
    over all parameters (every leaf of ``params``).

    Args:
      apply_fn: ``apply_fn(params, x) -> (N, C)`` logits; must treat examples independently (no batch statistics).
        ``x`` may be a pytree of arrays with a leading batch axis (``{"tokens", "mask"}``); outputs ``(N, ..., C)``
        count as ``C_out = L·C`` outputs in C order (class axes ``(C_out, C_out)``, index ``t·C + c``).
      implementation: ``"structured"`` (layer inputs × output sensitivities for every dense/conv layer, per-example
        gradients only for the other parameters; never forms the full per-example gradients), ``"jacobian"``
        (contract per-example Jacobians; memory ``N·C·P``), ``"ntvp"`` (NTK-vector products; memory ``C·P``), or
        ``"auto"`` (structured when at least one layer qualifies, else Jacobians when they fit in 2 GiB, else
        NTK-vector products).
      precision: the precision policy of the kernel's matrix products — ``"highest"``, ``"high"`` or ``"default"``
        — or None (default): the policy of the enclosing :func:`jaxcompare.ntk.precision` block when the kernel is
        called, else ``"highest"``. bfloat16/float16 models accumulate in float32 and get float32 kernels; a float16
        overflow raises :class:`FloatingPointError` (see :mod:`jaxcompare._precision`).

    Returns:
      ``kernel_fn(params, x1, x2=None) -> (N1, N2, C, C)``; ``x2=None`` means ``x2 = x1``.

    Example:
      >>> def apply_fn(params, x):                         # a tiny two-layer MLP: (N, 3) -> (N, 2) logits
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x = jax.random.normal(k3, (10, 3))
      >>> K = jc.empirical_ntk(apply_fn)(params, x)        # (N, N, C, C)
      >>> K.shape
      (10, 10, 2, 2)
      >>> K0 = jc.trace_ntk(apply_fn, normalize=False)(params, x)   # its trace over classes is the trNTK⁰
      >>> bool(jnp.allclose(jnp.trace(K, axis1=2, axis2=3), K0))
      True
    """
    return _public_gradient_kernel(
        apply_fn, "full", "entk", normalize=False, projection=None, implementation=implementation, precision=precision
    )


def trace_ntk(
    apply_fn: Callable,
    *,
    normalize: bool = True,
    projection: RandomProjection | None = None,
    implementation: str = "auto",
    precision: str | None = None,
) -> Callable:
    """Trace NTK: the cosine-normalized trNTK (default) or the unnormalized trNTK⁰.

    ``K0[i, j] = Σ_c <g_c(x1_i), g_c(x2_j)>`` — a **sum** over classes (neural-tangents' ``trace_axes=(-1,)``
    returns the mean, ``K0 / C``). With ``normalize=True``,
    ``K[i, j] = K0[i, j] / sqrt(K0(x1_i, x1_i) · K0(x2_j, x2_j))``: the cosine similarity of the concatenated
    per-class gradients, the norms always those of each point with itself (also when ``x2`` is given).

    Zero gradients: a point whose gradient is exactly 0 has no direction; its normalized row/column (diagonal
    included) is 0, never NaN, and an eager call warns.

    Inputs and outputs: ``x1``/``x2`` may be pytrees of arrays sharing a leading batch axis (``{"tokens": int32
    (N, L), "mask": bool (N, L)}``, ``(image, metadata)``; integer/boolean leaves are not differentiated). Outputs
    ``(N, ..., C)`` (per-token logits ``(N, L, C)``) are traced over positions and classes:
    ``K0[i, j] = Σ_t Σ_c <g_tc(x1_i), g_tc(x2_j)>``, i.e. every (position, class) pair is one output. One kernel
    per position (``Σ_c`` only) is not offered: it needs a position-keeping contraction in every implementation
    (the structured path sums positions inside its Gram products) and per-position norms through every transform;
    ``trace_ntk(lambda p, x: apply_fn(p, x)[:, t])`` gives position ``t`` at the cost of one kernel. Every exact path
    pays one backward pass per output (``L·C`` of them); a projection with ``output_probes=p``
    (:func:`structured_projection`) traces over them with ``p`` backward passes, unbiased.

    Args:
      apply_fn: ``apply_fn(params, x) -> (N, C)`` or ``(N, ..., C)`` logits.
      normalize: cosine normalization (trNTK) or not (trNTK⁰).
      projection: a :func:`structured_projection` (fast: a CountSketch of each layer's gradient formed from its
        factors) or a :func:`random_projection`; the kernel of the projected gradients ``R g_c``, a Gram product of
        the features of :func:`project_gradients`.
      implementation: ``"auto"``, ``"structured"``, ``"jacobian"`` or ``"ntvp"`` (see :func:`empirical_ntk`);
        ignored with a projection.
      precision: precision policy (see :func:`empirical_ntk`).

    Returns:
      ``kernel_fn(params, x1, x2=None) -> (N1, N2)``.

    Example:
      >>> def apply_fn(params, x):                         # a tiny two-layer MLP: (N, 3) -> (N, 2) logits
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x_train, x_test = jax.random.normal(k3, (10, 3)), jax.random.normal(jax.random.key(1), (4, 3))
      >>> k = jc.trace_ntk(apply_fn)
      >>> K = jax.jit(k)(params, x_train)                    # (N, N), ones on the diagonal
      >>> K.shape, bool(jnp.allclose(jnp.diag(K), 1.0))
      ((10, 10), True)
      >>> K_test = k(params, x_test, x_train)                # (N_test, N_train)
      >>> K_test.shape
      (4, 10)
    """
    normalize = check_flag(normalize, "normalize")
    name = ("proj_" if projection is not None else "") + ("trntk" if normalize else "trntk0")
    return _public_gradient_kernel(
        apply_fn,
        "trace",
        name,
        normalize=normalize,
        projection=projection,
        implementation=implementation,
        precision=precision,
    )


def pseudo_ntk(
    apply_fn: Callable,
    *,
    normalize: bool = False,
    projection: RandomProjection | None = None,
    implementation: str = "auto",
    precision: str | None = None,
) -> Callable:
    """Pseudo NTK: ``(1/C) <∇_θ Σ_c f^c(x1_i), ∇_θ Σ_c f^c(x2_j)> = (1/C) Σ_{c,c'} K[i, j, c, c']``.

    One gradient per example (of the summed logits) instead of ``C``. ``normalize=True`` gives its cosine
    normalization (zero-gradient convention as in :func:`trace_ntk`); ``projection`` its projected version;
    ``implementation`` and ``precision`` as in :func:`empirical_ntk`. Pytree inputs as in :func:`trace_ntk`; for
    outputs ``(N, L, C)`` the sum runs over all ``L·C`` (position, class) outputs and ``C`` becomes ``L·C``:
    ``(1/(L·C)) <∇ Σ_{t,c} f^tc(x1_i), ∇ Σ_{t,c} f^tc(x2_j)>``.

    Returns:
      ``kernel_fn(params, x1, x2=None) -> (N1, N2)``.
    """
    normalize = check_flag(normalize, "normalize")
    name = ("proj_" if projection is not None else "") + ("pntk" if normalize else "pntk0")
    return _public_gradient_kernel(
        apply_fn,
        "pseudo",
        name,
        normalize=normalize,
        projection=projection,
        implementation=implementation,
        precision=precision,
    )


def _feature_kernel(
    name: str, features: Callable, normalize: bool, what: str, user_fn: Callable, precision: str | None = None
) -> Kernel:
    """Kernel of flattened feature blocks: ``features(params, x) -> list of (N, D_l)``; ``K = Σ_l F_l F_lᵀ``,
    accumulated in at least float32 under the precision policy (``precision``, else the active one)."""
    if precision is not None:
        resolve_precision(precision)

    def blocks(params, x):
        out = features(params, x)
        leaves = jax.tree_util.tree_leaves(out)
        if not leaves:
            raise ValueError(f"{what} returned no arrays.")
        flat = []
        for l in leaves:
            if l.ndim < 1 or l.shape[0] != batch_size(x):
                raise ValueError(
                    f"{what} must return arrays with the batch as axis 0 (N = {batch_size(x)}); got shape {l.shape}."
                )
            flat.append(l.reshape(l.shape[0], -1))
        return flat

    def low(fs):  # a bfloat16/float16 feature block: the kernel is checked for overflow
        return any(jnp.dtype(f.dtype).itemsize < 4 for f in fs)

    def compute(params, x1, x2, with_norm, precision):
        with traced_with_policy(precision):
            f1 = blocks(params, x1)
            f2 = f1 if x2 is None else blocks(params, x2)
            k = sum(contract("id,jd->ij", a, b) for a, b in zip(f1, f2))
            d1 = sum(contract("id,id->i", a, a) for a in f1) if with_norm else None
            d2 = d1 if x2 is None or not with_norm else sum(contract("id,id->i", b, b) for b in f2)
        finite = None
        if low(f1) or low(f2):
            finite = functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(a)) for a in (k, d1, d2) if a is not None])
        if not with_norm:
            return k, None, finite
        return cosine_normalize(k, d1, d2), d1, finite

    def compute_diag(params, x, precision):
        with traced_with_policy(precision):
            fs = blocks(params, x)
            d = sum(contract("id,id->i", b, b) for b in fs)
        return d, jnp.all(jnp.isfinite(d)) if low(fs) else None

    def feature_dtype(params, x):  # the narrowest low-precision feature dtype, for the overflow message
        names = sorted({jnp.dtype(f.dtype).name for f in jax.eval_shape(blocks, params, x) if f.dtype.itemsize < 4})
        return "float16" if "float16" in names else (names[0] if names else None)

    compute_jit = jax.jit(compute, static_argnames=("with_norm", "precision"))
    diag_jit = jax.jit(compute_diag, static_argnames=("precision",))

    def validate(params, x1, x2):
        x1, x2, _ = validate_kernel_args(params, x1, x2, apply_fn=None, check_params=False)
        check_finite_tree(params, "params")  # features need no gradient: integer leaves are fine
        try:
            jax.eval_shape(blocks, params, x1)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"{what}(params, x1) failed for x1 of {describe(x1)}: {e}") from e
        return x1, x2

    def run(params, x1, x2, with_norm):
        x1, x2 = validate(params, x1, x2)
        k, d1, finite = compute_jit(params, x1, x2, with_norm, resolve_precision(precision))
        if finite is not None:
            check_overflow(finite, feature_dtype(params, x1), f"{name} kernel", source="features")
        _features_finite(k, f"{name} kernel", what)
        if with_norm and x2 is None:
            warn_zero_norm(d1, "feature vector")
        return k

    def diag(params, x):
        x, _ = validate(params, x, None)
        d, finite = diag_jit(params, x, resolve_precision(precision))
        if finite is not None:
            check_overflow(finite, feature_dtype(params, x), f"{name} kernel's diagonal", source="features")
        _features_finite(d, f"{name} kernel's diagonal", what)
        return d

    base, kernel_fn = _entry_points(run, normalize)

    name = name if normalize else name + "0"
    options = (("precision", precision),) if precision is not None else ()
    return Kernel(kernel_fn, KernelSpec(name, base, diag, normalize, False, user_fn, options, _label(name)))


def _features_finite(k: Any, label: str, what: str) -> None:
    """A feature kernel of finite params and inputs with inf/NaN entries: the features themselves are not finite
    at some points (``log`` of a negative, an overflowing ``exp``): raise naming them, never return the NaN."""
    if isinstance(k, jax.core.Tracer) or bool(jnp.all(jnp.isfinite(k))):
        return
    where = _nonfinite_where(k)
    raise FloatingPointError(
        f"the {label} has inf/NaN entries although params and inputs are finite: the features of {what} are not "
        f"finite at (first 10) {where} (e.g. log of a negative, an overflowing exp). No kernel is returned; evaluate "
        f"{what} at those points."
    )


def conjugate_kernel(feature_fn: Callable, *, normalize: bool = False, precision: str | None = None) -> Callable:
    """Conjugate kernel (CK): ``K[i, j] = <φ(x1_i), φ(x2_j)>`` for the features ``φ`` entering the last linear layer.

    Args:
      feature_fn: ``feature_fn(params, x) -> (N, ...)`` the penultimate features (flattened per example).
      normalize: cosine normalization (zero feature vectors give 0 rows, never NaN).
      precision: precision policy of the Gram products (see :func:`empirical_ntk`); bfloat16/float16 features are
        accumulated in float32 and give a float32 kernel.

    Returns:
      ``kernel_fn(params, x1, x2=None) -> (N1, N2)``.
    """
    check_apply_fn(feature_fn, "feature_fn")
    return _feature_kernel(
        "ck",
        lambda p, x: [feature_fn(p, x)],
        check_flag(normalize, "normalize"),
        "feature_fn",
        feature_fn,
        precision=precision,
    )


def embedding_kernel(layers_fn: Callable, *, normalize: bool = True, precision: str | None = None) -> Callable:
    """Embedding kernel (Em): ``K[i, j] = Σ_l <a_l(x1_i), a_l(x2_j)>`` over the flattened outputs of every layer,
    cosine-normalized once after summing (``normalize=True``, the published definition).

    Args:
      layers_fn: ``layers_fn(params, x)`` returning any pytree (list, tuple, dict) of per-layer outputs, each with
        the batch as axis 0. For flax.linen models :func:`jaxcompare.linen_layers_fn` builds one from
        ``capture_intermediates``.
      normalize: cosine-normalize the summed kernel.
      precision: precision policy of the Gram products (see :func:`conjugate_kernel`).

    Returns:
      ``kernel_fn(params, x1, x2=None) -> (N1, N2)``.
    """
    check_apply_fn(layers_fn, "layers_fn")
    return _feature_kernel(
        "em", layers_fn, check_flag(normalize, "normalize"), "layers_fn", layers_fn, precision=precision
    )
