"""Ensembles of small flax MLPs trained with optax, vmapped over models (used by the main job and the notebooks).

A *recipe* is how a model is trained (learning rate, steps, label noise); models of one recipe differ only in their
key (initialization, minibatch order, which labels are flipped). The main job asks whether α̂ can tell recipes apart.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .._optional import optional_import
from .._validation import check_array, check_float, check_int, check_key, check_labels

__all__ = ["Recipe", "RECIPES", "make_mlp", "mlp_feature_fns", "train_ensemble"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one model is trained: Adam with step ``lr`` for ``steps`` minibatches of ``batch_size`` points, on labels
    of which a fraction ``label_noise`` is replaced by a uniformly drawn other class."""

    name: str
    lr: float = 3e-3
    steps: int = 600
    batch_size: int = 64
    label_noise: float = 0.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Recipe.name must be a non-empty string, got {self.name!r}.")
        check_float(self.lr, "Recipe.lr", low=0.0, low_open=True)
        check_int(self.steps, "Recipe.steps", min=1)
        check_int(self.batch_size, "Recipe.batch_size", min=1)
        check_float(self.label_noise, "Recipe.label_noise", low=0.0, high=1.0)


#: The standard recipe and three perturbed ones (the main job's candidates).
RECIPES = {
    "standard": Recipe("standard"),
    "label noise 20%": Recipe("label noise 20%", label_noise=0.2),
    "under-trained": Recipe("under-trained", steps=40),
    "large lr": Recipe("large lr", lr=3e-2),
}


def make_mlp(n_classes: int, width: int = 64, depth: int = 2):
    """A flax.linen MLP ``x → (Dense(width), tanh) × depth → Dense(n_classes)`` (logits).

    Hidden activations are sown into the ``"intermediates"`` collection (free unless requested), which
    :func:`mlp_feature_fns` uses for the conjugate and embedding kernels.

    Args:
      n_classes: number of outputs (≥ 2).
      width: hidden width.
      depth: number of hidden layers (≥ 1).

    Returns:
      A ``flax.linen.Module``.

    Example:
      >>> from jaxcompare.data import make_mlp
      >>> module = make_mlp(3, width=8)
      >>> params = module.init(jax.random.key(0), jnp.zeros((1, 5)))["params"]
      >>> module.apply({"params": params}, jnp.ones((4, 5))).shape
      (4, 3)
    """
    n_classes = check_int(n_classes, "n_classes", min=2)
    width = check_int(width, "width", min=1)
    depth = check_int(depth, "depth", min=1)
    return _mlp_class()(n_classes, width, depth)


@functools.cache
def _mlp_class():
    """The flax class of :func:`make_mlp`'s modules, defined once (flax imported on first use) so that
    :func:`mlp_feature_fns` can recognise them."""
    nn = optional_import("flax.linen", purpose="make_mlp")

    class MLP(nn.Module):
        n_classes: int
        width: int = 64
        depth: int = 2

        @nn.compact
        def __call__(self, x):
            for _ in range(self.depth):
                x = jnp.tanh(nn.Dense(self.width)(x))
                self.sow("intermediates", "hidden", x)
            return nn.Dense(self.n_classes)(x)

    return MLP


def _is_flax_module(module: Any) -> bool:
    """True for an instance of ``flax.linen.Module`` (flax is imported whenever such an instance exists)."""
    nn = sys.modules.get("flax.linen")
    return nn is not None and isinstance(module, nn.Module)


def _is_mlp(module: Any) -> bool:
    return _is_flax_module(module) and isinstance(module, _mlp_class())


def mlp_feature_fns(module) -> tuple[Callable, Callable, Callable]:
    """``(apply_fn, feature_fn, layers_fn)`` over the ``params`` collection of a :func:`make_mlp` module.

    ``apply_fn(params, x)`` gives the logits, ``feature_fn`` the features entering the last linear layer (for the
    conjugate kernel) and ``layers_fn`` every layer's output, the logits last (for the embedding kernel).

    Example:
      >>> from jaxcompare.data import make_mlp, mlp_feature_fns
      >>> module = make_mlp(3, width=8, depth=2)
      >>> params = module.init(jax.random.key(0), jnp.zeros((1, 5)))["params"]
      >>> apply_fn, feature_fn, layers_fn = mlp_feature_fns(module)
      >>> feature_fn(params, jnp.ones((4, 5))).shape, [a.shape for a in layers_fn(params, jnp.ones((4, 5)))]
      ((4, 8), [(4, 8), (4, 8), (4, 3)])
    """
    if not _is_mlp(module):
        raise TypeError(
            f"mlp_feature_fns takes the MLP returned by make_mlp(n_classes, width, depth) (its hidden layers are "
            f"sown as 'intermediates'), got {_describe(module)}; for another flax module write the feature "
            "functions with module.apply(variables, x, mutable=['intermediates'])."
        )

    def apply_fn(p, x):
        return module.apply({"params": p}, x)

    def _run(p, x):
        out, state = module.apply({"params": p}, x, mutable=["intermediates"])
        return out, list(state["intermediates"]["hidden"])

    def feature_fn(p, x):
        return _run(p, x)[1][-1]

    def layers_fn(p, x):
        out, hidden = _run(p, x)
        return hidden + [out]

    return apply_fn, feature_fn, layers_fn


def _describe(v: Any) -> str:
    if _is_flax_module(v):
        return f"the flax module {type(v).__name__}"
    return f"{v!r} ({type(v).__name__})" if isinstance(v, (str, int, float, type(None))) else type(v).__name__


def _train_one(key, hyper, module, x, y, n_classes, batch_size, max_steps):
    """One model; ``hyper = (lr, label_noise, steps)`` are traced so all recipes share one compiled program."""
    lr, noise, steps = hyper
    k_init, k_noise, k_flip, k_batch = jax.random.split(key, 4)
    params = module.init(k_init, x[:1])["params"]
    flip = jax.random.uniform(k_noise, y.shape, jnp.float32) < noise  # 32-bit draws: one dataset with or without x64
    other = (y + jax.random.randint(k_flip, y.shape, 1, max(n_classes, 2), dtype=jnp.int32)) % n_classes
    y = jnp.where(flip, other, y)
    opt = optax.scale_by_adam()
    state = opt.init(params)

    def loss_fn(p, xb, yb):
        logits = module.apply({"params": p}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def step(carry, inp):
        p, s = carry
        i, k = inp
        idx = jax.random.choice(k, x.shape[0], (batch_size,), replace=False)
        g = jax.grad(loss_fn)(p, x[idx], y[idx])
        upd, s_new = opt.update(g, s, p)
        active = i < steps
        p_new = jax.tree_util.tree_map(lambda a, u: jnp.where(active, a - lr * u, a), p, upd)
        s_new = jax.tree_util.tree_map(lambda a, b: jnp.where(active, b, a), s, s_new)
        return (p_new, s_new), None

    inputs = (jnp.arange(max_steps), jax.random.split(k_batch, max_steps))
    (params, _), _ = jax.lax.scan(step, (params, state), inputs)
    return params


def train_ensemble(key: Any, module: Any, x: Any, y: Any, n_classes: int, recipes: Sequence[Recipe]):
    """Train one model per entry of ``recipes`` (repeat a recipe for several seeds) in one program ``vmap``-ped over
    models.

    Each model gets its own key from ``jax.random.split(key, len(recipes))`` (initialization, label flips,
    minibatches); learning rates, label noise and step counts are per-model arrays, so models of every recipe share
    one compiled ``lax.scan`` of ``max(steps)`` Adam updates (a model stops updating after its own ``steps``).
    Loss: softmax cross-entropy on minibatches drawn without replacement.

    Args:
      key: PRNG key (``jax.random.key``).
      module: a ``flax.linen.Module`` such as :func:`make_mlp`'s, mapping ``(b, features...)`` inputs to
        ``(b, n_classes)`` logits (checked on one example by ``jax.eval_shape`` before training).
      x: ``(n, features...)`` training inputs, ``n >= 1``.
      y: ``(n,)`` integer labels in ``[0, n_classes)``.
      n_classes: number of classes.
      recipes: one :class:`Recipe` per model; all must share ``batch_size`` (at most ``n``).

    Returns:
      The ``params`` pytree with every leaf stacked on a leading model axis of length ``len(recipes)``.

    Example:
      >>> from jaxcompare.data import Recipe, make_mlp, train_ensemble
      >>> x = jax.random.normal(jax.random.key(1), (32, 4)); y = (x[:, 0] > 0).astype(jnp.int32)
      >>> params = train_ensemble(jax.random.key(0), make_mlp(2, width=8), x, y, 2,
      ...                         [Recipe("a", steps=5, batch_size=8)] * 3)
      >>> params["Dense_0"]["kernel"].shape
      (3, 4, 8)
    """
    key = check_key(key)
    if not _is_flax_module(module):
        what = f"the class {module.__name__} (pass an instance)" if isinstance(module, type) else _describe(module)
        raise TypeError(
            f"module must be a flax.linen Module instance mapping x to logits, e.g. make_mlp(n_classes) or "
            f"make_mnist1d_model('cnn'); got {what}."
        )
    n_classes = check_int(n_classes, "n_classes", min=2)
    x = check_array(x, "x", min_size=1)
    if x.ndim < 2:
        raise ValueError(
            f"x must have shape (n, features...) with n >= 1 training points, got shape {tuple(x.shape)}; "
            "a single feature per point is x[:, None]."
        )
    y = check_labels(y, "y", n_classes, length=x.shape[0])
    recipes = list(recipes)
    if not recipes or not all(isinstance(r, Recipe) for r in recipes):
        raise TypeError("recipes must be a non-empty sequence of Recipe (one per model).")
    bs = {r.batch_size for r in recipes}
    if len(bs) != 1:
        raise ValueError(f"all recipes of one ensemble must share batch_size; got {sorted(bs)}.")
    batch_size = next(iter(bs))
    if batch_size > x.shape[0]:
        raise ValueError(f"Recipe.batch_size={batch_size} exceeds the {x.shape[0]} training points.")
    _check_logits(module, key, x, n_classes)
    n = len(recipes)
    keys = jax.random.split(key, n)
    lr = jnp.asarray([r.lr for r in recipes], jnp.float32)
    noise = jnp.asarray([r.label_noise for r in recipes], jnp.float32)
    steps = jnp.asarray([r.steps for r in recipes], jnp.int32)
    max_steps = max(r.steps for r in recipes)
    fn = jax.vmap(lambda k, h: _train_one(k, h, module, x, y, n_classes, batch_size, max_steps))
    return jax.jit(fn)(keys, (lr, noise, steps))


def _check_logits(module: Any, key: jax.Array, x: jax.Array, n_classes: int) -> None:
    """The module maps one example ``x[:1]`` to ``(1, n_classes)`` logits (shapes only: ``jax.eval_shape``)."""
    out, _ = jax.eval_shape(module.init_with_output, key, x[:1])
    shape = getattr(out, "shape", None)
    if shape is None:
        raise TypeError(
            f"module must return one array of logits of shape (batch, n_classes), got a {type(out).__name__} "
            f"for x[:1] of shape {tuple(x[:1].shape)}."
        )
    if tuple(shape) != (1, n_classes):
        outputs = f"{shape[-1]} outputs" if len(shape) == 2 and shape[0] == 1 else f"output of shape {tuple(shape)}"
        raise ValueError(
            f"module gives {outputs} for one example (x[:1] of shape {tuple(x[:1].shape)}) but n_classes="
            f"{n_classes}: expected logits of shape (1, {n_classes}); build the module with n_classes outputs, "
            f"e.g. make_mlp({n_classes})."
        )
