"""MNIST-1D (Greydanus 2020) generated offline, and the three architectures it tells apart (MLP, CNN, GRU)."""

from __future__ import annotations

import random
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .._optional import optional_import
from .._validation import check_choice, check_float, check_int

__all__ = ["mnist1d_task", "MNIST1DTask", "make_mnist1d_model", "ARCHITECTURES", "PAPER_ACCURACY"]

#: architectures of :func:`make_mnist1d_model`
ARCHITECTURES = ("mlp", "cnn", "gru")

#: shortest signal the CNN takes: its first convolution (kernel 5, padding 1, stride 2) maps L to (L - 3) // 2 + 1
#: points, which is empty below L = 3; the next two (kernel 3, padding 1) keep a non-empty map non-empty
_CNN_MIN_LENGTH = 3

#: test accuracies of the dataset's paper (Greydanus 2020; the table of the mnist1d README, 4000 train / 1000 test)
PAPER_ACCURACY = {"logistic regression": 0.32, "mlp": 0.68, "cnn": 0.94, "gru": 0.91}


class MNIST1DTask(NamedTuple):
    """A train/test split of MNIST-1D: ``x`` are ``(n, 40)`` float32 signals, ``y`` int32 labels ``0..9``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list


def mnist1d_task(*, seed: int = 42, num_samples: int = 5000, train_split: float = 0.8) -> MNIST1DTask:
    """MNIST-1D, generated on this machine by the ``mnist1d`` package's template generator (no download).

    ``mnist1d.data.make_dataset`` passes the ten 12-point digit templates through random padding, dilation,
    scaling, translation, correlated and i.i.d. noise and shear, and resamples each to 40 points; the defaults
    (``num_samples=5000``, ``train_split=0.8``, ``seed=42``) are the published dataset's: 4000 training and 1000 test
    signals. The generator draws from NumPy's and Python's global random states (``mnist1d.utils.set_seed``); they
    are saved before and restored after, so calling this leaves them as they were.

    Args:
      seed: the generator's seed (``>= 0``).
      num_samples: signals in all, a multiple of 10 (``num_samples // 10`` per digit), at least 20.
      train_split: fraction used for training, in ``(0, 1)``.

    Returns:
      :class:`MNIST1DTask` ``(x_train, y_train, x_test, y_test, class_names)`` (unpacks as a tuple).

    Raises:
      ImportError: without the ``mnist1d`` package (``pip install 'jaxcompare[demo]'``).

    Example:
      >>> from jaxcompare.data import mnist1d_task
      >>> x_tr, y_tr, x_te, y_te, names = mnist1d_task(num_samples=200)
      >>> x_tr.shape, x_te.shape, x_tr.dtype.name, sorted(set(y_tr.tolist())) == list(range(10))
      ((160, 40), (40, 40), 'float32', True)

    References:
      S. Greydanus (2020), Scaling down deep learning (MNIST-1D), arXiv:2011.14439.
    """
    seed = check_int(seed, "seed", min=0, max=2**32 - 1)
    num_samples = check_int(num_samples, "num_samples", min=20)
    if num_samples % 10:
        raise ValueError(f"num_samples must be a multiple of 10 (the same count per digit), got {num_samples}.")
    split = float(check_float(train_split, "train_split", low=0.0, high=1.0, low_open=True, high_open=True))
    n_train = int(num_samples * split)
    if not 0 < n_train < num_samples:
        raise ValueError(f"train_split={split} leaves an empty train or test set of {num_samples} signals.")
    data = optional_import("mnist1d.data", purpose="mnist1d_task", pip="'jaxcompare[demo]' (or: pip install mnist1d)")
    args = data.get_dataset_args()
    args.seed, args.num_samples, args.train_split = seed, num_samples, split
    # the generator seeds NumPy's legacy global state (mnist1d.utils.set_seed): saved and restored around it
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        d = data.make_dataset(args)  # generation only; get_dataset (not called) is what may download
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    return MNIST1DTask(
        np.asarray(d["x"], np.float32),
        np.asarray(d["y"], np.int32),
        np.asarray(d["x_test"], np.float32),
        np.asarray(d["y_test"], np.int32),
        [str(i) for i in range(10)],
    )


def make_mnist1d_model(arch: str, n_classes: int = 10, *, width: int | None = None):
    """A small flax.linen classifier of ``(n, L)`` signals (``L = 40`` for MNIST-1D), returning ``(n, n_classes)``
    logits; the sizes follow the dataset's paper.

    * ``"mlp"``: ``(Dense(width), ReLU) × 2 → Dense(n_classes)``, ``width = 100`` (≈ 15 k parameters at L = 40).
    * ``"cnn"``: three 1-D convolutions of ``width = 25`` channels (kernel 5, 3, 3; stride 2; padding 1; ReLU), then
      ``Dense(n_classes)`` on the flattened ``(5, 25)`` map (≈ 5.5 k parameters at L = 40).
    * ``"gru"``: a GRU of ``width = 32`` units reads the signal one scalar at a time; ``Dense(n_classes)`` on its last
      state (≈ 3.6 k parameters).

    Each model checks, when called (at trace time, on static shapes), that its input is ``(n, L)`` with ``L >= 1``
    (``L >= 3`` for the CNN) and raises ``ValueError`` otherwise.

    Args:
      arch: ``"mlp"``, ``"cnn"`` or ``"gru"`` (:data:`ARCHITECTURES`).
      n_classes: number of outputs (``>= 2``).
      width: hidden units / channels (default per architecture, above).

    Returns:
      A ``flax.linen.Module`` (train it with :func:`train_ensemble`).

    Example:
      >>> from jaxcompare.data import make_mnist1d_model
      >>> x = jnp.zeros((3, 40))
      >>> [make_mnist1d_model(a).init(jax.random.key(0), x)["params"] is not None for a in ("mlp", "cnn", "gru")]
      [True, True, True]
      >>> m = make_mnist1d_model("cnn")
      >>> m.apply(m.init(jax.random.key(0), x), x).shape
      (3, 10)
    """
    check_choice(arch, "arch", ARCHITECTURES)
    n_classes = check_int(n_classes, "n_classes", min=2)
    width = {"mlp": 100, "cnn": 25, "gru": 32}[arch] if width is None else check_int(width, "width", min=1)
    nn = optional_import("flax.linen", purpose="make_mnist1d_model")

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            _check_signals(x, "mlp", 1)
            for _ in range(2):
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(n_classes)(x)

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            _check_signals(x, "cnn", _CNN_MIN_LENGTH)
            h = x[..., None]  # (n, L, 1 channel)
            for k in (5, 3, 3):
                h = nn.relu(nn.Conv(width, kernel_size=(k,), strides=(2,), padding=[(1, 1)])(h))
            return nn.Dense(n_classes)(h.reshape(h.shape[0], -1))

    class GRU(nn.Module):
        @nn.compact
        def __call__(self, x):
            _check_signals(x, "gru", 1)
            dtype = jnp.result_type(x.dtype, jnp.float32)  # the carry must keep the inputs' (promoted) dtype
            h = nn.RNN(nn.GRUCell(width, param_dtype=dtype))(x[..., None].astype(dtype))  # (n, L, width)
            return nn.Dense(n_classes)(h[:, -1])

    return {"mlp": MLP, "cnn": CNN, "gru": GRU}[arch]()


def _check_signals(x: ArrayLike, arch: str, min_length: int) -> None:
    """The models' input is ``(n, L)`` signals, ``L >= min_length`` (static shapes: runs at trace time)."""
    shape = tuple(jnp.shape(x))
    if len(shape) != 2 or shape[1] < min_length:
        need = "" if min_length == 1 else f" (the CNN's three stride-2 convolutions need L >= {min_length})"
        raise ValueError(
            f"make_mnist1d_model({arch!r}) takes signals of shape (n, L) with L >= {min_length}{need}, one scalar "
            f"per time step (MNIST-1D: L = 40); got input of shape {shape}."
        )
