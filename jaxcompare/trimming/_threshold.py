"""Acceptance thresholds for the two-sample Kolmogorov–Smirnov distance."""

from __future__ import annotations

import math

from .._validation import check_choice, check_int, check_probability

__all__ = ["ks_threshold"]

_METHODS = ("dkw", "asymptotic")


def ks_threshold(n: int, m: int, level: float = 0.01, method: str = "dkw") -> float:
    r"""KS acceptance threshold ``delta`` for samples of sizes ``n`` and ``m`` at error level ``level``.

    * ``method="dkw"`` (default, the published protocol): the two-sample Dvoretzky–Kiefer–Wolfowitz bound of
      Wei & Dudley (2012) for equal sizes, ``delta_n = sqrt(ln(2/level) / n) + 1/n``
      (``n = 4000``, ``level = 0.01`` gives 0.036645). For unequal sizes ``n`` is replaced by the effective size
      ``n_eff = 2 n m / (n + m)`` (equal to ``n`` when ``m = n``), the size at which the asymptotic two-sample
      tail ``2 exp(-2 t^2 n m / (n + m))`` equals ``2 exp(-n_eff t^2)``. It is a finite-sample bound for equal sizes
      and slightly conservative; for unequal sizes it is a heuristic of the same form.
    * ``method="asymptotic"``: the Kolmogorov limit, ``c(level) * sqrt((n + m) / (n m))`` with ``c`` the upper
      ``level`` quantile of the Kolmogorov distribution (``c(0.05) = 1.358``, ``c(0.01) = 1.628``). Smaller than the
      DKW value, exact only as ``n, m -> inf``.

    In the ensemble protocol the reference pools several models' scores on the *same* test points, so its
    effective size is the number of test points, not the pooled count: use ``ks_threshold(n, n)`` there.

    Args:
      n: size of the first sample (``>= 1``).
      m: size of the second sample (``>= 1``).
      level: error level ``epsilon`` in ``(0, 1)``.
      method: ``"dkw"`` or ``"asymptotic"``.

    Returns:
      ``delta`` as a Python float (a static constant usable inside ``jit``/``vmap``).

    Example:
      >>> round(ks_threshold(4000, 4000, level=0.01), 6)
      0.036645
    """
    n = check_int(n, "n", min=1)
    m = check_int(m, "m", min=1)
    check_probability(level, "level")
    check_choice(method, "method", _METHODS)
    level = float(level)
    if method == "dkw":
        n_eff = 2.0 * n * m / (n + m)
        return math.sqrt(math.log(2.0 / level) / n_eff) + 1.0 / n_eff
    from scipy.special import kolmogi

    return float(kolmogi(level)) * math.sqrt((n + m) / (n * m))
