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


def tiny_transformer(key, vocab=7, d=4, heads=2, seq=3, n_classes=3, dtype=jnp.float64):
    """Token embedding (a gather), LayerNorm scale/shift, attention (dot_generals with batch dimensions), a
    per-head output weight used in a dot_general with a batch dimension, a GELU MLP, mean over tokens."""
    ks = jax.random.split(key, 8)
    hd = d // heads
    params = {
        "emb": jax.random.normal(ks[0], (vocab, d), dtype),
        "pos": 0.3 * jax.random.normal(ks[1], (seq, d), dtype),
        "ln_s": 1.0 + 0.1 * jax.random.normal(ks[2], (d,), dtype),
        "ln_b": 0.1 * jax.random.normal(ks[3], (d,), dtype),
        "wqkv": jax.random.normal(ks[4], (d, 3 * d), dtype) / np.sqrt(d),
        "wo": jax.random.normal(ks[5], (heads, hd, d), dtype) / np.sqrt(hd),
        "w1": jax.random.normal(ks[6], (d, 2 * d), dtype) / np.sqrt(d),
        "head": jax.random.normal(ks[7], (2 * d, n_classes), dtype) / np.sqrt(2 * d),
    }

    def apply_fn(p, tokens):
        n, t = tokens.shape
        h = p["emb"][tokens] + p["pos"][None, :t]
        m = jnp.mean(h, -1, keepdims=True)
        y = (h - m) * jax.lax.rsqrt(jnp.mean((h - m) ** 2, -1, keepdims=True) + 1e-5) * p["ln_s"][None, None, :] + p[
            "ln_b"
        ][None, None, :]
        q, k, v = jnp.split(y @ p["wqkv"], 3, axis=-1)
        q, k, v = (a.reshape(n, t, heads, hd) for a in (q, k, v))
        att = jax.nn.softmax(jnp.einsum("nthd,nshd->nhts", q, k), axis=-1)
        o = jnp.einsum("nhts,nshd->nthd", att, v)
        h = h + jnp.einsum("nthd,hde->nte", o, p["wo"])
        return jnp.mean(jax.nn.gelu(h @ p["w1"]), axis=1) @ p["head"]

    return apply_fn, params
