"""``batched``: compute any kernel function tile by tile, in memory bounded by the block size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._progress import progress
from .._validation import check_flag, check_int, is_concrete
from ._common import batch_size, canonical_args, validate_pair
from ._structured._blocks import _MODES as ENGINE_KERNELS
from ._structured._blocks import blocked, engine_mode
from ._tiling import TilePlan, check_transform_args, diag_blocks, kernel_parts, normalize, swap, transformed

__all__ = ["batched"]


def _traced(kfn, params, x1, x2, plan: TilePlan, swap_trailing):
    """Tiles under tracing: ``lax.map`` over blocks (one tile's intermediates alive at a time)."""
    bs = plan.block_size
    x1b = plan.blocks(plan.padded(x1))  # pytree inputs: every leaf (nb1, bs, ...)
    if plan.symmetric:
        pairs = np.array(plan.pairs, dtype=np.int32)
        at = lambda xb, i: jax.tree_util.tree_map(lambda l: l[i], xb)  # noqa: E731
        tiles = jax.lax.map(lambda ij: kfn(params, at(x1b, ij[0]), at(x1b, ij[1])), jnp.asarray(pairs))
        index = {(int(i), int(j)): p for p, (i, j) in enumerate(pairs)}
        rows = [
            jnp.concatenate(
                [
                    tiles[index[(i, j)]] if i <= j else swap(tiles[index[(j, i)]], swap_trailing)
                    for j in range(plan.nb1)
                ],
                axis=1,
            )
            for i in range(plan.nb1)
        ]
        return jnp.concatenate(rows, axis=0)[: plan.n1, : plan.n1]
    x2b = plan.blocks(plan.padded(x2))
    tiles = jax.lax.map(lambda a: jax.lax.map(lambda b: kfn(params, a, b), x2b), x1b)  # (nb1, nb2, bs, bs, ...)
    tiles = jnp.moveaxis(tiles, 2, 1)  # (nb1, bs, nb2, bs, ...)
    return tiles.reshape((plan.nb1 * bs, plan.nb2 * bs) + tiles.shape[4:])[: plan.n1, : plan.n2]


def _eager(kfn_jit, params, x1, x2, plan: TilePlan, swap_trailing, desc, show):
    """Tiles eagerly: a jitted tile function, results gathered on the host, with a progress bar."""
    bs = plan.block_size
    x1p = plan.padded(x1)
    x2p = x1p if plan.symmetric else plan.padded(x2)
    out = None
    for i, j in progress(plan.pairs, total=len(plan.pairs), desc=desc, enabled=show):
        t = np.asarray(kfn_jit(params, plan.block(x1p, i), plan.block(x2p, j)))
        if out is None:
            out = np.empty((plan.nb1 * bs, plan.nb2 * bs) + t.shape[2:], dtype=t.dtype)
        out[i * bs : (i + 1) * bs, j * bs : (j + 1) * bs] = t
        if plan.symmetric and i != j:
            out[j * bs : (j + 1) * bs, i * bs : (i + 1) * bs] = swap(t, swap_trailing)
    return jnp.asarray(out[: plan.n1, : plan.n2])


def _finite_or_raise(k: Any, again: Callable, params: Any, name: str) -> Any:
    """A tiled kernel of this package with inf/NaN entries (finite params and inputs were checked): a low-precision
    model's overflow raises at once (:func:`jaxcompare._precision.check_overflow`); otherwise the kernel is compiled
    afresh and computed once more (a backend fault) and still non-finite raises naming the points
    (:func:`._kernels._checked_result`) — the same guarantees as an untiled call: never an inf/NaN kernel."""
    from .._precision import check_overflow, low_precision_dtype
    from ._kernels import _checked_result, _features_finite

    if name.startswith(("ck", "em")):  # a feature kernel: its features are what is not finite
        _features_finite(k, f"{name} kernel", "feature_fn" if name.startswith("ck") else "layers_fn")
    low = low_precision_dtype(params)
    if low is not None:
        check_overflow(jnp.asarray(False), low, f"{name} kernel", "batched")
    return _checked_result(lambda: (again(), None, None), k, None, f"{name} kernel", "batched")[0]


def batched(
    kernel_fn: Callable, block_size: int, *, progress_bar: bool | None = None, memory_budget: Any = None
) -> Any:
    """Compute ``kernel_fn`` in ``block_size × block_size`` tiles; same signature, same result.

    Peak memory is that of one tile (plus the output), so it no longer grows with ``N1·N2·P``. With ``x2=None``
    only the tiles on and above the diagonal are computed (the rest by symmetry). For the package's normalized
    kernels the per-point norms are computed once and the normalization is applied after tiling, so normalized
    and unnormalized kernels cost the same.

    Eager calls jit one tile function, gather tiles on the host and show a progress bar (disable with
    ``progress_bar=False`` or ``JAXCOMPARE_PROGRESS=0``); under ``jax.jit``/``vmap`` the tiles run in
    ``lax.map``. A partial last block is padded by repeating its first row (padding is dropped); inputs smaller
    than one block are not padded. Inputs may be pytrees of arrays with a leading batch axis (``{"tokens",
    "mask"}``): rows are sliced and padded leaf by leaf.

    Exact gradient kernels of this package on the structured path (``implementation="structured"``, or ``"auto"``
    resolving to it) run eagerly on a blocked engine: each block's layer factors are computed once and kept in a
    compact per-layer form (per-example gradients, or the layer inputs and output sensitivities where that needs
    fewer FLOPs or less memory); as many blocks as ``memory_budget`` allows stay resident and the others are
    streamed past them, so peak memory is bounded by the budget and the block, not by ``N``. Blocks under 128 rows
    are merged into blocks of about 128 when all of them stay resident within the budget and little of them would be
    padding (the same kernel; larger products run faster). A block size that cannot fit the budget raises before
    any work, with a block size that fits.

    Args:
      kernel_fn: any ``kernel_fn(params, x1, x2=None) -> (N1, N2, ...)`` (from this package or your own).
      block_size: rows per tile (``>= 1``).
      progress_bar: show progress for eager calls (default: on unless ``JAXCOMPARE_PROGRESS=0``).
      memory_budget: bytes (or ``"2G"``, or a fraction in (0, 1] of the available memory) the blocked structured
        engine may hold; default ``JAXCOMPARE_MEMORY_BUDGET``, else half the available memory.

    Returns:
      ``kernel_fn(params, x1, x2=None)`` with the same output: a :class:`Kernel` record for a kernel of this
      package (its ``spec.base``/``spec.diag`` are the tiled parts, so transforms stack), else a plain function.

    Example:
      >>> def apply_fn(params, x):                         # a tiny two-layer MLP: (N, 3) -> (N, 2) logits
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x_train = jax.random.normal(k3, (10, 3))
      >>> K = jc.batched(jc.trace_ntk(apply_fn), block_size=4)(params, x_train)   # 4 x 4 tiles (padded)
      >>> K.shape
      (10, 10)
      >>> bool(jnp.allclose(K, jc.trace_ntk(apply_fn)(params, x_train)))           # same result as unbatched
      True
    """
    parts = kernel_parts(kernel_fn, "batched")
    bs = check_int(block_size, "block_size", min=1)
    if progress_bar is not None:
        check_flag(progress_bar, "progress_bar")
    if memory_budget is not None:
        from ._memory import memory_budget as _budget

        _budget(memory_budget)  # validated now: a bad value fails at construction
    tile_jit = jax.jit(lambda p, a, b: parts.tile_fn(p, a, b))
    diag_fn = parts.spec.diag if parts.spec is not None else None
    diag_jit = jax.jit(lambda p, a: diag_fn(p, a)) if diag_fn is not None else None

    def base(params, x1, x2=None):
        """The tiled un-normalized kernel (the kernel itself for a plain callable)."""
        x1, x2 = validate_pair(x1, x2)
        traced = not all(is_concrete(l) for l in jax.tree_util.tree_leaves((params, x1, x2)))
        if not traced:
            check_transform_args(params)
        # symmetry of tiles is known for our kernels; for a user's kernel we do not assume it
        symmetric = x2 is None and parts.symmetric_known
        xx2 = x1 if x2 is None else x2
        n1, n2 = batch_size(x1), batch_size(xx2)
        plan = TilePlan(n1, n2, min(bs, max(n1, n2)), symmetric)  # inputs smaller than a block: not padded
        if traced:
            return _traced(parts.tile_fn, params, x1, xx2, plan, parts.swap_trailing)
        engine = _engine(params, x1, x2)
        if engine is not None:
            return engine[0]
        return _eager(tile_jit, params, x1, xx2, plan, parts.swap_trailing, f"{parts.name} tiles", progress_bar)

    def diag(params, x):
        x, _ = validate_pair(x, None)
        traced = not all(is_concrete(l) for l in jax.tree_util.tree_leaves((params, x)))
        return diag_blocks(diag_fn if traced else diag_jit, params, x, bs, traced)

    def _engine(params, x1, x2):
        """``(kernel, diagonal of x1 or None)`` from the blocked structured engine, or None when it does not apply."""
        if parts.spec is None or parts.spec.apply_fn is None or parts.spec.name not in ENGINE_KERNELS:
            return None  # feature kernels (ck, em) and user kernels: tiled
        fn, c1, c2, n_outputs, _, _ = canonical_args(params, x1, x2, parts.spec.apply_fn)
        mode = engine_mode(parts.spec, params, fn, c1, c2, n_outputs)  # on the canonical model (._inputs)
        if mode is None:
            return None
        return blocked(
            fn,
            params,
            c1,
            c2,
            mode=mode,
            block_size=bs,
            budget=memory_budget,
            show=progress_bar,
            precision=dict(parts.spec.options).get("precision"),
        )

    def tiled(params, x1, x2=None):
        if parts.use_norm and x2 is None and all(is_concrete(l) for l in jax.tree_util.tree_leaves((params, x1))):
            engine = _engine(params, *validate_pair(x1, None))
            if engine is not None and engine[1] is not None:  # the norms are the diagonal of the symmetric base
                return normalize(engine[0], engine[1], engine[1], warn=True)
        k = base(params, x1, x2)
        if not parts.use_norm:
            return k
        d1 = diag(params, x1)
        d2 = d1 if x2 is None else diag(params, x2)
        return normalize(k, d1, d2, warn=x2 is None)

    def fn(params, x1, x2=None):
        try:
            k = tiled(params, x1, x2)
        except jax.errors.JaxRuntimeError as e:  # a tile's own overflow check: a host callback inside its jit
            text = str(e)
            if "FloatingPointError: " not in text:
                raise
            raise FloatingPointError(text.split("FloatingPointError: ", 1)[1].splitlines()[0]) from None
        if parts.spec is None or isinstance(k, jax.core.Tracer) or bool(jnp.all(jnp.isfinite(k))):
            return k  # a kernel of this package is finite (one scalar back), else raises below; a user's: as it is
        return _finite_or_raise(k, lambda: tiled(params, x1, x2), params, parts.name)

    return transformed(kernel_fn, parts, fn, base, diag if diag_fn is not None else None, "batched")
