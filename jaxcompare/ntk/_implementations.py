"""Implementations of the gradient kernels (eNTK, trNTK⁰, pNTK) and their diagonals.

Each implementation is a frozen record of pure functions with the signatures

- ``full(apply_fn, params, x1, x2) -> (N1, N2, C, C)``   ``K[i,j,c,c'] = <g_c(x1_i), g_c'(x2_j)>``
- ``trace(apply_fn, params, x1, x2) -> (N1, N2)``        ``sum_c <g_c(x1_i), g_c(x2_j)>`` (trNTK⁰, a sum)
- ``pseudo(apply_fn, params, x1, x2) -> (N1, N2)``       ``(1/C) <sum_c g_c(x1_i), sum_c g_c(x2_j)>``
- ``trace_diag(apply_fn, params, x) -> (N,)`` and ``pseudo_diag(apply_fn, params, x) -> (N,)``

``x2 is None`` means ``x2 = x1`` (implementations may reuse work). All are traceable (no Python value checks).

The set of implementations is static: :data:`IMPLEMENTATIONS` below (a read-only mapping), the one place to add one.
``implementation="auto"`` is resolved by :func:`choose_auto` once per (model, parameter shapes and dtypes, input
shapes and dtypes) and cached.
"""

from __future__ import annotations

import collections
import types
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ._common import Implementation, contract, single_example, tree_dot
from ._memo import memoized
from ._structured import STRUCTURED, applies

__all__ = ["Implementation", "IMPLEMENTATIONS", "choose_auto"]


# --------------------------------------------------------------------------------------------------------------
# Jacobian contraction: per-example Jacobians (N, C, *leaf) by vmap(jacrev), then contractions. Memory N*C*P.
# --------------------------------------------------------------------------------------------------------------
def _jacobians(apply_fn, params, x):
    f = single_example(apply_fn)
    return jax.vmap(jax.jacrev(f), in_axes=(None, 0))(params, x)


def _summed_grads(apply_fn, params, x):
    f = single_example(apply_fn)
    return jax.vmap(jax.grad(lambda p, xi: jnp.sum(f(p, xi))), in_axes=(None, 0))(params, x)


def _jac_full(apply_fn, params, x1, x2):
    j1 = _jacobians(apply_fn, params, x1)
    j2 = j1 if x2 is None else _jacobians(apply_fn, params, x2)
    return tree_dot(j1, j2, "icp,jdp->ijcd")


def _jac_trace(apply_fn, params, x1, x2):
    j1 = _jacobians(apply_fn, params, x1)
    j2 = j1 if x2 is None else _jacobians(apply_fn, params, x2)
    return tree_dot(j1, j2, "icp,jcp->ij")


def _jac_pseudo(apply_fn, params, x1, x2):
    c = jax.eval_shape(apply_fn, params, x1).shape[1]
    g1 = _summed_grads(apply_fn, params, x1)
    g2 = g1 if x2 is None else _summed_grads(apply_fn, params, x2)
    return tree_dot(g1, g2, "ip,jp->ij") / c


def _jac_trace_diag(apply_fn, params, x):
    j = _jacobians(apply_fn, params, x)
    return tree_dot(j, j, "icp,icp->i")


def _jac_pseudo_diag(apply_fn, params, x):
    c = jax.eval_shape(apply_fn, params, x).shape[1]
    g = _summed_grads(apply_fn, params, x)
    return tree_dot(g, g, "ip,ip->i") / c


JACOBIAN = Implementation(
    name="jacobian",
    full=_jac_full,
    trace=_jac_trace,
    pseudo=_jac_pseudo,
    trace_diag=_jac_trace_diag,
    pseudo_diag=_jac_pseudo_diag,
    description="per-example Jacobians (vmap of jacrev) contracted over parameters; memory ~ N*C*P",
)


# --------------------------------------------------------------------------------------------------------------
# NTK-vector products: column j of K from C vector-Jacobian products at x2_j followed by C Jacobian-vector products
# on the whole x1 batch. Never holds more than C parameter-sized vectors per column; cost ~ N1*N2*C forward passes.
# --------------------------------------------------------------------------------------------------------------
_MAP_BATCH = 4  # columns evaluated together in lax.map


def _columns(apply_fn, params, x1, x2, cotangents, reduce):
    """For each example of x2: pull back each cotangent (K, C) to parameter space, push forward on x1.

    ``reduce(out)`` maps the push-forward ``(K, N1, C)`` to the column's value for that example.
    """
    f = single_example(apply_fn)

    def column(xj):
        _, vjp_fn = jax.vjp(lambda p: f(p, xj), params)
        tangents = jax.vmap(lambda ct: vjp_fn(ct)[0])(cotangents)  # leaves (K, *leaf)

        def push(t):
            return jax.jvp(lambda p: apply_fn(p, x1), (params,), (t,))[1]  # (N1, C)

        out = jax.vmap(push)(tangents)  # entries in the model's dtype; reduced in at least float32
        return reduce(out.astype(jnp.promote_types(out.dtype, jnp.float32)))

    return jax.lax.map(column, x2, batch_size=min(_MAP_BATCH, x2.shape[0]))


def _ntvp_full(apply_fn, params, x1, x2):
    x2 = x1 if x2 is None else x2
    out_sd = jax.eval_shape(apply_fn, params, x1)
    eye = jnp.eye(out_sd.shape[1], dtype=out_sd.dtype)
    # out[c', i, c] = <g_c(x1_i), g_c'(x2_j)>  ->  column (N1, C, C') ; stacked (N2, N1, C, C')
    cols = _columns(apply_fn, params, x1, x2, eye, lambda out: jnp.transpose(out, (1, 2, 0)))
    return jnp.transpose(cols, (1, 0, 2, 3))


def _ntvp_trace(apply_fn, params, x1, x2):
    x2 = x1 if x2 is None else x2
    out_sd = jax.eval_shape(apply_fn, params, x1)
    eye = jnp.eye(out_sd.shape[1], dtype=out_sd.dtype)
    cols = _columns(apply_fn, params, x1, x2, eye, lambda out: jnp.einsum("cic->i", out))
    return cols.T


def _ntvp_pseudo(apply_fn, params, x1, x2):
    x2 = x1 if x2 is None else x2
    out_sd = jax.eval_shape(apply_fn, params, x1)
    c = out_sd.shape[1]
    ones = jnp.ones((1, c), dtype=out_sd.dtype)
    cols = _columns(apply_fn, params, x1, x2, ones, lambda out: jnp.sum(out[0], axis=-1))
    return cols.T / c


def _ntvp_diag(apply_fn, params, x, cotangent_fn, scale):
    f = single_example(apply_fn)
    out_sd = jax.eval_shape(apply_fn, params, x)
    cts = cotangent_fn(out_sd.shape[1], out_sd.dtype)

    def one(xi):
        _, vjp_fn = jax.vjp(lambda p: f(p, xi), params)
        g = jax.vmap(lambda ct: vjp_fn(ct)[0])(cts)
        return sum(
            contract("kp,kp->", l.reshape(l.shape[0], -1), l.reshape(l.shape[0], -1))
            for l in jax.tree_util.tree_leaves(g)
        )

    return jax.lax.map(one, x, batch_size=min(_MAP_BATCH, x.shape[0])) * scale(out_sd.shape[1])


def _ntvp_trace_diag(apply_fn, params, x):
    return _ntvp_diag(apply_fn, params, x, lambda c, dt: jnp.eye(c, dtype=dt), lambda c: 1.0)


def _ntvp_pseudo_diag(apply_fn, params, x):
    return _ntvp_diag(apply_fn, params, x, lambda c, dt: jnp.ones((1, c), dtype=dt), lambda c: 1.0 / c)


NTVP = Implementation(
    name="ntvp",
    full=_ntvp_full,
    trace=_ntvp_trace,
    pseudo=_ntvp_pseudo,
    trace_diag=_ntvp_trace_diag,
    pseudo_diag=_ntvp_pseudo_diag,
    description="NTK-vector products (vjp then jvp per column); memory ~ C*P + activations",
)

#: every implementation of the gradient kernels, by name (static, read-only)
IMPLEMENTATIONS: Mapping[str, Implementation] = types.MappingProxyType(
    {"jacobian": JACOBIAN, "ntvp": NTVP, "structured": STRUCTURED}
)


def n_params(params: Any) -> int:
    return int(sum(jnp.size(l) for l in jax.tree_util.tree_leaves(params)))


# memory budget (bytes) for the Jacobians of one call under implementation="auto"
AUTO_JACOBIAN_BYTES = 2 * 1024**3


_AUTO_CACHE: collections.OrderedDict = collections.OrderedDict()  # memo of a pure function of static data
_AUTO_CACHE_SIZE = 256


def _auto_key(apply_fn, params, x1, x2, n_classes):
    sig = lambda a: (tuple(jnp.shape(a)), str(jnp.result_type(a)))  # noqa: E731
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return (apply_fn, treedef, tuple(sig(l) for l in leaves), sig(x1), None if x2 is None else sig(x2), n_classes)


def choose_auto(apply_fn, params, x1, x2, n_classes: int) -> str:
    """``"structured"`` when applicable, else ``"jacobian"`` when its memory fits, else ``"ntvp"``.

    Decided from shapes and dtypes only, once per (apply_fn, parameter shapes/dtypes, input shapes/dtypes): the
    structured analysis traces the model, so it is not repeated on every eager call.
    """
    key = _auto_key(apply_fn, params, x1, x2, n_classes)
    return memoized(_AUTO_CACHE, key, lambda: _decide(apply_fn, params, x1, x2, n_classes), _AUTO_CACHE_SIZE)


def _decide(apply_fn, params, x1, x2, n_classes: int) -> str:
    if applies(apply_fn, params, x1)[0]:
        return "structured"
    n = x1.shape[0] + (0 if x2 is None else x2.shape[0])
    itemsize = jnp.dtype(jax.eval_shape(apply_fn, params, x1).dtype).itemsize
    if n * n_classes * n_params(params) * itemsize <= AUTO_JACOBIAN_BYTES:
        return "jacobian"
    return "ntvp"
