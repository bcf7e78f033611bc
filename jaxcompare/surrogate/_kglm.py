"""Kernel generalized linear model (kGLM): ``logits(x) = W κ(x, X_train) + b``, fitted by L-BFGS (spec/surrogate.md).

The features of a point are its kernel row against the ``M`` training ("anchor") points, so a kGLM is an
L2-regularized logistic regression on kernel rows. Two losses:

* ``"softmax"``: multinomial logistic regression, ``C`` logits coupled through the softmax;
* ``"ovr"``: one-vs-rest, ``C`` independent binary logistic regressions, the published protocol
  (scikit-learn ``SGDClassifier(loss="log_loss")``); with ``C = 2`` a single binary problem, as scikit-learn.
"""

from __future__ import annotations

import dataclasses
import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checked import traced_finite, traced_labels, traced_result
from .._precision import HIGHEST as _HIGHEST
from .._results import Result, SolverWarning
from .._validation import (
    at_least_float32,
    check_array,
    check_choice,
    check_flag,
    check_float,
    check_int,
    check_labels,
    device_reduce,
    is_concrete,
    spans_processes,
)
from ._solver import minimize_lbfgs

__all__ = ["KGLM", "fit_kglm", "kglm_logits", "kglm_proba", "KGLMConvergenceWarning"]

_LOSSES = ("softmax", "ovr")


class KGLMConvergenceWarning(SolverWarning):
    """The kGLM solver stopped before reaching ``tol``: at ``max_iter``, stalled at the dtype's resolution, or on a
    non-finite objective (a :class:`jaxcompare.SolverWarning`, hence a ``RuntimeWarning``)."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KGLM:
    """A fitted kernel GLM (immutable pytree).

    Attributes:
      W: ``(C, M)`` weights on the kernel rows, in the units of the kernel passed to :func:`fit_kglm` (a
        standardization scale is already folded in), so ``logits = K W^T + b`` for ``K (T, M)``.
      b: ``(C,)`` intercepts (not penalized; for ``"softmax"`` centered to sum 0, which leaves the softmax unchanged).
      scale: the kernel was divided by ``scale`` during the fit (1 unless ``standardize=True``).
      l2: the L2 strength of the objective (see :func:`fit_kglm`).
      class_weight: ``(C,)`` class weights used (ones when unweighted).
      converged: ``max |∇| <= tol`` reached (for every class with ``"ovr"``).
      n_iter: L-BFGS iterations.
      grad_norm: final ``max |∇|`` of the objective.
      objective: final objective value (for ``"ovr"`` the sum of the ``C`` binary objectives).
      loss: ``"softmax"`` or ``"ovr"`` (static).
      result: int32 :class:`jaxcompare.Result` code (the worst over the one-vs-rest problems): ``successful``
        (``converged``), ``max_steps_reached``, ``stalled`` (no decrease representable in the dtype) or
        ``nonfinite`` (objective or weights not finite).
    """

    W: jax.Array
    b: jax.Array
    scale: jax.Array
    l2: jax.Array
    class_weight: jax.Array
    converged: jax.Array
    n_iter: jax.Array
    grad_norm: jax.Array
    objective: jax.Array
    loss: str = dataclasses.field(default="softmax", metadata=dict(static=True))
    result: jax.Array | None = None

    @property
    def n_classes(self) -> int:
        return int(self.W.shape[-2])

    @property
    def n_features(self) -> int:
        """Number of training (anchor) points ``M``: the width of the kernel rows the model takes."""
        return int(self.W.shape[-1])


# ----------------------------------------------------------------------------------------------------------------
# objectives (Wstd lives in the units of K / scale; inv_scale = 1 / scale)


def _softmax_objective(X, K, Y, omega, l2, inv_scale):
    """One problem: ``X (1, C·(M+1))`` holds ``[W | b]`` row-major; returns ``(1,)``."""
    N, M = K.shape
    C = Y.shape[1]
    Wb = X.reshape(C, M + 1)
    W, b = Wb[:, :M], Wb[:, M]
    Z = jnp.matmul(K, W.T, precision=_HIGHEST) * inv_scale + b[None, :]
    nll = -jnp.sum(Y * jax.nn.log_softmax(Z, axis=1), axis=1)
    return (jnp.sum(omega * nll) / N + 0.5 * l2 * jnp.sum(W * W))[None]


def _ovr_objective(X, K, T, omega, l2, inv_scale):
    """``B`` binary problems: row ``c`` of ``X (B, M+1)`` is ``[w_c | b_c]``, ``T (N, B)`` the ±1 targets; ``(B,)``."""
    N, M = K.shape
    W, b = X[:, :M], X[:, M]
    Z = jnp.matmul(K, W.T, precision=_HIGHEST) * inv_scale + b[None, :]
    return jnp.sum(omega * jax.nn.softplus(-T * Z), axis=0) / N + 0.5 * l2 * jnp.sum(W * W, axis=1)


def _class_mass(y, sample_weight, *, n_classes):
    return jnp.zeros((n_classes,), sample_weight.dtype).at[y].add(sample_weight)


def _balanced_weights(y, n_classes, sample_weight):
    """``Σ_i s_i / (C · Σ_{y_i = c} s_i)``: scikit-learn's ``compute_class_weight("balanced", ...,
    sample_weight=s)`` (with unit weights ``N / (C · n_c)``)."""
    counts = _class_mass(y, sample_weight, n_classes=n_classes)
    return jnp.sum(sample_weight) / (n_classes * counts)


@partial(jax.jit, static_argnames=("loss", "n_classes", "memory_size"))
def _fit(K, y, sample_weight, cw, l2, tol, max_iter, standardize, *, loss, n_classes, memory_size):
    dtype = K.dtype
    N, M = K.shape
    C = n_classes
    scale = jnp.where(standardize, jnp.std(K), jnp.ones((), dtype))
    inv_scale = 1.0 / scale
    l2 = jnp.asarray(l2, dtype)

    if loss == "softmax":
        Y = jax.nn.one_hot(y, C, dtype=dtype)
        fun = partial(_softmax_objective, K=K, Y=Y, omega=sample_weight * cw[y], l2=l2, inv_scale=inv_scale)
        rows = C
    elif C == 2:  # binary: one problem, positive class 1, weights cw[y] (scikit-learn's binary SGDClassifier)
        T = jnp.where(y == 1, 1.0, -1.0).astype(dtype)[:, None]
        omega = (sample_weight * cw[y])[:, None]
        fun = partial(_ovr_objective, K=K, T=T, omega=omega, l2=l2, inv_scale=inv_scale)
        rows = 1
    else:
        # one-vs-rest: class c positive with weight cw[c], the rest weight 1 (scikit-learn's OvR SGDClassifier).
        # The C binary problems are solved side by side (one L-BFGS each, one kernel-matrix product per step).
        pos = y[:, None] == jnp.arange(C)[None, :]
        T = jnp.where(pos, 1.0, -1.0).astype(dtype)
        omega = sample_weight[:, None] * jnp.where(pos, cw[None, :], jnp.ones((), dtype))
        fun = partial(_ovr_objective, K=K, T=T, omega=omega, l2=l2, inv_scale=inv_scale)
        rows = C

    res = minimize_lbfgs(
        fun,
        jnp.zeros((1, rows * (M + 1)) if loss == "softmax" else (rows, M + 1), dtype),
        max_iter=max_iter,
        tol=jnp.asarray(tol, dtype),
        memory_size=memory_size,
    )
    Wb = res.x.reshape(rows, M + 1)
    Wstd, b = Wb[:, :M], Wb[:, M]
    if loss == "softmax":
        b = b - jnp.mean(b)
    elif C == 2:  # softmax([-m/2, m/2])[1] = sigmoid(m): the two-class logits reproduce the binary probabilities
        Wstd = jnp.concatenate([-0.5 * Wstd, 0.5 * Wstd])
        b = jnp.concatenate([-0.5 * b, 0.5 * b])
    value, gnorm, n_iter = jnp.sum(res.value), jnp.max(res.grad_norm), jnp.max(res.n_iter)
    finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(Wstd))
    converged = (gnorm <= tol) & finite
    result = jnp.where(finite, jnp.max(res.result), int(Result.nonfinite)).astype(jnp.int32)
    return KGLM(
        W=Wstd * inv_scale,
        b=b,
        scale=scale,
        l2=l2,
        class_weight=cw,
        converged=converged,
        n_iter=n_iter.astype(jnp.int32),
        grad_norm=gnorm,
        objective=value,
        loss=loss,
        result=result,
    )


def fit_kglm(
    kernel_train_train: Any,
    labels: Any,
    *,
    loss: str = "softmax",
    l2: Any = 1e-4,
    n_classes: int | None = None,
    class_weight: Any = None,
    sample_weight: Any = None,
    standardize: bool = False,
    tol: Any = None,
    max_iter: int = 1000,
    memory_size: int = 20,
    throw: bool = True,
) -> KGLM:
    r"""Fit a kernel GLM ``logits(x) = W κ(x, X_train) + b`` on a training kernel, deterministically.

    Objective (``N`` fitting points, kernel rows ``k_i = K[i, :] / s`` with ``s`` the standardization scale):

    * ``"softmax"``: ``(1/N) Σ_i ω_i · (-log softmax(W k_i + b)_{y_i}) + (l2/2) ||W||_F²``;
    * ``"ovr"``: for every class ``c`` independently,
      ``(1/N) Σ_i ω_ic · log(1 + exp(-t_ic (w_c·k_i + b_c))) + (l2/2) ||w_c||²`` with ``t_ic = ±1``
      (``+1`` iff ``y_i = c``); with two classes a single binary problem (class 1 positive) whose margin ``m``
      becomes the logits ``(-m/2, m/2)`` (so ``softmax`` gives the binary probabilities).

    Intercepts are not penalized. Weights: ``ω_i = sample_weight_i · class_weight[y_i]`` (softmax, binary);
    for one-vs-rest with ``C > 2`` the positives of class ``c`` get ``class_weight[c]`` and the rest ``1``, as
    scikit-learn's ``SGDClassifier``. ``class_weight="balanced"`` is ``N / (C · n_c)``, counted with the sample
    weights when they are given (``Σ_i s_i / (C · Σ_{y_i = c} s_i)``, scikit-learn's ``compute_class_weight``).

    Relation to scikit-learn: ``SGDClassifier(loss="log_loss", penalty="l2", alpha=a)`` targets this objective
    with ``l2 = a`` (stochastically, stopping short of the optimum). The published protocol is
    ``loss="ovr", l2=1e-4, class_weight="balanced"``, with ``standardize=True`` for trNTK⁰.
    ``LogisticRegression(C=c)`` minimizes ``c Σ_i ω_i ℓ_i + ½||W||²``: the same optimum with ``l2 = 1 / (c · N)``
    (multinomial for ``"softmax"``, ``OneVsRestClassifier`` for ``"ovr"``).

    Solver: L-BFGS (history ``memory_size``, backtracking Armijo line search from the unit step; the ``C``
    one-vs-rest problems run side by side, each with its own history) from zero in a ``lax.while_loop`` until the
    max-abs gradient of the objective is ``<= tol`` (scikit-learn's ``tol`` criterion for ``lbfgs``). No randomness:
    the same inputs give the same model. Cost per iteration: about two kernel products, ``O(N · M · C)``; memory:
    the kernel plus ``O(memory_size · C · M + N · C)`` (no other ``N × M`` array is formed).

    Args:
      kernel_train_train: ``(N, M)`` kernel between the fitting points and the training (anchor) points —
        usually the square train×train kernel. Finite; float32 or float64 (kept); float16/bfloat16 kernels are
        fitted in float32 (their objective cannot resolve a gradient of ``tol``), and the model is float32.
      labels: ``(N,)`` integer labels in ``[0, n_classes)`` (encode other labels first, e.g.
        ``np.unique(names, return_inverse=True)[1]``).
      loss: ``"softmax"`` or ``"ovr"``.
      l2: L2 strength (``> 0``); may be traced (e.g. ``vmap`` over a grid).
      n_classes: number of classes ``C`` (default ``max(labels) + 1``; required under ``jit``).
      class_weight: None (all 1), ``"balanced"`` or ``(C,)`` positive weights.
      sample_weight: None or ``(N,)`` non-negative weights.
      standardize: divide the kernel by the standard deviation of its entries before fitting (the published
        treatment of the unnormalized trNTK⁰); the scale is folded into ``W``, so predictions use the raw kernel.
      tol: gradient tolerance (max-abs); default ``1e-5`` for float64 kernels and ``1e-4`` (scikit-learn's default)
        for float32, whose objective cannot resolve smaller gradients on ill-conditioned kernels.
      max_iter: iteration cap. memory_size: L-BFGS history length.
      throw: raise ``RuntimeError`` when the fit did not converge (``result`` not ``successful``; the package-wide
        default, :class:`jaxcompare.Result`); ``False`` warns with :class:`KGLMConvergenceWarning` and returns the
        flagged model (``converged=False``, ``result``). Under ``jit``/``vmap`` the fields are the report (and
        :func:`jaxcompare.checked` turns a failed ``throw=True`` fit into an error).

    Returns:
      :class:`KGLM` with ``W (C, M)``, ``b (C,)`` and the convergence report (``converged``, ``result``, ...).

    Raises:
      ValueError: bad shapes, NaN/inf kernel or weights, labels outside ``[0, n_classes)`` (under ``jit`` these
        value checks run inside :func:`jaxcompare.checked` only; otherwise out-of-range labels would silently fit
        a wrong model).
      RuntimeError: ``throw=True`` and the solver did not converge.

    Example:
      >>> F = jax.random.normal(jax.random.key(0), (30, 5))     # 30 points, 5 random features
      >>> K = F @ F.T              # any kernel, e.g. jc.trace_ntk(apply_fn)(params, x) of a network
      >>> y = jnp.argmax(F[:, :3], axis=1)                      # labels of 3 classes
      >>> K_tr, y_train, K_te = K[:20, :20], y[:20], K[20:, :20]  # 20 training and 10 test points
      >>> model = jc.fit_kglm(K_tr, y_train)                    # softmax, l2 = 1e-4
      >>> model.W.shape, model.b.shape, bool(model.converged)
      ((3, 20), (3,), True)
      >>> logits = jc.kglm_logits(model, K_te)                  # (10, 3)
      >>> round(float(jnp.mean(jnp.argmax(logits, axis=1) == y[20:])), 3)   # test accuracy
      0.9
    """
    loss = check_choice(loss, "loss", _LOSSES)
    throw = check_flag(throw, "throw")
    K = at_least_float32(check_array(kernel_train_train, "kernel_train_train", ndim=2))
    traced_finite(K, "kernel_train_train")
    N, M = K.shape
    if n_classes is None:
        if not is_concrete(labels):
            raise ValueError("n_classes is required when labels are traced (under jit/vmap).")
        y0 = check_labels(labels, "labels", length=N)
        n_classes = int(_host(jnp.max, y0)) + 1
        if n_classes < 2:
            raise ValueError(
                "labels hold a single class (0); a classifier needs at least 2 classes "
                "(pass n_classes= if the others exist but are absent here)."
            )
    C = check_int(n_classes, "n_classes", min=2)
    traced_labels(labels, "labels", C)
    y = check_labels(labels, "labels", C, length=N)
    l2 = check_float(l2, "l2", low=0.0, low_open=True)
    if tol is None:
        tol = 1e-5 if jnp.finfo(K.dtype).bits >= 64 else 1e-4
    tol = check_float(tol, "tol", low=0.0)
    max_iter = check_int(max_iter, "max_iter", min=1)
    memory_size = check_int(memory_size, "memory_size", min=1)
    if not isinstance(standardize, (bool, np.bool_)):
        raise TypeError(f"standardize must be True or False, got {standardize!r}.")
    dtype = K.dtype

    if sample_weight is None:
        sw = jnp.ones((N,), dtype)
    else:
        sw = check_array(sample_weight, "sample_weight", shape=(N,)).astype(dtype)
        traced_finite(sw, "sample_weight")
        if is_concrete(sw) and (_host(jnp.min, sw) < 0 or not _host(jnp.max, sw) > 0):
            raise ValueError("sample_weight must be non-negative with at least one positive entry.")

    balanced = isinstance(class_weight, str)
    if balanced:
        check_choice(class_weight, "class_weight", ("balanced",))
        if is_concrete(y) and is_concrete(sw):
            counts = _host(partial(_class_mass, n_classes=C), y, sw)
            if np.any(counts == 0):
                what = "training points" if sample_weight is None else "training points of positive sample_weight"
                raise ValueError(
                    f"class_weight='balanced' needs every class present, but classes {np.flatnonzero(counts == 0)} "
                    f"have no {what} (n_classes={C})."
                )
        cw = jnp.ones((C,), dtype)
    elif class_weight is None:
        cw = jnp.ones((C,), dtype)
    else:
        cw = check_array(class_weight, "class_weight", shape=(C,)).astype(dtype)
        traced_finite(cw, "class_weight")
        if is_concrete(cw) and _host(jnp.min, cw) <= 0:
            raise ValueError("class_weight entries must be positive.")

    if standardize and is_concrete(K) and float(_host(jnp.std, K)) == 0.0:
        raise ValueError("standardize=True needs a non-constant kernel (its standard deviation is 0).")

    if balanced:
        cw = _balanced_weights(y, C, sw)
    model = _fit(K, y, sw, cw, l2, tol, max_iter, bool(standardize), loss=loss, n_classes=C, memory_size=memory_size)
    traced_result(model.result, throw, "fit_kglm")
    if is_concrete(model.result) and np.any(np.asarray(model.result) != int(Result.successful)):
        msg = (
            f"fit_kglm did not converge: max |gradient| = {float(model.grad_norm):.3g} > tol = {float(tol):.3g} "
            f"after {int(model.n_iter)} iterations (max_iter={max_iter}). Raise max_iter, loosen tol, or "
            f"increase l2 (ill-conditioned kernel)."
        )
        if int(model.n_iter) < max_iter:
            msg = (
                f"fit_kglm stalled: the objective stopped decreasing at max |gradient| = "
                f"{float(model.grad_norm):.3g} > tol = {float(tol):.3g} after {int(model.n_iter)} iterations "
                f"(the resolution of {K.dtype}); loosen tol"
                + (" (or fit in float64)." if jnp.finfo(K.dtype).bits < 64 else ".")
            )
        if not np.isfinite(float(model.objective)):
            msg = "fit_kglm diverged: the objective is not finite (check the kernel scale; try standardize=True)."
        msg = f"{msg} [result={Result(int(model.result)).name}]"
        if throw:
            raise RuntimeError(msg)
        warnings.warn(msg, KGLMConvergenceWarning, stacklevel=2)
    return model


def _host(fn: Any, x: jax.Array, *more: jax.Array) -> np.ndarray:
    """``fn(x, *more)`` (a small reduction) as NumPy; computed on the devices for arrays spanning other processes."""
    if spans_processes(x) or any(spans_processes(m) for m in more):
        return device_reduce(fn, x, *more)
    return np.asarray(fn(x, *more))


def _check_model(model: Any) -> KGLM:
    if not isinstance(model, KGLM):
        raise TypeError(f"model must be a KGLM returned by fit_kglm, got {type(model).__name__}.")
    return model


def _check_kernel_rows(model: KGLM, kernel: Any, name: str = "kernel_test_train") -> jax.Array:
    K = check_array(kernel, name, ndim=2)
    if K.shape[1] != model.n_features:
        raise ValueError(
            f"{name} must have one column per training point of the model ({model.n_features}), got shape "
            f"{tuple(K.shape)}; pass κ(x_test, x_train) with the training points in the order used to fit."
        )
    return K


@jax.jit
def _logits(W, b, K):
    return jnp.matmul(K, W.T, precision=_HIGHEST) + b[None, :]


def kglm_logits(model: KGLM, kernel_test_train: Any) -> jax.Array:
    """kGLM logits ``K W^T + b`` (``(T, C)``) for the kernel rows ``K = κ(x_test, X_train)`` (``(T, M)``).

    For ``"ovr"`` models these are the ``C`` binary margins (scikit-learn's ``decision_function``).

    Example:
      >>> F = jax.random.normal(jax.random.key(0), (30, 5))
      >>> K, y = F @ F.T, jnp.argmax(F[:, :3], axis=1)          # a linear kernel, 3 classes
      >>> model = jc.fit_kglm(K[:20, :20], y[:20])              # M = 20 training points
      >>> K_test_train = K[20:, :20]                            # T = 10 test points
      >>> jc.kglm_logits(model, K_test_train).shape             # (T, C)
      (10, 3)
    """
    model = _check_model(model)
    K = _check_kernel_rows(model, kernel_test_train)
    traced_finite(K, "kernel_test_train")
    return _logits(model.W, model.b, K)


def kglm_proba(model: KGLM, kernel_test_train: Any) -> jax.Array:
    """Class probabilities ``(T, C)``: the softmax of the logits, or for ``"ovr"`` with ``C > 2`` the normalized
    one-vs-rest sigmoids ``σ(m_c) / Σ_c' σ(m_c')`` (scikit-learn's ``SGDClassifier.predict_proba``).

    Example:
      >>> F = jax.random.normal(jax.random.key(0), (30, 5))
      >>> K, y = F @ F.T, jnp.argmax(F[:, :3], axis=1)          # a linear kernel, 3 classes
      >>> model = jc.fit_kglm(K[:20, :20], y[:20])
      >>> p = jc.kglm_proba(model, K[20:, :20])                 # (10, 3), rows sum to 1
      >>> p.shape, bool(jnp.allclose(p.sum(axis=1), 1.0))
      ((10, 3), True)
    """
    logits = kglm_logits(model, kernel_test_train)
    if model.loss == "ovr" and model.n_classes > 2:
        p = jax.nn.sigmoid(logits)
        return p / jnp.sum(p, axis=1, keepdims=True)
    return jax.nn.softmax(logits, axis=1)
