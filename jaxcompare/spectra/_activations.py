"""Activation functions of the linear-width model and their derivatives (private registry shared with ``lwr``).

Each entry is ``(phi, dphi)`` written with ``jax.numpy`` so that it works on arrays of any float dtype.
``tanh``, ``erf`` and ``sin`` are centered (``E phi(xi) = 0`` for ``xi ~ N(0, 1)``) as the theory assumes;
``relu`` is offered for comparison only (it is neither centered nor twice differentiable).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from .._validation import check_choice

__all__ = ["ACTIVATIONS", "NUMPY_ACTIVATIONS", "get_activation"]


def _tanh_prime(x):
    t = jnp.tanh(x)
    return 1 - t * t


def _erf_prime(x):
    return (2.0 / jnp.sqrt(jnp.pi)).astype(x.dtype) * jnp.exp(-x * x)


def _relu_prime(x):
    return (x > 0).astype(x.dtype)


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": (jnp.tanh, _tanh_prime),
    "erf": (jax.scipy.special.erf, _erf_prime),
    "sin": (jnp.sin, jnp.cos),
    "relu": (jax.nn.relu, _relu_prime),
}


# float64 host versions for quadrature (static constants)
NUMPY_ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "erf": (scipy.special.erf, lambda x: 2 / np.sqrt(np.pi) * np.exp(-x * x)),
    "sin": (np.sin, np.cos),
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(np.float64)),
}


def get_activation(name: str) -> tuple[Callable, Callable]:
    """``(phi, dphi)`` for a registered activation name; ``ValueError`` for an unknown one."""
    check_choice(name, "activation", tuple(ACTIVATIONS))
    return ACTIVATIONS[name]
