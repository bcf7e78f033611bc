"""Convolutions' input cotangents inside a loop: JAX's own rule vs :func:`conv_native` (the structured pass's).

The structured kernels compute each example's factors by ``lax.map`` over examples and ``vmap`` of the pullback
over the C classes. JAX's transpose rule of a convolution swaps the filter's input and output feature axes through
its dimension numbers; XLA:CPU transposes such a filter to its fast layout outside loops but not inside a loop body,
where the transposed convolution runs a slow generic path. ``conv_native`` keeps the swapped filter physically
swapped (an optimization barrier), so the same convolution reads it in the forward layout.

Each row: the ResNet-18 layer shape's C = 10 input cotangents for a chunk of examples, computed (a) by JAX's rule
vectorized (no loop: the reference speed), (b) by JAX's rule inside ``lax.map``, (c) by ``conv_native`` inside
``lax.map``; the floor is the FLOPs of the C transposed convolutions at the float32 matmul peak measured in the same
run. Usage: ``python benchmarks/bench_conv_loop.py [--device gpu]``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp

from jaxcompare.ntk._structured._patches import conv_native

# (spatial, C_in, C_out, stride): ResNet-18 layers at 32x32 inputs, quarter and full width
SHAPES = [(32, 16, 16, 1), (16, 32, 32, 1), (16, 16, 32, 2), (8, 128, 128, 1), (8, 64, 128, 2), (4, 512, 512, 1)]
CLASSES, EXAMPLES, CHUNK = 10, 32, 8


def _peak(size: int = 2048) -> float:
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    mm = jax.jit(lambda u: u @ u)
    mm(a).block_until_ready()
    return 2.0 * size**3 / min(_timed(lambda: mm(a).block_until_ready()) for _ in range(5))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _row(s: int, ci: int, co: int, stride: int, peak: float) -> dict:
    k1, k2, k3 = jax.random.split(jax.random.key(s * ci + co), 3)
    x = jax.random.normal(k1, (EXAMPLES, s, s, ci), jnp.float32)
    w = jax.random.normal(k2, (3, 3, ci, co), jnp.float32) / (3 * ci**0.5)
    ct = jax.random.normal(k3, (CLASSES, 1, s // stride, s // stride, co), jnp.float32)
    dn = jax.lax.conv_dimension_numbers((1, s, s, ci), w.shape, ("NHWC", "HWIO", "NHWC"))
    pads = ((1, 1), (1, 1))
    params = dict(
        jax.make_jaxpr(lambda a, b: jax.lax.conv_general_dilated(a, b, (stride,) * 2, pads, dimension_numbers=dn))(
            x[:1], w
        )
        .eqns[0]
        .params
    )
    prim = lambda a, b: jax.lax.conv_general_dilated(a, b, (stride,) * 2, pads, dimension_numbers=dn)  # noqa: E731
    ours = lambda a, b: conv_native(a, b, params)  # noqa: E731

    def per_example(conv, wt, cts):
        def one(xi):  # the cotangent depends on the example (through the ReLU), as in a network
            _, vjp = jax.vjp(lambda a: jax.nn.relu(conv(a[None], wt)), xi)
            return jax.vmap(lambda c: vjp(c)[0])(cts)

        return one

    fns = {
        "jax rule, no loop": jax.jit(lambda xs, wt, cts: jax.vmap(per_example(prim, wt, cts))(xs)),
        "jax rule in lax.map": jax.jit(
            lambda xs, wt, cts: jax.lax.map(per_example(prim, wt, cts), xs, batch_size=CHUNK)
        ),
        "conv_native in lax.map": jax.jit(
            lambda xs, wt, cts: jax.lax.map(per_example(ours, wt, cts), xs, batch_size=CHUNK)
        ),
    }
    out = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn(x, w, ct))
        out[name] = min(_timed(lambda fn=fn: jax.block_until_ready(fn(x, w, ct))) for _ in range(3))
    flops = 2.0 * EXAMPLES * (CLASSES + 1) * (s // stride) ** 2 * 9 * ci * co  # the forward and C transposes
    out["floor"] = flops / peak
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    args = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if args.device == "gpu" else "cpu")
    peak = _peak()
    load = os.getloadavg()[0]
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}  {jax.devices()[0].platform}  matmul peak {peak / 1e9:.0f} GFLOP/s  "
        f"load {load:.1f}  ({EXAMPLES} examples x {CLASSES} classes, chunks of {CHUNK}; ms)"
    )
    head = [
        "layer (HxW, Cin->Cout, stride)",
        "no loop",
        "jax rule in loop",
        "conv_native in loop",
        "floor",
        "jax/ours",
        "ours/floor",
    ]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for s, ci, co, st in SHAPES:
        r = _row(s, ci, co, st, peak)
        a, b, c = r["jax rule, no loop"], r["jax rule in lax.map"], r["conv_native in lax.map"]
        print(
            f"| {s}x{s}, {ci}->{co}, {st} | {1e3 * a:.1f} | {1e3 * b:.1f} | {1e3 * c:.1f} | "
            f"{1e3 * r['floor']:.2f} | {b / c:.1f} | {c / r['floor']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
