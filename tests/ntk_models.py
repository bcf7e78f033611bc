"""Small models shared by the NTK tests: an MLP with biases, a flax CNN, a model reusing one weight matrix."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def mlp(key, d_in=5, width=7, n_classes=3, dtype=jnp.float64):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    params = {
        "W1": jax.random.normal(k1, (d_in, width), dtype) / np.sqrt(d_in),
        "b1": 0.1 * jax.random.normal(k2, (width,), dtype),
        "W2": jax.random.normal(k3, (width, n_classes), dtype) / np.sqrt(width),
        "b2": 0.1 * jax.random.normal(k4, (n_classes,), dtype),
    }

    def apply_fn(p, x):
        return jnp.tanh(x @ p["W1"] + p["b1"][None, :]) @ p["W2"] + p["b2"][None, :]

    return apply_fn, params


def shared_weight(key, d=6, n_classes=4, dtype=jnp.float64):
    """f(x) = V tanh(W tanh(W x)): W is used twice (weight sharing)."""
    k1, k2 = jax.random.split(key)
    params = {
        "W": jax.random.normal(k1, (d, d), dtype) / np.sqrt(d),
        "V": jax.random.normal(k2, (d, n_classes), dtype) / np.sqrt(d),
    }

    def apply_fn(p, x):
        h = jnp.tanh(x @ p["W"])
        h = jnp.tanh(h @ p["W"])
        return h @ p["V"]

    return apply_fn, params


def flax_cnn(key, n_classes=3, dtype=jnp.float64):
    import flax.linen as nn

    import jaxcompare as jc

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3), param_dtype=dtype, dtype=dtype)(x)
            x = nn.relu(x)
            x = nn.Conv(4, (3, 3), strides=2, param_dtype=dtype, dtype=dtype)(x)
            x = jnp.tanh(x)
            x = x.reshape(x.shape[0], -1)
            return nn.Dense(n_classes, param_dtype=dtype, dtype=dtype)(x)

    model = CNN()
    variables = model.init(key, jnp.zeros((1, 6, 6, 2), dtype))
    return jc.from_linen(model, variables)


def oracle_jacobian(apply_fn, params, x):
    """(N, C, P) float64 Jacobian of the whole batch by forward mode over the flattened parameter vector."""
    flat, unravel = ravel_pytree(params)
    flat = np.asarray(flat, np.float64)
    xx = jnp.asarray(np.asarray(x, np.float64))
    jac = jax.jacfwd(lambda v: apply_fn(unravel(v), xx))(jnp.asarray(flat))
    return np.asarray(jac, np.float64)  # (N, C, P)


def oracle_kernels(apply_fn, params, x1, x2):
    j1 = oracle_jacobian(apply_fn, params, x1)
    j2 = oracle_jacobian(apply_fn, params, x2)
    c = j1.shape[1]
    full = np.einsum("icp,jdp->ijcd", j1, j2)
    k0 = np.einsum("icp,jcp->ij", j1, j2)
    d1 = np.einsum("icp,icp->i", j1, j1)
    d2 = np.einsum("icp,icp->i", j2, j2)
    trntk = k0 / np.sqrt(np.outer(d1, d2))
    g1, g2 = j1.sum(1), j2.sum(1)
    pntk = g1 @ g2.T / c
    return dict(
        full=full,
        trntk0=k0,
        trntk=trntk,
        pntk=pntk,
        pntk_norm=(g1 @ g2.T) / np.sqrt(np.outer((g1 * g1).sum(1), (g2 * g2).sum(1))),
    )
