"""Random projections of parameter gradients: ``g -> R g`` with one ``dim x P`` matrix ``R`` shared by all classes.

``R`` is never stored: row ``t`` of ``R`` is one draw of ``P`` numbers from ``fold_in(key, t)``, split across the
parameter leaves in pytree order, so any chunking of the rows gives the same matrix, and the projected gradients
``R g_c(x)`` are computed as Jacobian-vector products ``<r_t, g_c(x)> = (J(x) r_t)_c`` — a forward-mode pass per row,
with at most ``chunk_size`` rows (``chunk_size x P`` numbers) alive at a time.

Scaling: Rademacher entries ``±1/sqrt(dim)`` or Gaussian ``N(0, 1/dim)``, so ``E[R^T R] = I`` and
``E[<R g, R g'>] = <g, g'>`` (unbiased).

``kind="sparse"``: a sparse Johnson–Lindenstrauss sketch (Kane & Nelson 2014; CountSketch for ``nnz=1``): column
``p`` of ``R`` is the sum of ``nnz`` entries ``±1/sqrt(nnz)`` in rows drawn uniformly and independently (from
``fold_in(key, leaf)``; two of them may land in the same row), so ``E[R^T R] = I`` again. It is applied to
per-example gradients (computed in chunks of examples) by a scatter-add: ``O(nnz · P)`` per gradient instead of
``O(dim · P)``, and ``R`` costs ``O(nnz · P)`` integers whatever ``dim``.

The draws use 32-bit random bits whatever ``jax_enable_x64``, and Gaussian entries are drawn in float32 whatever
the parameters' dtype (then cast to it): one key gives one ``R`` in either mode and for float32, float64 or
bfloat16 parameters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._validation import check_choice, check_int, check_key
from ._probes import ab_layout, check_output_probes, check_use, probe_matrix

__all__ = ["RandomProjection", "random_projection"]

_KINDS = ("rademacher", "gaussian", "sparse")
# per-example gradient elements (examples x classes x parameters) held at once by the sparse sketch
_SKETCH_ELEMENTS = 2**25
# parameters x rows held at once when chunk_size is automatic
_AUTO_CHUNK_ELEMENTS = 2**25


def _leaf_dtypes(leaves: list) -> list:
    """The dtype of each leaf's rows of ``R``: the leaf's floating dtype (the default float for others)."""
    dts = [jnp.result_type(leaf) for leaf in leaves]
    return [d if jnp.issubdtype(d, jnp.floating) else jnp.result_type(float) for d in dts]


def rows_dtype(params: Any) -> Any:
    """The dtype ``RandomProjection.rows`` generates a row of ``params`` in (the leaves' common floating dtype)."""
    dts = _leaf_dtypes(jax.tree_util.tree_leaves(params))
    return jnp.result_type(*dts) if dts else jnp.result_type(float)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RandomProjection:
    """A random projection of parameter space, applied lazily (see module docstring).

    Attributes:
      key: typed PRNG key the rows are generated from.
      dim: number of rows ``k``.
      kind: ``"rademacher"``, ``"gaussian"`` or ``"sparse"``.
      chunk_size: rows generated and applied together (memory ``chunk_size * P``); None picks one from P.
        For ``"sparse"``: examples whose gradients are sketched together (default from ``C · P``).
      nnz: nonzeros per column of a sparse ``R``.
      output_probes: ``p`` random combinations of the outputs in place of the ``C`` per-output gradients
        (:mod:`jaxcompare.ntk._probes`): features ``(N, p/2, dim)``; None: ``(N, C, dim)``.
    """

    key: jax.Array
    dim: int = dataclasses.field(metadata=dict(static=True))
    kind: str = dataclasses.field(default="rademacher", metadata=dict(static=True))
    chunk_size: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    nnz: int = dataclasses.field(default=1, metadata=dict(static=True))
    output_probes: int | None = dataclasses.field(default=None, metadata=dict(static=True))

    def rows(self, params: Any, index: jax.Array) -> Any:
        """Rows ``index`` (int array ``(m,)``) of ``R`` as a parameter pytree with leaves ``(m, *leaf.shape)``."""
        leaves, treedef = jax.tree_util.tree_flatten(params)
        sizes = [int(np.prod(jnp.shape(l), dtype=np.int64)) for l in leaves]
        dtypes = _leaf_dtypes(leaves)
        gen_dt = jnp.result_type(*dtypes)
        scale = 1.0 / math.sqrt(self.dim)
        bounds = np.cumsum([0] + sizes)

        def one_row(t):
            # one draw of all P entries per row (a single threefry instance: fast to compile), split into leaves
            kt = jax.random.fold_in(self.key, t)
            if self.kind == "rademacher":
                flat = _signs(kt, (int(bounds[-1]),), gen_dt) * jnp.asarray(scale, gen_dt)
            else:  # float32 normals whatever the params' dtype: one key, one R (and no bfloat16-quantized normals)
                flat = jax.random.normal(kt, (int(bounds[-1]),), dtype=jnp.float32) * jnp.float32(scale)
            return [
                flat[bounds[l] : bounds[l + 1]].reshape(jnp.shape(leaf)).astype(dtypes[l])
                for l, leaf in enumerate(leaves)
            ]

        return jax.tree_util.tree_unflatten(treedef, jax.vmap(one_row)(index))

    def _chunk(self, n_params: int, n_examples: int = 1, act_elements: int = 0, itemsize: int = 4) -> int:
        """Rows applied at once: ``chunk_size``, or the most (≤ 256) whose rows (``P`` numbers each) and forward-mode
        passes (the tangents of every intermediate of ``n_examples`` examples, ``act_elements`` per example) fit
        the memory budget (:func:`jaxcompare.ntk._memory.memory_budget`)."""
        if self.chunk_size is not None:
            return min(self.chunk_size, self.dim)
        from ._memory import memory_budget

        per_row = itemsize * (2 * n_params + 2 * n_examples * act_elements)
        by_budget = memory_budget() // max(per_row, 1)
        return int(max(1, min(self.dim, _AUTO_CHUNK_ELEMENTS // max(n_params, 1), 256, by_budget)))

    def features(self, apply_fn: Callable, params: Any, x: jax.Array, *, summed: bool = False) -> jax.Array:
        """Projected gradients: ``(N, C, dim)`` with ``[i, c, t] = <r_t, g_c(x_i)>``; ``summed`` gives ``(N, dim)``
        for the summed-logit gradient ``sum_c g_c``; ``output_probes=p`` gives ``(N, p/2, dim)``."""
        if self.output_probes is not None:
            out = jax.eval_shape(apply_fn, params, x)
            check_use(self.output_probes, out.shape[1], summed)
            v = probe_matrix(self.key, self.output_probes, out.shape[1], out.dtype)

            def probed(p, xx):  # the p probes' combinations of the outputs: one backward pass each
                return apply_fn(p, xx) @ v.T

            return ab_layout(self._plain_features(probed, params, x, summed=False, count_fn=apply_fn))
        return self._plain_features(apply_fn, params, x, summed=summed, count_fn=apply_fn)

    def _plain_features(
        self, apply_fn: Callable, params: Any, x: jax.Array, *, summed: bool, count_fn: Callable
    ) -> jax.Array:
        if self.kind == "sparse":
            return self._sketch_features(apply_fn, params, x, summed=summed)
        n_par = sum(int(jnp.size(l)) for l in jax.tree_util.tree_leaves(params))
        n_ex = jax.tree_util.tree_leaves(x)[0].shape[0]  # x may be a pytree with a leading batch axis
        chunk = self._chunk(n_par, n_ex, _intermediate_elements(count_fn, params, x), _itemsize(params))
        n_chunks = -(-self.dim // chunk)

        def push(t):
            out = jax.jvp(lambda p: apply_fn(p, x), (params,), (t,))[1]  # (N, C)
            return jnp.sum(out, axis=-1) if summed else out

        def do_chunk(ci):
            idx = ci * chunk + jnp.arange(chunk)
            r = self.rows(params, idx)
            vals = jax.vmap(push)(r)  # (chunk, N[, C])
            mask = (idx < self.dim).astype(vals.dtype)
            return vals * mask.reshape((chunk,) + (1,) * (vals.ndim - 1))

        out = jax.lax.map(do_chunk, jnp.arange(n_chunks))  # (n_chunks, chunk, N[, C])
        out = out.reshape((n_chunks * chunk,) + out.shape[2:])[: self.dim]
        return jnp.moveaxis(out, 0, -1)

    def _sketch_features(self, apply_fn: Callable, params: Any, x: jax.Array, *, summed: bool) -> jax.Array:
        from ._implementations import _jacobians, _summed_grads

        def per_example_gradients(xc):
            if summed:
                grads = jax.tree_util.tree_leaves(_summed_grads(apply_fn, params, xc))
                return [g.reshape(g.shape[0], 1, -1) for g in grads]
            jacs = jax.tree_util.tree_leaves(_jacobians(apply_fn, params, xc))
            return [g.reshape(g.shape[0], g.shape[1], -1) for g in jacs]

        leaves = jax.tree_util.tree_leaves(params)
        c = 1 if summed else jax.eval_shape(apply_fn, params, x).shape[1]
        n_par = sum(int(jnp.size(l)) for l in leaves)
        n = x.shape[0]
        chunk = self.chunk_size or max(1, min(n, _SKETCH_ELEMENTS // max(c * n_par, 1)))
        n_chunks = -(-n // chunk)
        hashes = []
        for l, leaf in enumerate(leaves):
            kl = jax.random.fold_in(self.key, l)
            size = int(jnp.size(leaf))
            rows = jax.random.randint(jax.random.fold_in(kl, 0), (self.nnz, size), 0, self.dim, dtype=jnp.int32)
            signs = _signs(jax.random.fold_in(kl, 1), (self.nnz, size), jnp.int8)
            hashes.append((rows, signs))
        scale = 1.0 / math.sqrt(self.nnz)

        def do_chunk(xc):
            grads = per_example_gradients(xc)  # list of (m, C', P_l)
            out = None
            for (rows, signs), g in zip(hashes, grads):
                m = g.shape[0]
                flat = jnp.moveaxis(g.reshape(m * g.shape[1], -1), 1, 0)  # (P_l, m*C')
                for r in range(self.nnz):
                    s = jax.ops.segment_sum(
                        flat * signs[r][:, None].astype(flat.dtype), rows[r], num_segments=self.dim
                    )  # (dim, m*C')
                    out = s if out is None else out + s
            out = out * jnp.asarray(scale, out.dtype)
            return jnp.moveaxis(out, 0, 1).reshape(xc.shape[0], -1, self.dim)

        xp = (
            jnp.concatenate([x, jnp.broadcast_to(x[:1], (n_chunks * chunk - n,) + x.shape[1:])])
            if n_chunks * chunk != n
            else x
        )
        out = jax.lax.map(do_chunk, xp.reshape((n_chunks, chunk) + x.shape[1:]))
        out = out.reshape((n_chunks * chunk,) + out.shape[2:])[:n]
        return out[:, 0] if summed else out


def _signs(key: jax.Array, shape: tuple, dtype: Any) -> jax.Array:
    """Random ±1 in ``dtype``: ``jax.random.rademacher``'s values with 64-bit mode off, and the same values with it
    on (``rademacher`` then compares float64 uniforms, so one key gave another projection under ``jax_enable_x64``
    and a store on disk could mix the two)."""
    return jnp.where(jax.random.uniform(key, shape, jnp.float32) < 0.5, 1, -1).astype(dtype)


def _intermediate_elements(apply_fn: Callable, params: Any, x: jax.Array) -> int:
    """Numbers computed by ``apply_fn`` for one example (every intermediate of its jaxpr, nested calls included):
    what one forward-mode pass keeps alive per example, at most."""
    from jax.extend.core import jaxprs_in_params

    closed = jax.make_jaxpr(apply_fn)(params, jax.tree_util.tree_map(lambda leaf: leaf[:1], x))

    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            total += sum(int(np.prod(v.aval.shape, dtype=np.int64)) for v in eqn.outvars if hasattr(v.aval, "shape"))
            for sub in jaxprs_in_params(eqn.params):
                total += count(sub)
        return total

    return max(count(closed.jaxpr), 1)


def _itemsize(params: Any) -> int:
    leaves = [l for l in jax.tree_util.tree_leaves(params) if jnp.issubdtype(jnp.result_type(l), jnp.floating)]
    return max([jnp.dtype(jnp.result_type(l)).itemsize for l in leaves] + [4])


def random_projection(
    key: Any,
    dim: int,
    kind: str = "rademacher",
    *,
    chunk_size: int | None = None,
    nnz: int = 1,
    output_probes: int | None = None,
) -> RandomProjection:
    """A random projection ``R`` (``dim x P``) for projected kernels, generated lazily from ``key``.

    Pass the result as ``projection=`` to :func:`trace_ntk` or :func:`pseudo_ntk`. The projected trace NTK is
    ``sum_c <R g_c(x), R g_c(x')>``; its expectation over ``R`` is the exact trNTK⁰. One ``R`` is shared by all
    classes, and the same key gives the same ``R`` whatever the chunking or the batch.

    Args:
      key: PRNG key (``jax.random.key(seed)``).
      dim: projection dimension ``k >= 1`` (even for :func:`projected_kernel`'s error estimate). The error of a
        cosine-normalized projected kernel is typically of order ``a / k`` with ``a`` ≈ 20–60 for real networks
        (shared/spec/ntk.md).
      kind: ``"rademacher"`` (entries ±1/√k), ``"gaussian"`` (entries N(0, 1/k)) — both applied by forward-mode
        products, ``dim`` forward passes — or ``"sparse"`` (a sparse JL sketch with ``nnz`` entries ±1/√nnz per
        column in independently drawn rows, applied to per-example gradients by scatter-adds: cheaper when ``dim``
        is large).
      chunk_size: rows of ``R`` generated and applied at once (memory ``chunk_size × P``); default automatic.
        For ``"sparse"``, examples whose gradients are formed at once (memory ``chunk_size × C × P``).
      nnz: nonzeros per column for ``kind="sparse"`` (``>= 1``; only that kind).
      output_probes: ``p`` (even, ``>= 2``, fewer than the model's outputs): the trace over outputs from ``p``
        random ±1 combinations of them (:mod:`jaxcompare.ntk._probes`); features ``(N, p/2, dim)``, unbiased for
        the trNTK⁰. Saves backward passes for ``"sparse"`` (``p`` instead of ``C``); the forward-mode kinds cost
        the same either way. Not for the pNTK. With ``"sparse"`` the halves are not independent (as without
        probes), so :func:`projected_kernel`'s error estimate does not apply, and each parameter's entries land in
        one half, seen by only ``p/2`` probes: on a 73-parameter MLP the variance was 1.2–1.4× Hutchinson's for
        ``p`` probes (the dense kinds and :func:`structured_projection`: 0.95–1.16×).

    Returns:
      A :class:`RandomProjection`.

    Example:
      >>> def apply_fn(params, x):                         # a tiny two-layer MLP: (N, 3) -> (N, 2) logits
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x = jax.random.normal(k3, (10, 3))
      >>> proj = jc.random_projection(jax.random.key(1), 1024)
      >>> K = jc.trace_ntk(apply_fn, projection=proj)(params, x)
      >>> K.shape
      (10, 10)
      >>> bool(jnp.abs(K - jc.trace_ntk(apply_fn)(params, x)).max() < 0.1)   # close to the exact trNTK
      True
    """
    key = check_key(key)
    dim = check_int(dim, "dim", min=1)
    check_choice(kind, "kind", _KINDS)
    if chunk_size is not None:
        chunk_size = check_int(chunk_size, "chunk_size", min=1)
    nnz = check_int(nnz, "nnz", min=1)
    if nnz != 1 and kind != "sparse":
        raise ValueError(f"nnz (nonzeros per column) applies to kind='sparse' only, got nnz={nnz} with kind={kind!r}.")
    if nnz > dim:
        raise ValueError(f"nnz must be <= dim (nonzeros per column of a {dim}-row matrix), got nnz={nnz}.")
    output_probes = check_output_probes(output_probes)
    if output_probes is not None and dim % 2:
        raise ValueError(f"dim must be even with output_probes (two halves of independent probes), got dim={dim}.")
    return RandomProjection(key=key, dim=dim, kind=kind, chunk_size=chunk_size, nnz=nnz, output_probes=output_probes)
