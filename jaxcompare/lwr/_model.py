"""Data, parameters, forward pass and the three matrices (weights, CK, NTK) of the two-layer model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .._precision import HIGHEST as _HI
from .._validation import check_array, check_choice, check_key
from ..spectra._activations import ACTIVATIONS, get_activation
from ._config import TEACHERS, LWRConfig

__all__ = ["LWRData", "LWRParams", "Kernels", "sample_data", "init_params", "apply", "kernels"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LWRData:
    """Training and test data. ``X (n, d)`` rows are samples, ``y (n,)``; ``beta (d,)`` or ``(k, d)`` unit
    planted directions; ``X_test (n_test, d)``, ``y_test (n_test,)``."""

    X: jax.Array
    y: jax.Array
    beta: jax.Array
    X_test: jax.Array
    y_test: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LWRParams:
    """Parameters ``W (h, d)``, ``v (h,)``; the activation name is static pytree metadata."""

    W: jax.Array
    v: jax.Array
    activation: str = dataclasses.field(default="tanh", metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Kernels:
    """The matrices of shared/spec/lwr.md: ``weights = WᵀW/h (d, d)``, ``ck (n, n)``, ``ntk = K_W + K_CK (n, n)``
    (the Gram of the Jacobian in (W, v)) and ``ntk_w = K_W (n, n)`` (the NTK when only W trains)."""

    weights: jax.Array
    ck: jax.Array
    ntk: jax.Array
    ntk_w: jax.Array


def _teacher_sum(cfg: LWRConfig, proj: jax.Array) -> jax.Array:
    """``Σ_j g_j(proj[:, j])`` for ``proj (N, k)``."""
    out = jnp.zeros(proj.shape[:1], proj.dtype)
    for j, name in enumerate(cfg.teachers):
        out = out + TEACHERS[name](proj[:, j])
    return out


def _labels(key, cfg: LWRConfig, X: jax.Array, B: jax.Array) -> jax.Array:
    d = X.shape[1]
    proj = jnp.matmul(X, B.T, precision=_HI)
    sq = jnp.sum(X * X, axis=1) / d
    noise = cfg.noise_std * jax.random.normal(key, X.shape[:1], X.dtype)
    return _teacher_sum(cfg, proj) + cfg.tau * sq + noise


# Peak bytes of one training run per entry of an n × n matrix, in units of the dtype's size: the CK, NTK_W and NTK of
# the current and the initial weights and LAPACK's workspace (measured: peak RSS of `jaxcompare lwr` grew 35–37 bytes
# per n² in float32 from n = 2000 to 4000 to 8000, about 9 float32 matrices).
_N2_MATRICES = 9


def check_fits(cfg: LWRConfig, *, kernels: bool) -> None:
    """Refuse, before any work, a configuration whose data (and with ``kernels`` the ``n × n`` kernels and their
    eigendecompositions that training records) cannot fit in memory: the allocation would abort or the OS kill the
    process. The limit is ``JAXCOMPARE_MEMORY_BUDGET`` when set, else the memory available now."""
    import os

    from ..ntk._memory import available_bytes, format_bytes, memory_budget

    item = jnp.dtype(cfg.jnp_dtype).itemsize

    def need(n: int) -> int:
        test = cfg.test_size if cfg.n_test is not None else n
        data = 2 * (n + test) * (cfg.d + 1) * item  # X, y and their test twins, and one temporary each
        return data + (_N2_MATRICES * n * n * item if kernels else 0)

    set_by_env = bool(os.environ.get("JAXCOMPARE_MEMORY_BUDGET"))
    limit = memory_budget() if set_by_env else available_bytes()
    if need(cfg.n) <= limit:
        return
    where = "the memory budget JAXCOMPARE_MEMORY_BUDGET" if set_by_env else "the memory available now"
    if kernels:
        lo, hi = 0, cfg.n  # the largest n whose need fits: need(lo) <= limit < need(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if need(mid) <= limit else (lo, mid)
        raise ValueError(
            f"n = {cfg.n} needs an estimated {format_bytes(need(cfg.n))}: training records the spectra of n × n "
            f"kernels (about {_N2_MATRICES} such {jnp.dtype(cfg.jnp_dtype).name} matrices at once), more than "
            f"{where} ({format_bytes(limit)}); nothing was computed. n ≤ {lo} fits (the eigendecompositions "
            "also cost O(n³) time: n = 8000 took 3.5 minutes on 2 CPU cores)."
        )
    raise ValueError(
        f"the data of n = {cfg.n} (+ {cfg.test_size} test) points in d = {cfg.d} dimensions needs an estimated "
        f"{format_bytes(need(cfg.n))}, more than {where} ({format_bytes(limit)}); nothing was computed."
    )


def sample_data(key, cfg: LWRConfig) -> LWRData:
    r"""Sample ``x_i ~ N(0, I_d)``, ``β_j`` uniform on the unit sphere, ``y_i = Σ_j g_j(x_iᵀβ_j) + (τ/d)‖x_i‖² + ε_i``.

    Args:
      key: PRNG key (``vmap`` over keys gives independent data sets).
      cfg: :class:`LWRConfig`.

    Returns:
      :class:`LWRData` in ``cfg.dtype``; ``beta`` is ``(d,)`` for one teacher, ``(k, d)`` for ``k``.

    Raises:
      ValueError: a bad ``cfg``, or data larger than the memory available (``JAXCOMPARE_MEMORY_BUDGET`` when set),
        before anything is drawn.

    Example:
      >>> data = sample_data(jax.random.key(0), LWRConfig(n=100, d=50, h=80))
      >>> data.X.shape, data.y.shape, data.beta.shape
      ((100, 50), (100,), (50,))
    """
    _check_cfg(cfg)
    key = check_key(key)
    check_fits(cfg, kernels=False)
    dt = cfg.jnp_dtype
    kb, kx, ky, kxt, kyt = jax.random.split(key, 5)
    B = jax.random.normal(kb, (cfg.k, cfg.d), dt)
    B = B / jnp.linalg.norm(B, axis=1, keepdims=True)
    X = jax.random.normal(kx, (cfg.n, cfg.d), dt)
    Xt = jax.random.normal(kxt, (cfg.test_size, cfg.d), dt)
    beta = B[0] if isinstance(cfg.teacher, str) else B
    return LWRData(X=X, y=_labels(ky, cfg, X, B), beta=beta, X_test=Xt, y_test=_labels(kyt, cfg, Xt, B))


def init_params(key, cfg: LWRConfig) -> LWRParams:
    """``W (h, d)`` iid N(0, 1) and ``v (h,)`` iid uniform ±1 (so ``ν² = ‖v‖²/h = 1``).

    Example:
      >>> p = init_params(jax.random.key(0), LWRConfig(n=100, d=50, h=80))
      >>> p.W.shape, p.v.shape
      ((80, 50), (80,))
    """
    _check_cfg(cfg)
    key = check_key(key)
    kw, kv = jax.random.split(key)
    W = jax.random.normal(kw, (cfg.h, cfg.d), cfg.jnp_dtype)
    v = jax.random.rademacher(kv, (cfg.h,), cfg.jnp_dtype)
    return LWRParams(W=W, v=v, activation=cfg.activation)


def _check_cfg(cfg) -> None:
    if not isinstance(cfg, LWRConfig):
        raise TypeError(f"cfg must be an LWRConfig, got {type(cfg).__name__}.")


def _check_params(params, name: str = "params") -> LWRParams:
    if not isinstance(params, LWRParams):
        raise TypeError(f"{name} must be LWRParams (from init_params), got {type(params).__name__}.")
    check_choice(params.activation, f"{name}.activation", tuple(ACTIVATIONS))
    W = check_array(params.W, f"{name}.W", ndim=2)
    v = check_array(params.v, f"{name}.v", shape=(W.shape[0],))
    return LWRParams(W=W, v=v, activation=params.activation)


def _check_X(X, d: int, name: str = "X") -> jax.Array:
    return check_array(X, name, ndim=2, shape=(None, d))


def _check_model_data(params, data, cfg: LWRConfig):
    """Validate ``params`` and ``data`` against ``cfg``; returns ``(params, X, y, X_test, y_test, B (k, d))``."""
    params = _check_params(params)
    if params.W.shape != (cfg.h, cfg.d):
        raise ValueError(f"params.W must have shape (h, d) = ({cfg.h}, {cfg.d}) for this cfg, got {params.W.shape}.")
    if params.activation != cfg.activation:
        raise ValueError(f"params.activation is {params.activation!r} but cfg.activation is {cfg.activation!r}.")
    if not isinstance(data, LWRData):
        raise TypeError(f"data must be LWRData (from sample_data), got {type(data).__name__}.")
    X = _check_X(data.X, cfg.d, "data.X")
    if X.shape[0] != cfg.n:
        raise ValueError(f"data.X must have n = {cfg.n} rows for this cfg, got {X.shape[0]}.")
    y = check_array(data.y, "data.y", shape=(cfg.n,))
    Xt = _check_X(data.X_test, cfg.d, "data.X_test")
    yt = check_array(data.y_test, "data.y_test", shape=(Xt.shape[0],))
    beta = check_array(data.beta, "data.beta", ndim=(1, 2))
    B = beta[None, :] if beta.ndim == 1 else beta
    if B.shape[1] != cfg.d:
        raise ValueError(f"data.beta must have d = {cfg.d} columns, got shape {beta.shape}.")
    return params, X, y, Xt, yt, B


def _preact(W, X):
    """``U = X Wᵀ/√d`` of shape ``(n, h)`` (transpose of the spec's ``W X/√d``)."""
    d = W.shape[1]
    return jnp.matmul(X, W.T, precision=_HI) / jnp.sqrt(jnp.asarray(d, W.dtype))


def _apply(W, v, X, activation: str):
    phi, _ = ACTIVATIONS[activation]
    h = W.shape[0]
    return jnp.matmul(phi(_preact(W, X)), v, precision=_HI) / jnp.sqrt(jnp.asarray(h, W.dtype))


def apply(params: LWRParams, X) -> jax.Array:
    r"""Network output ``f(x) = vᵀ φ(W x/√d)/√h`` for each row ``x`` of ``X (n, d)``; returns ``(n,)``.

    Example:
      >>> cfg = LWRConfig(n=10, d=5, h=8)
      >>> apply(init_params(jax.random.key(0), cfg), jnp.ones((10, 5))).shape
      (10,)
    """
    params = _check_params(params)
    X = _check_X(X, params.W.shape[1])
    return _apply(params.W, params.v, X.astype(params.W.dtype), params.activation)


def _kernels(W, v, X, activation: str) -> Kernels:
    phi, dphi = get_activation(activation)
    h, d = W.shape
    dt = W.dtype
    U = _preact(W, X)
    F = phi(U)
    Fp = dphi(U) * v[None, :]
    G = jnp.matmul(X, X.T, precision=_HI) / jnp.asarray(d, dt)
    ck = jnp.matmul(F, F.T, precision=_HI) / jnp.asarray(h, dt)
    kw = G * jnp.matmul(Fp, Fp.T, precision=_HI) / jnp.asarray(h, dt)
    sig = jnp.matmul(W.T, W, precision=_HI) / jnp.asarray(h, dt)
    return Kernels(weights=sig, ck=ck, ntk=kw + ck, ntk_w=kw)


def kernels(params: LWRParams, X) -> Kernels:
    r"""The three matrices of the spec, with ``U = W Xᵀ/√d`` and ``G = X Xᵀ/d``:

    - ``weights = WᵀW/h`` ``(d, d)``;
    - ``ck = φ(U)ᵀφ(U)/h`` ``(n, n)``;
    - ``ntk_w = G ⊙ (φ'(U)ᵀ diag(v)² φ'(U)/h)`` (Jacobian Gram in W), ``ntk = ntk_w + ck`` (in (W, v)).

    Args:
      params: :class:`LWRParams`.
      X: ``(n, d)`` inputs, rows are samples.

    Returns:
      :class:`Kernels` (jit/vmap compatible; dtype of ``params.W``).

    Example:
      >>> cfg = LWRConfig(n=20, d=10, h=15)
      >>> K = kernels(init_params(jax.random.key(0), cfg), sample_data(jax.random.key(1), cfg).X)
      >>> K.weights.shape, K.ntk.shape
      ((10, 10), (20, 20))
    """
    params = _check_params(params)
    X = _check_X(X, params.W.shape[1])
    return _kernels(params.W, params.v, X.astype(params.W.dtype), params.activation)
