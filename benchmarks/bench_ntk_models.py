"""Benchmark models for the NTK benchmarks, in plain JAX (no jaxcompare import), so that the same code runs on
current JAX and on the pinned old JAX of neural-tangents (benchmarks/.nt-env): MLP 784-512-512-10 and a small CNN.

Parameters are lists of dicts of float32 arrays saved to / loaded from .npz files (``save``/``load``), so both
environments compute kernels of identical parameters and inputs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def mlp_init(seed: int, sizes=(784, 512, 512, 10)):
    """Weights only, P = 668,672 as in the spec's anchor figures (stax.Dense(b_std=0) style)."""
    rng = np.random.default_rng(seed)
    return [{"w": (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)} for a, b in zip(sizes[:-1], sizes[1:])]


def mlp_apply(params, x):
    h = x.reshape(x.shape[0], -1)
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"])
    return h @ params[-1]["w"]


_CNN = [(1, 16, 1), (16, 32, 2), (32, 32, 2)]  # (in channels, out channels, stride), 3x3 kernels, SAME padding


def cnn_init(seed: int, n_classes: int = 10):
    rng = np.random.default_rng(seed)
    params = [{"w": (rng.standard_normal((3, 3, ci, co)) / np.sqrt(9 * ci)).astype(np.float32),
               "b": (0.1 * rng.standard_normal(co)).astype(np.float32)} for ci, co, _ in _CNN]
    d = 7 * 7 * 32
    params.append({"w": (rng.standard_normal((d, n_classes)) / np.sqrt(d)).astype(np.float32),
                   "b": (0.1 * rng.standard_normal(n_classes)).astype(np.float32)})
    return params


def cnn_apply(params, x):
    h = x  # (N, 28, 28, 1)
    for layer, (_, _, s) in zip(params[:-1], _CNN):
        h = jax.lax.conv_general_dilated(h, layer["w"], (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(h + layer["b"][None, None, None, :])
    h = h.reshape(h.shape[0], -1)
    return h @ params[-1]["w"] + params[-1]["b"][None, :]


MODELS = {"mlp": (mlp_init, mlp_apply, (784,)), "cnn": (cnn_init, cnn_apply, (28, 28, 1))}


def inputs(model: str, n: int, seed: int = 1) -> np.ndarray:
    shape = MODELS[model][2]
    return np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)


def save(path, params, x) -> None:
    arrays = {"x": x}
    for i, layer in enumerate(params):
        for k, v in layer.items():
            arrays[f"p{i}_{k}"] = v
    np.savez(path, **arrays)


def load(path):
    z = np.load(path)
    n_layers = 1 + max(int(k[1:].split("_")[0]) for k in z.files if k.startswith("p"))
    params = [{k: jnp.asarray(z[f"p{i}_{k}"]) for k in ("w", "b") if f"p{i}_{k}" in z.files} for i in range(n_layers)]
    return params, jnp.asarray(z["x"])


def gram_flops(model: str, n: int, n_classes: int = 10) -> float:
    """FLOPs of the Gram products of structured trNTK⁰ (x2 = x1): Σ_layers 2 N² (D + C·E) for dense layers and
    2 N² C·D·E (+ forming the per-example gradients, 2 N C T D E) for convolutions."""
    if model == "mlp":
        dims = [(784, 512), (512, 512), (512, 10)]
        return sum(2.0 * n * n * (d + n_classes * e) for d, e in dims)
    total = 0.0
    hw = 28
    for ci, co, s in _CNN:
        hw = -(-hw // s)
        t, d = hw * hw, 9 * ci + 1
        total += 2.0 * n * n_classes * t * d * co + 2.0 * n * n * n_classes * d * co
    return total + 2.0 * n * n * (7 * 7 * 32 + 1 + n_classes * n_classes)


def n_params(model: str) -> int:
    init = MODELS[model][0]
    return int(sum(v.size for layer in init(0) for v in layer.values()))
