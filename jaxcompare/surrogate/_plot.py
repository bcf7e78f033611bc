"""Figure: a test image next to its most influential training images (matplotlib, imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._attribution import Attribution

__all__ = ["plot_attribution"]


def _import_pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "plot_attribution needs matplotlib: pip install 'jaxcompare[demo]' (or pip install matplotlib)."
        ) from e
    return plt


def _image(x: np.ndarray, image_shape: Sequence[int] | None) -> np.ndarray:
    if image_shape is not None:
        return x.reshape(tuple(image_shape))
    if x.ndim == 1:
        side = int(round(np.sqrt(x.size)))
        if side * side != x.size:
            raise ValueError(f"cannot show a flat input of size {x.size} as an image; pass image_shape=(H, W).")
        return x.reshape(side, side)
    return x


def plot_attribution(
    attribution: Attribution,
    x_test: Any,
    x_train: Any,
    *,
    index: int | Sequence[int] = 0,
    y_test: Any = None,
    y_train: Any = None,
    image_shape: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    cmap: str = "gray_r",
    figsize_per_image: float = 1.3,
):
    """Show test images (left column) and their top-k training images with their contributions ``A_c(x, x_i)``.

    Args:
      attribution: from :func:`attribute` (one class per test point, not ``classes="all"``).
      x_test, x_train: the inputs the kernel rows were computed on, ``(T, ...)`` and ``(M, ...)``; flat inputs of
        square size (8×8 digits: 64) are reshaped, otherwise pass ``image_shape`` (``(H, W)`` or ``(H, W, 3)``).
      index: a test-point index or a list of them (one figure row each).
      y_test, y_train: optional labels shown in titles.
      class_names: optional names for labels/classes.
      cmap: colormap for gray images.

    Returns:
      The matplotlib ``Figure``.

    Example:
      >>> x = jax.random.uniform(jax.random.key(0), (30, 16))   # 30 flat 4×4 "images"
      >>> y = jnp.argmax(x[:, :3], axis=1)                      # labels of 3 classes
      >>> x_train, y_train, x_test, y_test = x[:20], y[:20], x[20:], y[20:]
      >>> model = jc.fit_kglm(x_train @ x_train.T, y_train)     # a linear kernel on the pixels
      >>> top = jc.attribute(model, x_test @ x_train.T, k=3)
      >>> fig = jc.surrogate.plot_attribution(top, x_test, x_train, index=[0, 1], y_test=y_test, y_train=y_train)
      >>> type(fig).__name__, len(fig.axes)                     # 2 rows of 1 test + 3 training images
      ('Figure', 8)
      >>> import matplotlib.pyplot as plt
      >>> plt.close(fig)
    """
    if not isinstance(attribution, Attribution):
        raise TypeError(f"attribution must come from attribute(), got {type(attribution).__name__}.")
    idx = np.asarray(attribution.indices)
    if idx.ndim != 2:
        raise ValueError("plot_attribution shows one class per test point; call attribute() without classes='all'.")
    vals = np.asarray(attribution.values)
    classes = np.asarray(attribution.classes)
    xt = np.asarray(x_test)
    xr = np.asarray(x_train)
    if xt.shape[0] != idx.shape[0]:
        raise ValueError(f"x_test has {xt.shape[0]} points but the attribution covers {idx.shape[0]}.")
    rows = [int(index)] if np.ndim(index) == 0 else [int(i) for i in index]
    for r in rows:
        if not 0 <= r < xt.shape[0]:
            raise ValueError(f"index {r} is out of range for {xt.shape[0]} test points.")
    if idx.max() >= xr.shape[0]:
        raise ValueError(f"x_train has {xr.shape[0]} points but the attribution refers to index {idx.max()}.")
    name = (lambda c: str(class_names[int(c)])) if class_names is not None else (lambda c: str(int(c)))
    plt = _import_pyplot()
    k = idx.shape[1]
    size = (figsize_per_image * (k + 1), figsize_per_image * 1.25 * len(rows))
    fig, axes = plt.subplots(len(rows), k + 1, figsize=size, squeeze=False)
    for a, r in zip(axes, rows):
        a[0].imshow(_image(xt[r], image_shape), cmap=cmap)
        title = f"test {r}\nexplains {name(classes[r])}"
        if y_test is not None:
            title += f" (y={name(np.asarray(y_test)[r])})"
        a[0].set_title(title, fontsize=8)
        for j in range(k):
            i = int(idx[r, j])
            a[j + 1].imshow(_image(xr[i], image_shape), cmap=cmap)
            t = f"train {i}\nA={vals[r, j]:+.3g}"
            if y_train is not None:
                t += f" y={name(np.asarray(y_train)[i])}"
            a[j + 1].set_title(t, fontsize=7)
        for ax in a:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig
