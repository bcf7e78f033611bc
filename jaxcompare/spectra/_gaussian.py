"""Gaussian constants of an activation by Gauss–Hermite quadrature."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from .._validation import check_int
from ._activations import NUMPY_ACTIVATIONS, get_activation

__all__ = ["GaussianConstants", "gaussian_constants"]

# NumPy's hermegauss weights underflow to 0 at order 371 and overflow to NaN from 372: 370 is the last order whose
# rule is exact (Σw = 1, Σw x² = 1, Σw x⁴ = 3 to 1e-12, checked for every order 2..370).
MAX_ORDER = 370


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GaussianConstants:
    """Moments of an activation under ``xi ~ N(0, 1)`` (Python floats).

    Attributes:
      mean: ``mu = E phi(xi)`` (0 for a centered activation).
      b: ``E phi'(xi)``.
      a: ``E phi'(xi)^2``.
      m2: ``E phi(xi)^2``.
    """

    mean: float
    b: float
    a: float
    m2: float


def gaussian_constants(activation: str | tuple[Callable, Callable] = "tanh", *, order: int = 121) -> GaussianConstants:
    r"""Gaussian constants ``b = E φ'(ξ)``, ``a = E φ'(ξ)²``, ``m₂ = E φ(ξ)²``, ``μ = E φ(ξ)``, ``ξ ~ N(0, 1)``.

    Uses probabilists' Gauss–Hermite quadrature,
    :math:`E f(\xi) \approx \sum_k w_k f(x_k) / \sqrt{2\pi}`, in float64 on the host (the constants are static).
    For tanh: b = 0.6057, a = 0.4644, m₂ = 0.3943 (shared/spec/lwr.md).

    Args:
      activation: a registered name (``"tanh"``, ``"erf"``, ``"sin"``, ``"relu"``) or a pair ``(phi, dphi)`` of
        vectorized callables.
      order: number of quadrature nodes in ``[2, 370]`` (exact for polynomials of degree ``2 order - 1``; beyond 370
        NumPy's Gauss–Hermite weights underflow/overflow, so larger orders are refused).

    Returns:
      :class:`GaussianConstants` with Python floats.

    Example:
      >>> c = gaussian_constants("tanh")
      >>> round(c.b, 4), round(c.a, 4), round(c.m2, 4)
      (0.6057, 0.4644, 0.3943)
    """
    order = check_int(order, "order", min=2)
    if order > MAX_ORDER:
        raise ValueError(
            f"order must be <= {MAX_ORDER}, got {order}: NumPy's Gauss–Hermite weights underflow to 0 (order 371) "
            "and overflow to NaN (order >= 372) beyond it; the default 121 is already exact to 1e-12 for smooth "
            "activations."
        )
    if isinstance(activation, str) and activation == "relu":  # kinked: quadrature converges slowly, use closed form
        return GaussianConstants(mean=float(1 / np.sqrt(2 * np.pi)), b=0.5, a=0.5, m2=0.5)
    if isinstance(activation, str):
        get_activation(activation)  # validates the name
        phi, dphi = NUMPY_ACTIVATIONS[activation]
    elif isinstance(activation, tuple) and len(activation) == 2 and all(callable(f) for f in activation):
        phi, dphi = activation
    else:
        raise TypeError(f"activation must be a name or a pair (phi, dphi) of callables, got {activation!r}.")
    x, w = np.polynomial.hermite_e.hermegauss(order)
    w = w / np.sqrt(2 * np.pi)
    f = np.asarray(phi(x), dtype=np.float64)
    g = np.asarray(dphi(x), dtype=np.float64)
    if f.shape != x.shape or g.shape != x.shape:
        raise ValueError("activation callables must be elementwise: phi(x) and dphi(x) must have the shape of x.")
    return GaussianConstants(mean=float(w @ f), b=float(w @ g), a=float(w @ g**2), m2=float(w @ f**2))
