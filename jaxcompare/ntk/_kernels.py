"""Public factories of the NTK family: ``empirical_ntk``, ``trace_ntk``, ``pseudo_ntk``, ``conjugate_kernel``,
``embedding_kernel``. Each takes a model function and returns ``kernel_fn(params, x1, x2=None)``, a pure function
that composes with ``jax.jit``, ``jax.vmap`` and the package's transforms (``batched``...)."""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._validation import check_choice, check_finite_tree, is_concrete
from ._common import (
    HIGHEST,
    Kernel,
    KernelSpec,
    cosine_normalize,
    validate_kernel_args,
    warn_zero_norm,
)
from ._implementations import IMPLEMENTATIONS, choose_auto
from ._projection import RandomProjection

__all__ = ["empirical_ntk", "trace_ntk", "pseudo_ntk", "conjugate_kernel", "embedding_kernel"]

_MODES = ("full", "trace", "pseudo")


def _check_apply_fn(apply_fn: Any, name: str = "apply_fn") -> None:
    if not callable(apply_fn):
        raise TypeError(f"{name} must be a callable (params, x) -> ..., got {type(apply_fn).__name__}.")


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


def _gradient_compute(params, x1, x2, projection, *, apply_fn, mode, impl_name, with_norm):
    """Traceable body shared by all gradient kernels; returns ``(kernel, diag of x1 or None)``."""
    sym = x2 is None
    if projection is not None:
        summed = mode == "pseudo"
        phi1 = projection.features(apply_fn, params, x1, summed=summed)
        phi2 = phi1 if sym else projection.features(apply_fn, params, x2, summed=summed)
        if summed:
            c = jax.eval_shape(apply_fn, params, x1).shape[1]
            k = jnp.einsum("ik,jk->ij", phi1, phi2, precision=HIGHEST) / c
            sq = lambda f: jnp.einsum("ik,ik->i", f, f, precision=HIGHEST) / c  # noqa: E731
        else:
            k = jnp.einsum("ick,jck->ij", phi1, phi2, precision=HIGHEST)
            sq = lambda f: jnp.einsum("ick,ick->i", f, f, precision=HIGHEST)  # noqa: E731
        if not with_norm:
            return k, None
        d1 = sq(phi1)
        d2 = d1 if sym else sq(phi2)
    else:
        impl = IMPLEMENTATIONS[impl_name]
        k = getattr(impl, mode)(apply_fn, params, x1, x2)
        if not with_norm:
            return k, None
        diag = impl.pseudo_diag if mode == "pseudo" else impl.trace_diag
        d1 = diag(apply_fn, params, x1)
        d2 = d1 if sym else diag(apply_fn, params, x2)
    return cosine_normalize(k, d1, d2), d1


def _gradient_diag(params, x, projection, *, apply_fn, mode, impl_name):
    if projection is not None:
        phi = projection.features(apply_fn, params, x, summed=mode == "pseudo")
        if mode == "pseudo":
            return jnp.sum(phi * phi, axis=-1) / jax.eval_shape(apply_fn, params, x).shape[1]
        return jnp.sum(phi * phi, axis=(-2, -1))
    impl = IMPLEMENTATIONS[impl_name]
    return (impl.pseudo_diag if mode == "pseudo" else impl.trace_diag)(apply_fn, params, x)


# module-level jits: kernels built on the same apply_fn share compiled code (a projection is a pytree argument,
# so a new key does not recompile)
_compute_jit = jax.jit(_gradient_compute, static_argnames=("apply_fn", "mode", "impl_name", "with_norm"))
_diag_jit = jax.jit(_gradient_diag, static_argnames=("apply_fn", "mode", "impl_name"))


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

    try:
        key = (_auto_key(apply_fn, params, x1, x2, n_classes), impl_name, mode)
        hit = _BYTES_CACHE.get(key)
    except TypeError:  # unhashable apply_fn
        key, hit = None, None
    if hit is None:
        hit = kernel_bytes(apply_fn, params, x1, x2, n_classes, impl_name, mode)  # traces the model: memoized
        if key is not None:
            _BYTES_CACHE[key] = hit
            while len(_BYTES_CACHE) > 256:
                _BYTES_CACHE.popitem(last=False)
    per, fixed = hit
    n = x1.shape[0] + (0 if x2 is None else x2.shape[0])
    budget = memory_budget()
    need = per * n + fixed
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


def _gradient_kernel(
    apply_fn: Callable,
    mode: str,
    *,
    normalize: bool,
    projection: Any,
    implementation: str,
    record: Callable | None = None,
):
    """Shared builder of the three gradient kernels: ``(kernel_fn, base, diag)``. ``record()`` returns the kernel
    record, which eager calls over the memory budget compute through :func:`batched`."""

    def resolve(params, x1, x2, n_classes):
        if projection is not None:
            return "projection"
        if implementation != "auto":
            return implementation
        return choose_auto(apply_fn, params, x1, x2, n_classes)

    def run(params, x1, x2, with_norm):
        x1, x2, n_classes = validate_kernel_args(params, x1, x2, apply_fn=apply_fn)
        impl_name = resolve(params, x1, x2, n_classes)
        if (
            record is not None
            and projection is None
            and all(is_concrete(l) for l in jax.tree_util.tree_leaves((params, x1, x2)))
        ):
            bs = _memory_plan(apply_fn, params, x1, x2, n_classes, impl_name, mode)
            if bs is not None:
                from ._batching import batched

                planned = batched(record(), bs, progress_bar=False)
                return planned(params, x1, x2) if with_norm else planned.spec.base(params, x1, x2)
        k, d1 = _compute_jit(
            params, x1, x2, projection, apply_fn=apply_fn, mode=mode, impl_name=impl_name, with_norm=with_norm
        )
        if with_norm and x2 is None:
            warn_zero_norm(d1, "gradient")
        return k

    def diag(params, x):
        x, _, n_classes = validate_kernel_args(params, x, None, apply_fn=apply_fn)
        return _diag_jit(
            params, x, projection, apply_fn=apply_fn, mode=mode, impl_name=resolve(params, x, None, n_classes)
        )

    base, kernel_fn = _entry_points(run, normalize)
    return kernel_fn, base, diag


def _public_gradient_kernel(
    apply_fn: Callable, mode: str, name: str, *, normalize: bool, projection: Any, implementation: str
) -> Kernel:
    """Check the factory arguments and build the kernel record (:class:`Kernel`)."""
    _check_apply_fn(apply_fn)
    _check_implementation(implementation)
    _check_projection(projection)
    made: list = []  # the record, set once below (eager calls over the memory budget tile it with batched)
    kernel_fn, base, diag = _gradient_kernel(
        apply_fn,
        mode,
        normalize=normalize,
        projection=projection,
        implementation=implementation,
        record=lambda: made[0],
    )
    full = mode == "full"
    spec = KernelSpec(
        name,
        base,
        None if full else diag,
        normalize,
        full,
        apply_fn,
        (("implementation", implementation), ("projection", projection)),
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


def empirical_ntk(apply_fn: Callable, *, implementation: str = "auto") -> Callable:
    """Full empirical NTK with class blocks.

    ``K[i, j, c, c'] = <g_c(x1_i), g_c'(x2_j)>`` where ``g_c(x) = ∇_θ f^c(x; θ)`` is the gradient of logit ``c``
    over all parameters (every leaf of ``params``).

    Args:
      apply_fn: ``apply_fn(params, x) -> (N, C)`` logits; must treat examples independently (no batch statistics).
      implementation: ``"structured"`` (layer inputs × output sensitivities for every dense/conv layer, per-example
        gradients only for the other parameters; never forms the full per-example gradients), ``"jacobian"``
        (contract per-example Jacobians; memory ``N·C·P``), ``"ntvp"`` (NTK-vector products; memory ``C·P``), or
        ``"auto"`` (structured when at least one layer qualifies, else Jacobians when they fit in 2 GiB, else
        NTK-vector products).

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
        apply_fn, "full", "entk", normalize=False, projection=None, implementation=implementation
    )


def trace_ntk(
    apply_fn: Callable,
    *,
    normalize: bool = True,
    projection: RandomProjection | None = None,
    implementation: str = "auto",
) -> Callable:
    """Trace NTK: the cosine-normalized trNTK (default) or the unnormalized trNTK⁰.

    ``K0[i, j] = Σ_c <g_c(x1_i), g_c(x2_j)>`` — a **sum** over classes (neural-tangents' ``trace_axes=(-1,)``
    returns the mean, ``K0 / C``). With ``normalize=True``,
    ``K[i, j] = K0[i, j] / sqrt(K0(x1_i, x1_i) · K0(x2_j, x2_j))``: the cosine similarity of the concatenated
    per-class gradients, the norms always those of each point with itself (also when ``x2`` is given).

    Zero gradients: a point whose gradient is exactly 0 has no direction; its normalized row/column (diagonal
    included) is 0, never NaN, and an eager call warns.

    Args:
      apply_fn: ``apply_fn(params, x) -> (N, C)`` logits.
      normalize: cosine normalization (trNTK) or not (trNTK⁰).
      projection: a :func:`structured_projection` (fast: a CountSketch of each layer's gradient formed from its
        factors) or a :func:`random_projection`; the kernel of the projected gradients ``R g_c``, a Gram product of
        the features of :func:`project_gradients`.
      implementation: ``"auto"``, ``"structured"``, ``"jacobian"`` or ``"ntvp"`` (see :func:`empirical_ntk`);
        ignored with a projection.

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
    normalize = bool(normalize)
    name = ("proj_" if projection is not None else "") + ("trntk" if normalize else "trntk0")
    return _public_gradient_kernel(
        apply_fn, "trace", name, normalize=normalize, projection=projection, implementation=implementation
    )


def pseudo_ntk(
    apply_fn: Callable,
    *,
    normalize: bool = False,
    projection: RandomProjection | None = None,
    implementation: str = "auto",
) -> Callable:
    """Pseudo NTK: ``(1/C) <∇_θ Σ_c f^c(x1_i), ∇_θ Σ_c f^c(x2_j)> = (1/C) Σ_{c,c'} K[i, j, c, c']``.

    One gradient per example (of the summed logits) instead of ``C``. ``normalize=True`` gives its cosine
    normalization (zero-gradient convention as in :func:`trace_ntk`); ``projection`` its projected version.

    Returns:
      ``kernel_fn(params, x1, x2=None) -> (N1, N2)``.
    """
    normalize = bool(normalize)
    name = ("proj_" if projection is not None else "") + ("pntk" if normalize else "pntk0")
    return _public_gradient_kernel(
        apply_fn, "pseudo", name, normalize=normalize, projection=projection, implementation=implementation
    )


def _feature_kernel(name: str, features: Callable, normalize: bool, what: str, user_fn: Callable) -> Kernel:
    """Kernel of flattened feature blocks: ``features(params, x) -> list of (N, D_l)``; ``K = Σ_l F_l F_lᵀ``."""

    def blocks(params, x):
        out = features(params, x)
        leaves = jax.tree_util.tree_leaves(out)
        if not leaves:
            raise ValueError(f"{what} returned no arrays.")
        flat = []
        for l in leaves:
            if l.ndim < 1 or l.shape[0] != x.shape[0]:
                raise ValueError(
                    f"{what} must return arrays with the batch as axis 0 (N = {x.shape[0]}); got shape {l.shape}."
                )
            flat.append(l.reshape(l.shape[0], -1))
        return flat

    def compute(params, x1, x2, with_norm):
        f1 = blocks(params, x1)
        f2 = f1 if x2 is None else blocks(params, x2)
        k = sum(jnp.einsum("id,jd->ij", a, b, precision=HIGHEST) for a, b in zip(f1, f2))
        if not with_norm:
            return k, None
        d1 = sum(jnp.einsum("id,id->i", a, a, precision=HIGHEST) for a in f1)
        d2 = d1 if x2 is None else sum(jnp.einsum("id,id->i", b, b, precision=HIGHEST) for b in f2)
        return cosine_normalize(k, d1, d2), d1

    compute_jit = jax.jit(compute, static_argnames=("with_norm",))
    diag_jit = jax.jit(lambda p, xx: sum(jnp.sum(b * b, axis=1) for b in blocks(p, xx)))

    def validate(params, x1, x2):
        x1, x2, _ = validate_kernel_args(params, x1, x2, apply_fn=None, check_params=False)
        check_finite_tree(params, "params")  # features need no gradient: integer leaves are fine
        try:
            jax.eval_shape(blocks, params, x1)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"{what}(params, x1) failed for x1 of shape {tuple(x1.shape)}: {e}") from e
        return x1, x2

    def run(params, x1, x2, with_norm):
        x1, x2 = validate(params, x1, x2)
        k, d1 = compute_jit(params, x1, x2, with_norm)
        if with_norm and x2 is None:
            warn_zero_norm(d1, "feature vector")
        return k

    def diag(params, x):
        x, _ = validate(params, x, None)
        return diag_jit(params, x)

    base, kernel_fn = _entry_points(run, normalize)

    name = name if normalize else name + "0"
    return Kernel(kernel_fn, KernelSpec(name, base, diag, normalize, False, user_fn, (), _label(name)))


def conjugate_kernel(feature_fn: Callable, *, normalize: bool = False) -> Callable:
    """Conjugate kernel (CK): ``K[i, j] = <φ(x1_i), φ(x2_j)>`` for the features ``φ`` entering the last linear layer.

    Args:
      feature_fn: ``feature_fn(params, x) -> (N, ...)`` the penultimate features (flattened per example).
      normalize: cosine normalization (zero feature vectors give 0 rows, never NaN).

    Returns:
      ``kernel_fn(params, x1, x2=None) -> (N1, N2)``.
    """
    _check_apply_fn(feature_fn, "feature_fn")
    return _feature_kernel("ck", lambda p, x: [feature_fn(p, x)], bool(normalize), "feature_fn", feature_fn)


def embedding_kernel(layers_fn: Callable, *, normalize: bool = True) -> Callable:
    """Embedding kernel (Em): ``K[i, j] = Σ_l <a_l(x1_i), a_l(x2_j)>`` over the flattened outputs of every layer,
    cosine-normalized once after summing (``normalize=True``, the published definition).

    Args:
      layers_fn: ``layers_fn(params, x)`` returning any pytree (list, tuple, dict) of per-layer outputs, each with
        the batch as axis 0. For flax.linen models :func:`jaxcompare.linen_layers_fn` builds one from
        ``capture_intermediates``.
      normalize: cosine-normalize the summed kernel.

    Returns:
      ``kernel_fn(params, x1, x2=None) -> (N1, N2)``.
    """
    _check_apply_fn(layers_fn, "layers_fn")
    return _feature_kernel("em", layers_fn, bool(normalize), "layers_fn", layers_fn)
