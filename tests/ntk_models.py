"""Small models shared by the NTK tests: an MLP with biases, a flax CNN, a model reusing one weight matrix, a token
transformer, and small versions of real architectures (ResNet with BatchNorm in eval mode, pre-LN GPT, ViT, a zoo of
convolutions, LSTM/GRU); the float64 Jacobian oracle."""

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
    x = np.asarray(x)
    xx = jnp.asarray(x if np.issubdtype(x.dtype, np.integer) else x.astype(np.float64))  # tokens stay integers
    jac = jax.jit(lambda v, xx: jax.jacfwd(lambda w: apply_fn(unravel(w), xx))(v))(jnp.asarray(flat), xx)
    return np.asarray(jac, np.float64)  # (N, C, P)


def oracle_kernels(apply_fn, params, x1, x2):
    x1, x2 = np.asarray(x1), np.asarray(x2)
    if x1.shape[1:] == x2.shape[1:] and x1.dtype == x2.dtype:  # one Jacobian program for both (compiling dominates)
        j = oracle_jacobian(apply_fn, params, np.concatenate([x1, x2]))
        j1, j2 = j[: len(x1)], j[len(x1) :]
    else:
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


# ------------------------------------------------------------------------------------------------------------------
# Small versions of real architectures (issue 14): a ResNet with BatchNorm in eval mode, a pre-LN GPT (tied
# embedding, causal mask, scan over layers), a ViT, depthwise/grouped/dilated/transposed convolutions, LSTM and GRU
# ------------------------------------------------------------------------------------------------------------------
def tiny_resnet(key, n_classes=3, dtype=jnp.float64):
    """flax.linen ResNet: 3×3 stem, a strided basic block with a 1×1 projection shortcut, global average pool, dense
    head; every convolution followed by BatchNorm(use_running_average=True) with non-trivial running
    statistics (eval mode: a per-channel affine map of fixed statistics and trained scale/bias). Input (N, 6, 6, 2)."""
    import flax.linen as nn

    import jaxcompare as jc

    def conv(f, k, s=1):
        return nn.Conv(f, (k, k), s, use_bias=False, param_dtype=dtype, dtype=dtype)

    def bn():
        return nn.BatchNorm(use_running_average=True, param_dtype=dtype, dtype=dtype)

    class Block(nn.Module):
        features: int
        stride: int

        @nn.compact
        def __call__(self, x):
            y = nn.relu(bn()(conv(self.features, 3, self.stride)(x)))
            y = bn()(conv(self.features, 3)(y))
            if self.stride != 1 or x.shape[-1] != self.features:
                x = bn()(conv(self.features, 1, self.stride)(x))
            return nn.relu(y + x)

    class ResNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(bn()(conv(2, 3)(x)))
            x = Block(3, 2)(x)
            return nn.Dense(n_classes, param_dtype=dtype, dtype=dtype)(jnp.mean(x, axis=(1, 2)))

    model = ResNet()
    k1, k2 = jax.random.split(key)
    variables = model.init(k1, jnp.zeros((1, 6, 6, 2), dtype))
    leaves, treedef = jax.tree_util.tree_flatten(variables)
    keys = jax.random.split(k2, len(leaves))
    # every leaf perturbed: BatchNorm scales near 1, biases and running means non-zero, variances in (0.5, 1.5)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(variables)[0]]
    new = []
    for path, leaf, k in zip(paths, leaves, keys):
        u = jax.random.uniform(k, leaf.shape, dtype)
        if "var" in path:
            leaf = 0.5 + u
        elif "scale" in path:
            leaf = 0.7 + 0.6 * u
        elif "bias" in path or "mean" in path:
            leaf = 0.4 * (u - 0.5)
        new.append(leaf)
    return jc.from_linen(model, jax.tree_util.tree_unflatten(treedef, new))


def _layer_norm(h, s, b):
    m = jnp.mean(h, -1, keepdims=True)
    return (h - m) * jax.lax.rsqrt(jnp.mean((h - m) ** 2, -1, keepdims=True) + 1e-5) * _lead(s, h) + _lead(b, h)


def _lead(v, like):
    """``v`` with leading unit axes up to the rank of ``like`` (the tests raise on implicit rank promotion)."""
    return v.reshape((1,) * (like.ndim - v.ndim) + v.shape)


def _pre_ln_layer(h, lp, heads, mask=None):
    """One pre-LN layer: LayerNorm, multi-head attention (qkv and output biases, optional mask), LayerNorm, GELU MLP."""
    n, t, d = h.shape
    hd = d // heads
    y = _layer_norm(h, lp["ln1_s"], lp["ln1_b"])
    q, k, v = jnp.split(y @ lp["wqkv"] + _lead(lp["bqkv"], y), 3, axis=-1)
    q, k, v = (a.reshape(n, t, heads, hd) for a in (q, k, v))
    s = jnp.einsum("nthd,nshd->nhts", q, k) / np.sqrt(hd)
    if mask is not None:
        s = jnp.where(mask[None, None], s, -jnp.inf)
    o = jnp.einsum("nhts,nshd->nthd", jax.nn.softmax(s, axis=-1), v).reshape(n, t, d)
    h = h + o @ lp["wo"] + _lead(lp["bo"], h)
    y = _layer_norm(h, lp["ln2_s"], lp["ln2_b"])
    u = jax.nn.gelu(y @ lp["w1"] + _lead(lp["b1"], y))
    return h + u @ lp["w2"] + _lead(lp["b2"], h)


def _pre_ln_params(key, d, ff, dtype, stack=None):
    shape = (lambda *s: s) if stack is None else (lambda *s: (stack, *s))
    ks = jax.random.split(key, 10)
    r = lambda k, *s: jax.random.normal(k, shape(*s), dtype)  # noqa: E731
    return {
        "ln1_s": 1 + 0.1 * r(ks[0], d),
        "ln1_b": 0.1 * r(ks[1], d),
        "wqkv": r(ks[2], d, 3 * d) / np.sqrt(d),
        "bqkv": 0.1 * r(ks[3], 3 * d),
        "wo": r(ks[4], d, d) / np.sqrt(d),
        "bo": 0.1 * r(ks[5], d),
        "ln2_s": 1 + 0.1 * r(ks[6], d),
        "ln2_b": 0.1 * r(ks[7], d),
        "w1": r(ks[8], d, ff) / np.sqrt(d),
        "b1": jnp.zeros(shape(ff), dtype),
        "w2": r(ks[9], ff, d) / np.sqrt(ff),
        "b2": jnp.zeros(shape(d), dtype),
    }


def tiny_gpt(key, vocab=7, d=4, heads=2, seq=4, layers=2, dtype=jnp.float64):
    """Pre-LN decoder: token + position embeddings, ``layers`` causal-attention layers stacked and run by
    ``lax.scan``, final LayerNorm, logits of the last position by the tied embedding (``h @ emb.T``: the embedding
    is used twice, by the gather and by the output product). Input: int tokens (N, seq); output (N, vocab)."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "emb": jax.random.normal(k1, (vocab, d), dtype),
        "pos": 0.3 * jax.random.normal(k2, (seq, d), dtype),
        "layers": _pre_ln_params(k3, d, 2 * d, dtype, stack=layers),
        "lnf_s": jnp.ones(d, dtype),
        "lnf_b": jnp.zeros(d, dtype),
    }

    def apply_fn(p, tokens):
        t = tokens.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))
        h = p["emb"][tokens] + p["pos"][None, :t]
        h, _ = jax.lax.scan(lambda h, lp: (_pre_ln_layer(h, lp, heads, causal), None), h, p["layers"])
        return _layer_norm(h[:, -1], p["lnf_s"], p["lnf_b"]) @ p["emb"].T

    return apply_fn, params


def tiny_vit(key, image=4, channels=2, patch=2, d=4, heads=2, n_classes=3, dtype=jnp.float64):
    """ViT: non-overlapping patches embedded by a dense layer, a learned class token prepended, position
    embeddings, one pre-LN layer, final LayerNorm, dense head on the class token. Input (N, image, image, channels)."""
    ks = jax.random.split(key, 5)
    dp, g = patch * patch * channels, image // patch
    params = {
        "wp": jax.random.normal(ks[0], (dp, d), dtype) / np.sqrt(dp),
        "bp": 0.1 * jax.random.normal(ks[1], (d,), dtype),
        "cls": jax.random.normal(ks[2], (d,), dtype),
        "pos": 0.3 * jax.random.normal(ks[3], (g * g + 1, d), dtype),
        "layer": _pre_ln_params(ks[4], d, 2 * d, dtype),
        "lnf_s": jnp.ones(d, dtype),
        "lnf_b": jnp.zeros(d, dtype),
        "head": jax.random.normal(jax.random.fold_in(key, 1), (d, n_classes), dtype) / np.sqrt(d),
    }

    def apply_fn(p, x):
        n = x.shape[0]
        pt = x.reshape(n, g, patch, g, patch, channels).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, dp)
        h = pt @ p["wp"] + _lead(p["bp"], pt)
        h = jnp.concatenate([jnp.broadcast_to(p["cls"], (n, 1, d)), h], axis=1) + p["pos"][None]
        h = _pre_ln_layer(h, p["layer"], heads)
        return _layer_norm(h[:, 0], p["lnf_s"], p["lnf_b"]) @ p["head"]

    return apply_fn, params


def conv_zoo(key, n_classes=3, dtype=jnp.float64):
    """Depthwise (groups = channels), grouped (2 groups), dilated (rate 2) and transposed (stride 2) convolutions, each
    with a bias, then a dense head. Input (N, 6, 6, 4)."""
    ks = jax.random.split(key, 9)
    dn = ("NHWC", "HWIO", "NHWC")
    params = {
        "dw": jax.random.normal(ks[0], (3, 3, 1, 4), dtype) / 3,
        "dw_b": 0.1 * jax.random.normal(ks[1], (4,), dtype),
        "gr": jax.random.normal(ks[2], (3, 3, 2, 4), dtype) / np.sqrt(18),
        "gr_b": 0.1 * jax.random.normal(ks[3], (4,), dtype),
        "dil": jax.random.normal(ks[4], (3, 3, 4, 3), dtype) / 6,
        "dil_b": 0.1 * jax.random.normal(ks[5], (3,), dtype),
        "tr": jax.random.normal(ks[6], (2, 2, 3, 2), dtype) / np.sqrt(12),
        "tr_b": 0.1 * jax.random.normal(ks[7], (2,), dtype),
        "head": jax.random.normal(ks[8], (4 * 4 * 2, n_classes), dtype) / np.sqrt(32),
    }

    def apply_fn(p, x):
        conv = jax.lax.conv_general_dilated
        h = jnp.tanh(
            conv(x, p["dw"], (1, 1), "SAME", dimension_numbers=dn, feature_group_count=4) + _lead(p["dw_b"], x)
        )
        h = jnp.tanh(
            conv(h, p["gr"], (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2) + _lead(p["gr_b"], x)
        )
        h = jnp.tanh(
            conv(h, p["dil"], (1, 1), "VALID", rhs_dilation=(2, 2), dimension_numbers=dn) + _lead(p["dil_b"], x)
        )
        h = jnp.tanh(jax.lax.conv_transpose(h, p["tr"], (2, 2), "SAME", dimension_numbers=dn) + _lead(p["tr_b"], x))
        return h.reshape(h.shape[0], -1) @ p["head"]  # (N, 2, 2, 3) -> (N, 4, 4, 2)

    return apply_fn, params


def tiny_rnn(key, cell="lstm", hidden=3, n_classes=3, dtype=jnp.float64):
    """flax.linen ``nn.RNN`` (a scan over time) of an LSTM or GRU cell, dense head on the last output.
    Input (N, T, 2)."""
    import flax.linen as nn

    import jaxcompare as jc

    cls = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[cell]

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.RNN(cls(hidden, param_dtype=dtype, dtype=dtype))(x)
            return nn.Dense(n_classes, param_dtype=dtype, dtype=dtype)(h[:, -1])

    model = Net()
    return jc.from_linen(model, model.init(key, jnp.zeros((1, 4, 2), dtype)))
