"""Configuration of the linear-width two-layer model (static, hashable)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .._validation import check_choice, check_float, check_int
from ..spectra._activations import ACTIVATIONS

__all__ = ["LWRConfig", "TEACHERS"]

TEACHERS = {
    "softplus": jax.nn.softplus,
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "linear": lambda t: t,
    "square": lambda t: t * t - 1,  # second Hermite polynomial
}


@dataclasses.dataclass(frozen=True)
class LWRConfig:
    r"""Sizes and data model of the linear-width two-layer network (shared/spec/lwr.md).

    Model ``f(x) = vᵀ φ(W x/√d)/√h`` with ``W ∈ R^{h×d}``; data ``x ~ N(0, I_d)``,
    ``y = Σ_j g_j(xᵀβ_j) + (τ/d)‖x‖² + ε``, ``ε ~ N(0, σ_ε²)``; loss ``‖y − f(X)‖²/(2n)``.

    Attributes:
      n: training samples; d: input dimension; h: width (all ≥ 1).
      activation: ``"tanh"`` (default), ``"erf"``, ``"sin"`` (centered) or ``"relu"`` (breaks the assumptions).
      tau: weight of the ``‖x‖²/d`` term.
      noise_std: ``σ_ε ≥ 0``.
      teacher: link ``g*``: ``"softplus"``, ``"relu"``, ``"tanh"``, ``"linear"``, ``"square"`` (``t² − 1``), or a
        tuple of them for several planted directions (one ``β_j`` each; ``beta`` then has shape ``(k, d)``).
      train_v: also train the second layer (the theory trains W only).
      n_test: held-out samples for the test loss (default ``n``).
      dtype: ``"float32"`` (default) or ``"float64"`` (needs ``jax_enable_x64``).

    The config is hashable and passed as a static argument; ``LWRConfig(n=-1, ...)`` raises ``ValueError``.

    Example:
      >>> cfg = LWRConfig(n=200, d=100, h=150)
      >>> cfg.k
      1
    """

    n: int
    d: int
    h: int
    activation: str = "tanh"
    tau: float = 0.2
    noise_std: float = 0.3
    teacher: str | tuple[str, ...] = "softplus"
    train_v: bool = False
    n_test: int | None = None
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("n", "d", "h"):
            check_int(getattr(self, name), name, min=1)
        if self.n_test is not None:
            check_int(self.n_test, "n_test", min=1)
        check_choice(self.activation, "activation", tuple(ACTIVATIONS))
        check_float(self.tau, "tau")
        check_float(self.noise_std, "noise_std", low=0.0)
        teachers = (self.teacher,) if isinstance(self.teacher, str) else tuple(self.teacher)
        if len(teachers) == 0:
            raise ValueError("teacher must name at least one link function.")
        for t in teachers:
            check_choice(t, "teacher", tuple(TEACHERS))
        if not isinstance(self.teacher, str):
            object.__setattr__(self, "teacher", teachers)
        if not isinstance(self.train_v, bool):
            raise TypeError(f"train_v must be a bool, got {self.train_v!r}.")
        check_choice(self.dtype, "dtype", ("float32", "float64"))
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError('dtype="float64" needs jax.config.update("jax_enable_x64", True) first.')

    @property
    def teachers(self) -> tuple[str, ...]:
        return (self.teacher,) if isinstance(self.teacher, str) else self.teacher

    @property
    def k(self) -> int:
        """Number of planted directions."""
        return len(self.teachers)

    @property
    def test_size(self) -> int:
        return self.n if self.n_test is None else self.n_test

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)
