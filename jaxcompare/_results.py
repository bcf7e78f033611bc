"""One result convention for the iterative solvers and fits of the package.

Every iterative solver or fit (:func:`jaxcompare.fit_kglm`, the exact alpha-hat solver behind
:func:`jaxcompare.ensemble_alpha_hat`, :func:`jaxcompare.lwr.train`, the LDA fits of :mod:`jaxcompare.embed`)
returns a result object with a ``result`` field: an ``int32`` array holding a :class:`Result` code (one code per
problem when the call is ``vmap``-ed). The code is computed inside the compiled program, so it exists under
``jit``/``vmap`` too, where nothing can be raised. Decode it with ``Result(int(res.result))`` or compare it with a
member (``res.result == Result.successful``).

``throw=`` has one default everywhere: ``throw=True`` (as optimistix). An eager call whose result is not
``successful`` raises (the exception type of each function is documented on it and kept from earlier versions:
``RuntimeError`` for ``fit_kglm`` and ``ensemble_alpha_hat``, ``FloatingPointError`` for ``lwr.train``,
``ValueError`` for LDA); ``throw=False`` returns the flagged result and warns with :class:`SolverWarning` (or its
subclass named on the function). Under ``jit``/``vmap`` the field is the only report, unless the call runs inside
:func:`jaxcompare.checked`, which turns a failed result of a ``throw=True`` call into an error. No solver reports a
failure by filling its output with NaN: the output holds the last valid iterate and ``result`` says what happened.

Example:
  >>> from jaxcompare._results import Result
  >>> Result(3).name, Result.diverged.message
  ('diverged', 'the iterates grew past their divergence bound')
"""

from __future__ import annotations

import enum
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._validation import is_concrete

__all__ = ["Result", "SolverWarning", "result_code", "worst_result", "report_result"]


class Result(enum.IntEnum):
    """Outcome of an iterative solver or fit (stored as ``int32`` in the result's ``result`` field).

    * ``successful`` (0): converged / finished without trouble.
    * ``max_steps_reached`` (1): stopped at the iteration cap before meeting its tolerance.
    * ``stalled`` (2): no further decrease representable in the dtype before meeting the tolerance.
    * ``diverged`` (3): the iterates grew past the function's documented divergence bound (finite but useless).
    * ``nonfinite`` (4): a loss, objective or iterate became NaN or infinite.
    * ``singular`` (5): a matrix the fit must factor is singular (degenerate data).
    """

    successful = 0
    max_steps_reached = 1
    stalled = 2
    diverged = 3
    nonfinite = 4
    singular = 5

    @property
    def message(self) -> str:
        """A short description of the outcome, for error messages."""
        return _MESSAGES[self]


_MESSAGES = {
    Result.successful: "successful",
    Result.max_steps_reached: "the iteration cap was reached before the tolerance",
    Result.stalled: "the iterates stopped improving (the dtype's resolution) before the tolerance",
    Result.diverged: "the iterates grew past their divergence bound",
    Result.nonfinite: "a value became NaN or infinite",
    Result.singular: "a matrix to factor is singular (degenerate data)",
}


class SolverWarning(RuntimeWarning):
    """A solver or fit called with ``throw=False`` returned a result that is not ``successful``."""


def result_code(code: Result) -> jax.Array:
    """``code`` as the ``int32`` scalar stored in result fields (usable inside ``jit``)."""
    return jnp.asarray(int(code), jnp.int32)


def worst_result(*codes: jax.Array) -> jax.Array:
    """Elementwise the most severe of several result codes (the largest value; ``successful`` is 0)."""
    out = codes[0]
    for c in codes[1:]:
        out = jnp.maximum(out, c)
    return out


def report_result(
    result: Any,
    throw: bool,
    message: Any,
    *,
    error: type = RuntimeError,
    warning: type = SolverWarning,
    stacklevel: int = 3,
) -> None:
    """Raise ``error`` (``throw=True``) or warn with ``warning`` when a concrete ``result`` is not successful.

    ``message`` is a string or a callable ``(Result) -> str`` given the worst outcome; several codes (``vmap``)
    report the worst one and how many failed. Traced results are left to :func:`jaxcompare.checked`.
    """
    if not is_concrete(result):
        return
    codes = np.atleast_1d(np.asarray(result))
    bad = codes != int(Result.successful)
    if not np.any(bad):
        return
    worst = Result(int(codes.max()))
    text = message(worst) if callable(message) else str(message)
    if codes.size > 1:
        text = f"{int(bad.sum())} of {codes.size} problems failed; worst: {text}"
    text = f"{text} [result={worst.name}]"
    if throw:
        raise error(text)
    warnings.warn(text, warning, stacklevel=stacklevel)
