"""scikit-learn's bundled handwritten digits as a ready-made classification task (no download)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._optional import optional_import
from .._validation import check_choice, check_float, check_int

__all__ = ["digits_task", "DigitsTask"]


class DigitsTask(NamedTuple):
    """A train/test split of the digits: ``x`` are ``(n, 64)`` float32 pixels in ``[0, 1]``, ``y`` int32 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list


def digits_task(kind: str, *, seed: int = 0, test_fraction: float = 0.4) -> DigitsTask:
    """The 1797 8×8 digits of scikit-learn (bundled with it, no download), split at random into train and test.

    ``kind="binary"``: even (label 0) vs odd (label 1) digits; ``kind="multiclass"``: the 10 digits. Pixels are
    scaled from ``0..16`` to ``[0, 1]``. The split is a permutation drawn by ``numpy.random.default_rng(seed)``;
    its first ``round(test_fraction * 1797)`` points are the test set.

    Args:
      kind: ``"binary"`` or ``"multiclass"``.
      seed: seed of the split (a NumPy seed: the split is host-side data preparation, not a JAX computation).
      test_fraction: fraction of points held out, in ``(0, 1)``.

    Returns:
      :class:`DigitsTask` ``(x_train, y_train, x_test, y_test, class_names)`` (unpacks as a tuple).

    Example:
      >>> from jaxcompare.data import digits_task
      >>> x_tr, y_tr, x_te, y_te, names = digits_task("binary")
      >>> x_tr.shape, x_te.shape, names
      ((1078, 64), (719, 64), ['even', 'odd'])

    References:
      E. Alpaydin, C. Kaynak (1998), Optical Recognition of Handwritten Digits, UCI Machine Learning Repository.
    """
    check_choice(kind, "kind", ("binary", "multiclass"))
    seed = check_int(seed, "seed", min=0)
    test_fraction = float(check_float(test_fraction, "test_fraction", low=0.0, high=1.0, low_open=True, high_open=True))
    load_digits = optional_import("sklearn.datasets", purpose="the digits task").load_digits
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    names = [str(i) for i in range(10)]
    if kind == "binary":
        y = y % 2
        names = ["even", "odd"]
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    if not 0 < n_test < len(x):
        raise ValueError(f"test_fraction={test_fraction} leaves an empty train or test set of the {len(x)} digits.")
    te, tr = perm[:n_test], perm[n_test:]
    return DigitsTask(x[tr], y[tr], x[te], y[te], names)
