"""Batched L-BFGS for ``B`` independent smooth convex problems at once, in one ``lax.while_loop`` (private).

The objective ``fun(X) -> (B,)`` takes all iterates ``X (B, D)`` and returns one value per problem; problem ``b``
may depend only on row ``b`` (separable), so ``∇ Σ_b fun(X)_b`` stacks the per-problem gradients and one call
evaluates every problem (for a kGLM: one kernel-matrix product instead of ``B`` kernel-vector products).

Per problem: L-BFGS direction (two-loop recursion over the last ``memory_size`` pairs, initial scaling
``γ = sᵀy / yᵀy``), backtracking line search from the unit step until the Armijo condition
``f(x + t d) <= f(x) + 1e-4 · t · ∇fᵀd`` holds (halving ``t``), and a pair update only when ``sᵀy > 0`` (always
for a strictly convex objective). A problem stops when ``max |∇f| <= tol`` (SciPy's ``pgtol``, scikit-learn's
``tol`` for ``lbfgs``), when its line search fails or its step leaves ``f`` unchanged (no decrease representable
in the dtype: "stalled"), or at ``max_iter``. Deterministic, and works under ``jit``/``vmap``. Each problem's
outcome is a :class:`jaxcompare.Result` code (``successful``, ``max_steps_reached``, ``stalled``, ``nonfinite``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._results import Result

__all__ = ["LBFGSResult", "minimize_lbfgs"]

_ARMIJO = 1e-4
_MAX_LINESEARCH = 40


class LBFGSResult(NamedTuple):
    """Output of :func:`minimize_lbfgs`, per problem: iterate ``x (B, D)``, value, ``max |∇f|``, iterations and the
    ``int32`` :class:`jaxcompare.Result` code ``(B,)``."""

    x: jax.Array
    value: jax.Array
    grad_norm: jax.Array
    n_iter: jax.Array
    result: jax.Array


def _two_loop(g, S, Y, rho, newest, gamma):
    """``-H g`` for one problem: history ``S, Y (m, D)`` (ring buffer, ``newest`` its latest slot; ``rho = 0``
    marks an empty slot)."""
    m = S.shape[0]
    order = (newest - jnp.arange(m)) % m  # newest to oldest

    def back(q, i):
        j = order[i]
        a = rho[j] * jnp.dot(S[j], q)
        return q - a * Y[j], a

    q, alphas = jax.lax.scan(back, g, jnp.arange(m))
    r = gamma * q

    def fwd(r, i):
        j = order[m - 1 - i]
        beta = rho[j] * jnp.dot(Y[j], r)
        return r + S[j] * (alphas[m - 1 - i] - beta), None

    r, _ = jax.lax.scan(fwd, r, jnp.arange(m))
    return -r


def minimize_lbfgs(
    fun: Callable[[jax.Array], jax.Array], x0: jax.Array, *, max_iter: int, tol, memory_size: int
) -> LBFGSResult:
    """Minimize the ``B`` separable problems ``fun(X)_b`` from ``x0 (B, D)`` (see module docstring)."""
    B, D = x0.shape
    dtype = x0.dtype
    m = memory_size

    def vg_fused(x):
        # per-problem values and gradients from one evaluation (the problems are separable)
        vals, vjp = jax.vjp(fun, x)
        (g,) = vjp(jnp.ones_like(vals))
        return vals, g

    f0, g0 = vg_fused(x0)
    gmax = lambda g: jnp.max(jnp.abs(g), axis=1)  # noqa: E731
    init = dict(
        x=x0,
        f=f0,
        g=g0,
        S=jnp.zeros((B, m, D), dtype),
        Y=jnp.zeros((B, m, D), dtype),
        rho=jnp.zeros((B, m), dtype),
        newest=jnp.full((B,), m - 1, jnp.int32),
        gamma=1.0 / jnp.maximum(jnp.linalg.norm(g0, axis=1), 1.0),
        active=gmax(g0) > tol,
        n_iter=jnp.zeros((B,), jnp.int32),
        k=jnp.zeros((), jnp.int32),
    )

    def cond(st):
        return jnp.any(st["active"]) & (st["k"] < max_iter)

    def body(st):
        x, f, g, active = st["x"], st["f"], st["g"], st["active"]
        d = jax.vmap(_two_loop)(g, st["S"], st["Y"], st["rho"], st["newest"], st["gamma"])
        slope = jnp.sum(g * d, axis=1)
        # safeguard: a non-descent direction (numerical trouble) falls back to steepest descent
        bad = ~(slope < 0)
        d = jnp.where(bad[:, None], -g * st["gamma"][:, None], d)
        slope = jnp.where(bad, -st["gamma"] * jnp.sum(g * g, axis=1), slope)

        def ls_cond(c):
            t, fn, gn, ok, i = c
            return jnp.any(active & ~ok) & (i < _MAX_LINESEARCH)

        def ls_body(c):
            t, fn, gn, ok, i = c
            t = jnp.where(ok, t, 0.5 * t)
            xn = x + jnp.where(active, t, 0.0)[:, None] * d
            fn_new, gn_new = vg_fused(xn)
            keep = ok[:, None]
            return (
                t,
                jnp.where(ok, fn, fn_new),
                jnp.where(keep, gn, gn_new),
                ok | (fn_new <= f + _ARMIJO * t * slope),
                i + 1,
            )

        t0 = jnp.full((B,), 2.0, dtype)  # halved to 1 on the first try
        ok0 = ~active
        t, fn, gn, ok, _ = jax.lax.while_loop(ls_cond, ls_body, (t0, f, g, ok0, jnp.zeros((), jnp.int32)))
        step = active & ok  # a failed line search leaves the problem where it was and stops it (stalled)
        s = jnp.where(step, t, 0.0)[:, None] * d
        xn = x + s
        fn = jnp.where(step, fn, f)
        gn = jnp.where(step[:, None], gn, g)
        y = gn - g
        sy = jnp.sum(s * y, axis=1)
        yy = jnp.sum(y * y, axis=1)
        upd = step & (sy > 0) & jnp.isfinite(sy)
        slot = jnp.where(upd, (st["newest"] + 1) % m, st["newest"])
        onehot = (jnp.arange(m)[None, :] == slot[:, None]) & upd[:, None]
        S = jnp.where(onehot[:, :, None], s[:, None, :], st["S"])
        Y = jnp.where(onehot[:, :, None], y[:, None, :], st["Y"])
        rho = jnp.where(onehot, (1.0 / jnp.where(upd, sy, 1.0))[:, None], st["rho"])
        gamma = jnp.where(upd, sy / jnp.where(upd, yy, 1.0), st["gamma"])
        # stop on tolerance, or when the accepted step no longer decreases f (stalled at the dtype's resolution)
        still = step & (gmax(gn) > tol) & jnp.isfinite(fn) & (fn < f)
        return dict(
            x=xn,
            f=fn,
            g=gn,
            S=S,
            Y=Y,
            rho=rho,
            newest=slot,
            gamma=gamma,
            active=still,
            n_iter=st["n_iter"] + step.astype(jnp.int32),
            k=st["k"] + 1,
        )

    st = jax.lax.while_loop(cond, body, init)
    gn = gmax(st["g"])
    finite = jnp.isfinite(st["f"]) & jnp.all(jnp.isfinite(st["x"]), axis=1)
    code = jnp.where(
        ~finite,
        int(Result.nonfinite),
        jnp.where(
            gn <= tol,
            int(Result.successful),
            jnp.where(st["active"], int(Result.max_steps_reached), int(Result.stalled)),
        ),
    )
    return LBFGSResult(st["x"], st["f"], gn, st["n_iter"], code.astype(jnp.int32))
