r"""Model-to-model similarity through kernels: the CKA of every pair of models' kernels on the same points.

Each model ``m`` (an ``(apply_fn, params)`` pair; architectures may differ) gives an ``N × N`` kernel ``K_m`` on the
inputs ``x`` (by default its trNTK). Every pair is compared by CKA and calibrated by a permutation test
(``jaxcompare.similarity.cka_test``): ``p[i, j] = (1 + #{b : CKA(K_i, K_j[π_b][:, π_b]) >= CKA(K_i, K_j)})/(1 + B)``.

All pairs share the same ``B`` permutations (each pair's p-value is valid on its own; they are not independent
across pairs). The transforms (centring / U-centring) and self-terms are computed once per model; each permutation
costs one gather of the ``M`` transformed kernels and one ``(M, N²) × (N², M)`` product, so the whole null is
``O(B·M²·N²)`` time and ``O(chunk·M·N²)`` memory. ``p[i, j]`` for ``i < j`` permutes model ``j``'s points; the
matrix is symmetric (``p[j, i] = p[i, j]``); the diagonal tests each kernel against its own permutations.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._validation import check_int, check_key
from ._cka import (
    HIGHEST,
    check_debiased,
    check_kernel,
    check_variance,
    common_dtype,
    kernel_variance_ratio,
    min_points,
    transform,
)
from ._permutation import chunk_size, null_moments, p_values, permuted_inner

__all__ = ["kernel_similarity", "KernelSimilarity"]

# kernels are computed in tiles of this many rows (jaxcompare.batched) when N exceeds it and block_size is None
_AUTO_BLOCK = 1024


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KernelSimilarity:
    """Result of :func:`kernel_similarity` for ``M`` models.

    Attributes:
      cka: ``(M, M)`` CKA of the models' kernels (1 on the diagonal up to rounding).
      p_value: ``(M, M)`` permutation p-values (symmetric; see the module docstring).
      null_mean: ``(M, M)`` mean CKA under permutation (≈ 0 when debiased; the bias of the biased CKA otherwise).
      null_sd: ``(M, M)`` its standard deviation.
      kernel: the kernel's name (registry name, or the factory's ``__name__``).
      label: its display label (``"trNTK"``...).
      names: the models' names.
      n_permutations: ``B``.
      debiased: whether the unbiased HSIC was used.
    """

    cka: jax.Array
    p_value: jax.Array
    null_mean: jax.Array
    null_sd: jax.Array
    kernel: str = dataclasses.field(metadata=dict(static=True))
    label: str = dataclasses.field(metadata=dict(static=True))
    names: tuple = dataclasses.field(metadata=dict(static=True))
    n_permutations: int = dataclasses.field(metadata=dict(static=True))
    debiased: bool = dataclasses.field(metadata=dict(static=True))

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """Heatmap of :attr:`cka` annotated with p-values: see :func:`plot_similarity`."""
        from ._plot import plot_similarity

        return plot_similarity(self, ax=ax, **kwargs)


def _registry_factory(name: str, projection: Any) -> tuple[str, str, Callable]:
    from .. import ntk

    if name not in ntk.KERNELS:
        raise ValueError(
            f"kernel must be a name in jaxcompare.ntk.KERNELS ({', '.join(ntk.KERNELS)}) or a factory "
            f"apply_fn -> kernel_fn; got {name!r}."
        )
    info = ntk.KERNELS[name]
    if projection is not None and not info.projected:
        proj_name = f"proj_{name}"
        if proj_name not in ntk.KERNELS:
            raise ValueError(
                f"kernel {name!r} has no projected variant; pass projection=None or one of "
                f"{', '.join(k for k, v in ntk.KERNELS.items() if v.projected)}."
            )
        name, info = proj_name, ntk.KERNELS[proj_name]
    if info.needs != "apply_fn":
        raise ValueError(
            f"kernel {name!r} is built from a {info.needs}, but models are (apply_fn, params) pairs; "
            "pass a factory apply_fn -> kernel_fn instead."
        )
    opts = {} if projection is None else {"projection": projection}
    return name, info.label, lambda f: ntk.kernel(name, f, **opts)


def _resolve_kernel(kernel: Any, projection: Any) -> tuple[str, str, Callable]:
    """``(name, label, factory)`` with ``factory(apply_fn) -> kernel_fn(params, x1, x2=None)``."""
    if isinstance(kernel, str):
        return _registry_factory(kernel, projection)
    if callable(kernel):
        name = getattr(kernel, "__name__", type(kernel).__name__)
        if projection is None:
            return name, name, kernel
        return name, name, lambda f: kernel(f, projection=projection)
    raise TypeError(
        f"kernel must be a registry name (e.g. 'trntk') or a callable factory apply_fn -> kernel_fn, "
        f"got {type(kernel).__name__}."
    )


def _check_models(models: Any) -> list[tuple[Callable, Any]]:
    if not isinstance(models, (list, tuple)):
        raise TypeError(f"models must be a list of (apply_fn, params) pairs, got {type(models).__name__}.")
    if len(models) < 2:
        raise ValueError(f"models must hold at least 2 (apply_fn, params) pairs to compare, got {len(models)}.")
    out = []
    for i, m in enumerate(models):
        if not isinstance(m, (list, tuple)) or len(m) != 2 or not callable(m[0]):
            raise TypeError(
                f"models[{i}] must be an (apply_fn, params) pair with a callable apply_fn, got "
                f"{type(m).__name__}{'' if not isinstance(m, (list, tuple)) else f' of length {len(m)}'}."
            )
        out.append((m[0], m[1]))
    return out


def _check_names(names: Any, m: int) -> tuple[str, ...]:
    if names is None:
        return tuple(f"model {i}" for i in range(m))
    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) != m:
        raise ValueError(f"names must be a sequence of {m} strings (one per model), got {names!r}.")
    return tuple(str(s) for s in names)


@functools.partial(jax.jit, static_argnames=("debiased",))
def _transforms(Ks: jax.Array, debiased: bool):
    T = jax.vmap(lambda K: transform(K, debiased))(Ks)
    ratios = jax.vmap(lambda K, t: kernel_variance_ratio(K, t, debiased))(Ks, T)
    flat = T.reshape(T.shape[0], -1)
    cross = jnp.matmul(flat, flat.T, precision=HIGHEST)
    norms = jnp.sqrt(jnp.diagonal(cross))
    return T, cross / (norms[:, None] * norms[None, :]), norms, ratios


@functools.partial(jax.jit, static_argnames=("n_permutations", "chunk"))
def _permutation_null(key, T, norms, cka, n_permutations: int, chunk: int):
    null = permuted_inner(key, T, T, n_permutations, chunk) / (norms[:, None] * norms[None, :])[None]
    mean, sd = null_moments(null)
    upper = jnp.triu(jnp.ones(cka.shape, dtype=bool))
    sym = lambda a: jnp.where(upper, a, a.T)  # noqa: E731  (i < j: model j's points permuted)
    return sym(p_values(null, cka)), sym(mean), sym(sd)


def kernel_similarity(
    key: Any,
    models: Sequence[tuple[Callable, Any]],
    x: Any,
    *,
    kernel: str | Callable = "trntk",
    projection: Any = None,
    n_permutations: int = 999,
    debiased: bool = True,
    names: Sequence[str] | None = None,
    block_size: int | None = None,
) -> KernelSimilarity:
    r"""CKA and permutation p-values between the kernels of every pair of models on the same inputs.

    For ``M`` models ``(apply_fn_m, params_m)`` (architectures may differ; each ``apply_fn(params, x) -> (N, C)``
    logits) the kernel ``K_m = kernel_fn_m(params_m, x)`` is computed on the same ``N`` points, then
    ``cka[i, j] = CKA(K_i, K_j)`` and ``p_value[i, j]`` from ``B = n_permutations`` permutations of the points (module
    docstring). Kernels with class axes ``(N, N, C, C)`` (``"entk"``) are traced over classes first.

    Args:
      key: a ``jax.random.key`` for the permutations (a projection carries its own key).
      models: ``M >= 2`` pairs ``(apply_fn, params)``.
      x: ``(N, ...)`` inputs (``N >= 4`` when debiased), or a pytree of arrays with one leading size ``N`` (e.g.
        ``{"tokens", "mask"}``), as the kernels take them.
      kernel: a name in ``jaxcompare.ntk.KERNELS`` built from ``apply_fn`` (``"trntk"``, ``"trntk0"``, ``"pntk"``,
        ``"pntk0"``, ``"entk"``...; with a projection, ``"trntk"``/``"pntk"`` mean ``"proj_trntk"``/``"proj_pntk"``)
        or a factory ``apply_fn -> kernel_fn(params, x1, x2=None)`` (called with ``projection=`` when one is given).
      projection: a ``jaxcompare.random_projection`` (or Kronecker projection) passed to the kernel factory: the
        kernels of projected gradients, for models too large for exact kernels.
      n_permutations: ``B >= 1``.
      debiased: unbiased HSIC (default) or biased.
      names: ``M`` model names for the result and its figure (default ``"model 0"``...).
      block_size: compute kernels in tiles of this many rows with ``jaxcompare.batched`` (memory of one tile); None
        tiles with 1024 rows when ``N > 1024``.

    Returns:
      :class:`KernelSimilarity` (``cka``, ``p_value``, ``null_mean``, ``null_sd``, ``kernel``, ``label``,
      ``names``; ``.plot()`` draws the heatmap).

    Raises:
      ValueError: a kernel that is not ``N × N``, not finite, not symmetric, or constant after centring (the message
        names the model).

    Example:
      >>> from jaxcompare.similarity import kernel_similarity
      >>> def mlp(params, x):
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> def linear(params, x):
      ...     return x @ params["w"]
      >>> ks = jax.random.split(jax.random.key(0), 6)
      >>> mlp_a = {"w1": jax.random.normal(ks[0], (5, 32)), "w2": jax.random.normal(ks[1], (32, 3))}
      >>> mlp_b = {"w1": jax.random.normal(ks[2], (5, 32)), "w2": jax.random.normal(ks[3], (32, 3))}
      >>> lin = {"w": jax.random.normal(ks[4], (5, 3))}
      >>> x = jax.random.normal(ks[5], (60, 5))
      >>> res = kernel_similarity(jax.random.key(1), [(mlp, mlp_a), (mlp, mlp_b), (linear, lin)], x,
      ...                         kernel="trntk0", n_permutations=99, names=["mlp a", "mlp b", "linear"])
      >>> print(res.label, np.round(np.asarray(res.cka), 2).tolist())
      trNTK⁰ [[1.0, 0.96, 0.92], [0.96, 1.0, 0.94], [0.92, 0.94, 1.0]]
      >>> print(np.asarray(res.p_value)[0, 1:])
      [0.01 0.01]
    """
    key = check_key(key)
    debiased = check_debiased(debiased)
    n_permutations = check_int(n_permutations, "n_permutations", min=1)
    pairs = _check_models(models)
    model_names = _check_names(names, len(pairs))
    from ..ntk._inputs import batch_size, validate_x

    x = validate_x(x, "x")  # an array (N, ...) or a pytree of them (tokens and mask, ...); complex refused
    n = batch_size(x)
    if n < min_points(debiased):
        raise ValueError(
            f"x has N = {n} points; {'debiased' if debiased else 'biased'} CKA needs N >= {min_points(debiased)}."
        )
    if block_size is not None:
        block_size = check_int(block_size, "block_size", min=1)
    else:
        block_size = auto_block_size(n)
    name, label, factory = _resolve_kernel(kernel, projection)
    kernels = [  # each checked as it comes: a bad kernel stops the loop before the next model's
        check_kernel(
            model_kernel(factory, apply_fn, params, x, block_size),
            f"the {label} kernel of models[{i}] ({model_names[i]})",
            n=n,
            debiased=debiased,
        )
        for i, (apply_fn, params) in enumerate(pairs)
    ]
    return similarity_of_kernels(key, kernels, model_names, name, label, n_permutations, debiased)


def model_kernel(factory: Callable, apply_fn: Callable, params: Any, x: Any, block_size: int | None) -> jax.Array:
    """One model's ``(N, N)`` kernel as :func:`kernel_similarity` computes it (``factory`` from
    ``_resolve_kernel``; in blocks of ``block_size`` rows when given; a kernel with class axes traced over them)."""
    from .. import ntk

    kernel_fn = factory(apply_fn)
    if block_size is not None:
        kernel_fn = ntk.batched(kernel_fn, block_size, progress_bar=False)
    K = jnp.asarray(kernel_fn(params, x))
    if K.ndim == 4:
        K = jnp.trace(K, axis1=2, axis2=3)
    return K


def auto_block_size(n: int) -> int | None:
    """The rows per block :func:`kernel_similarity` uses for ``n`` points when none is given."""
    return _AUTO_BLOCK if n > _AUTO_BLOCK else None


def similarity_of_kernels(
    key: Any,
    kernels: Sequence[Any],
    model_names: Sequence[str],
    name: str,
    label: str,
    n_permutations: int,
    debiased: bool,
) -> KernelSimilarity:
    """:func:`kernel_similarity` from the models' kernels (``name``, ``label``: the kernel's, for the result and
    the messages): each checked, then the CKA matrix and its permutation null."""
    n = int(jnp.shape(kernels[0])[0])
    kernels = [
        check_kernel(K, f"the {label} kernel of models[{i}] ({model_names[i]})", n=n, debiased=debiased)
        for i, K in enumerate(kernels)
    ]
    dtype = common_dtype(*kernels)
    Ks = jnp.stack([K.astype(dtype) for K in kernels])
    T, cka, norms, ratios = _transforms(Ks, debiased)
    for i, r in enumerate(ratios):
        check_variance(r, f"the {label} kernel of models[{i}] ({model_names[i]})", n, dtype, debiased)
    p, mean, sd = _permutation_null(key, T, norms, cka, n_permutations, chunk_size(n_permutations, n, len(kernels)))
    return KernelSimilarity(cka, p, mean, sd, name, label, tuple(model_names), n_permutations, debiased)
