"""Ensembles of small flax MLPs trained with optax, vmapped over seeds (used by the main job and the notebooks).

A *recipe* is how a model is trained (learning rate, steps, label noise); models of one recipe differ only in their
key (initialization, minibatch order, which labels are flipped). The study asks whether α̂ can tell recipes apart.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["Recipe", "RECIPES", "digits_task", "make_mlp", "mlp_feature_fns", "train_ensemble"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    lr: float = 3e-3
    steps: int = 600
    batch_size: int = 64
    label_noise: float = 0.0


RECIPES = {
    "standard": Recipe("standard"),
    "label noise 20%": Recipe("label noise 20%", label_noise=0.2),
    "under-trained": Recipe("under-trained", steps=40),
    "large lr": Recipe("large lr", lr=3e-2),
}


def digits_task(kind: str, *, seed: int = 0, test_fraction: float = 0.4):
    """scikit-learn's bundled digits (no download): ``(x_train, y_train, x_test, y_test, class_names)``.

    ``kind="binary"``: even (0) vs odd (1) digits; ``kind="multiclass"``: the 10 digits. Pixels scaled to [0, 1].
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover
        raise ImportError("the demo needs scikit-learn: pip install 'jaxcompare[demo]'") from e
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    names = [str(i) for i in range(10)]
    if kind == "binary":
        y = y % 2
        names = ["even", "odd"]
    elif kind != "multiclass":
        raise ValueError(f"kind must be 'binary' or 'multiclass', got {kind!r}.")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te], names


def make_mlp(n_classes: int, width: int = 64, depth: int = 2):
    """A flax.linen MLP ``64 → width (tanh) × depth → n_classes``.

    Hidden activations are sown into the ``"intermediates"`` collection (free unless requested), which
    :func:`mlp_feature_fns` uses for the conjugate and embedding kernels.
    """
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(depth):
                x = jnp.tanh(nn.Dense(width)(x))
                self.sow("intermediates", "hidden", x)
            return nn.Dense(n_classes)(x)

    return MLP()


def mlp_feature_fns(module):
    """``(apply_fn, feature_fn, layers_fn)`` over the ``params`` collection of a :func:`make_mlp` module:
    logits; the features entering the last linear layer (for the CK); every layer's output (for Em)."""

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


def _train_one(key, hyper, module, x, y, n_classes, batch_size, max_steps):
    """One model; ``hyper = (lr, label_noise, steps)`` are traced so all recipes share one compiled program."""
    lr, noise, steps = hyper
    k_init, k_noise, k_flip, k_batch = jax.random.split(key, 4)
    params = module.init(k_init, x[:1])["params"]
    flip = jax.random.uniform(k_noise, y.shape) < noise
    other = (y + jax.random.randint(k_flip, y.shape, 1, max(n_classes, 2))) % n_classes
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


def train_ensemble(key: Any, module: Any, x: Any, y: Any, n_classes: int, recipes: list[Recipe]):
    """Train one model per entry of ``recipes`` (repeat a recipe for several seeds) in a single program vmapped over
    models: keys, learning rates, label noise and step counts are per-model arrays. Params stacked on axis 0."""
    n = len(recipes)
    bs = {r.batch_size for r in recipes}
    if len(bs) != 1:
        raise ValueError("all recipes of one ensemble must share batch_size.")
    keys = jax.random.split(key, n)
    lr = jnp.asarray([r.lr for r in recipes], jnp.float32)
    noise = jnp.asarray([r.label_noise for r in recipes], jnp.float32)
    steps = jnp.asarray([r.steps for r in recipes], jnp.int32)
    max_steps = max(r.steps for r in recipes)
    batch_size = next(iter(bs))
    fn = jax.vmap(lambda k, h: _train_one(k, h, module, jnp.asarray(x), jnp.asarray(y), n_classes, batch_size,
                                          max_steps))
    return jax.jit(fn)(keys, (lr, noise, steps))
