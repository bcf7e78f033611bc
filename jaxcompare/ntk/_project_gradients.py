"""Projected per-example gradients as a first-class, linear-in-N path (the TRAK workflow): features, optionally
written to disk resumably, and kernels from them (Gram products) with an error estimate.

``φ_c(x) = R g_c(x)`` for a projection ``R`` (``dim × P``) with ``E[Rᵀ R] = I``: :func:`structured_projection`
(the fast one: a CountSketch formed from each layer's factors) or :func:`random_projection`. Kernels from features:
``K0[i, j] = Σ_c <φ_c(x_i), φ_c(x_j)>`` (proj-trNTK⁰), cosine-normalized for the proj-trNTK.

On disk (``path=``): one ``.npy`` file per block of examples with a ledger of checksums, ``features.npy`` once
every block is done; resumable after interruption and split over processes sharing the directory (block ``b`` to
process ``b mod P``, bit-identical to one process) — :mod:`._project_disk`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from .._precision import accumulation_dtype, resolve_precision, traced_with_policy
from .._validation import check_finite, check_flag, check_int
from ._common import HIGHEST, canonical_args, check_apply_fn, cosine_normalize
from ._project_disk import check_store_path, features_to_disk, finite_block, nonfinite_message, stored_block_size

__all__ = ["project_gradients", "projected_kernel", "ProjectedKernel"]

_DEFAULT_BLOCK = 256


def _check_projection(projection: Any) -> None:
    if not hasattr(projection, "features") or not hasattr(projection, "key"):
        raise TypeError(
            "projection must come from jaxcompare.structured_projection(key, dim) or "
            f"jaxcompare.random_projection(key, dim, kind), got {type(projection).__name__}."
        )


def _features(proj, params, xb, *, apply_fn, summed, precision="highest"):
    with traced_with_policy(precision):  # the model's products and the sketch's contractions follow the policy
        return proj.features(apply_fn, params, xb, summed=summed)


# module-level jit: calls with the same model, shapes, projection dimension and precision policy share compiled code
# (the projection is a pytree argument: a new key does not recompile)
_features_jit = jax.jit(_features, static_argnames=("apply_fn", "summed", "precision"))


@functools.partial(jax.jit, donate_argnums=0)
def _put_rows(out, rows, lo):
    """``out`` with ``rows`` written from row ``lo`` on (in place: ``out`` is donated)."""
    return jax.lax.dynamic_update_slice_in_dim(out, rows, lo, 0)


def project_gradients(
    apply_fn: Callable,
    params: Any,
    x: Any,
    projection: Any,
    *,
    summed: bool = False,
    block_size: int | None = None,
    path: str | Path | None = None,
    overwrite: bool = False,
    precision: str | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Any:
    """Per-example projected gradients ``φ_c(x_i) = R g_c(x_i)``, computed block by block (time and memory linear in
    ``N``; per-example gradients never held for more than one block and, with :func:`structured_projection`,
    one layer).

    Kernels from features are Gram products: ``Σ_c <φ_c(x_i), φ_c(x_j)>`` is the proj-trNTK⁰ (unbiased for the
    trNTK⁰) — :func:`projected_kernel` forms it with a standard error; ``trace_ntk(apply_fn, projection=...)``
    computes the same kernel directly.

    Args:
      apply_fn: ``apply_fn(params, x) -> (N, C)`` logits.
      params: parameter pytree (floating-point leaves).
      x: inputs ``(N, ...)``.
      projection: :func:`structured_projection` (fast: ``O(P)`` per gradient) or :func:`random_projection`.
      summed: project the gradient of the summed logits (for the pNTK): ``(N, dim)``.
      block_size: examples per block (default: the projection's automatic block for a structured projection, else
        256; never more than ``N``, so small inputs are not padded).
      path: directory to write the features to, resumably: one ``.npy`` file per block with its checksum in a
        ledger, verified before it is trusted; the result is then a read-only ``numpy.memmap`` of
        ``path/features.npy``, written once every block is done. Several processes (the hosts of a cluster, the
        tasks of an array job) may share ``path``: every process makes the same call and computes blocks ``b`` with
        ``b mod process_count == process_index``; the features are bit-identical to one process. Under JAX's
        runtime every process returns the features (a barrier); with the overrides the process that finds every
        block done writes ``features.npy`` and the others warn and return None — rerun any process (or one with
        ``process_count=1``) to complete or reopen the store; a process that died is resumed by rerunning it alone.
        On a directory this process cannot write (an archive, a read-only mount) the finished features of these
        same inputs are returned, verified, and nothing is written; anything else there raises ``PermissionError``.
      overwrite: with ``path``, discard a store made from other data or options instead of raising.
      precision: the precision policy of the model's products and the projection's contractions (``"highest"``,
        ``"high"``, ``"default"``; see :func:`jaxcompare.ntk.precision`): None follows the innermost
        ``jc.ntk.precision(...)`` block, else ``"highest"``. On CPU the three give the same features.
      process_index, process_count: with ``path``, this process's share of the blocks (``0 <= process_index <
        process_count``; both or neither): default ``jax.process_index()``, ``jax.process_count()``.

    Returns:
      ``(N, C, dim)`` (``(N, dim)`` when ``summed``; ``(N, p/2, dim)`` for a projection with ``output_probes=p``,
      whose Gram summed over axis 1 is the same unbiased trNTK⁰): a ``jax.Array``, or a ``numpy.memmap`` with
      ``path`` (None, with a ``RuntimeWarning``, while blocks of other processes' shares are missing).

    Example:
      >>> def apply_fn(params, x):                         # a tiny two-layer MLP: (N, 3) -> (N, 2) logits
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x = jax.random.normal(k3, (10, 3))
      >>> phi = jc.project_gradients(apply_fn, params, x, jc.structured_projection(jax.random.key(1), 256))
      >>> phi.shape                                        # (N, C, dim)
      (10, 2, 256)
      >>> pk = jc.projected_kernel(phi)                    # cosine-normalized proj-trNTK and its standard error
      >>> exact = jc.trace_ntk(apply_fn)(params, x)
      >>> bool(jnp.abs(pk.kernel - exact).max() < 0.1), bool(pk.mean_abs_error < 0.05)
      (True, True)
    """
    check_apply_fn(apply_fn)
    _check_projection(projection)
    apply_fn, x, _, _, _, _ = canonical_args(params, x, None, apply_fn)  # pytree x: one packed array
    summed = check_flag(summed, "summed")
    overwrite = check_flag(overwrite, "overwrite")
    root = None if path is None else check_store_path(path)
    policy = resolve_precision(precision)
    n = x.shape[0]
    stored = None if root is None or overwrite or block_size is not None else stored_block_size(root, n)
    if block_size is not None:
        bs = check_int(block_size, "block_size", min=1)
    elif stored is not None:  # resuming a store: its blocks, whatever memory is free now
        bs = stored
    elif hasattr(projection, "block_for"):
        bs = projection.block_for(apply_fn, params, x, summed=summed, held=root is None)
    else:
        bs = _DEFAULT_BLOCK
    bs = min(bs, n)
    if getattr(projection, "tables", False) is None:  # a structured sketch: its hash tables once, not per block
        projection = projection.prepared(apply_fn, params, x, summed=summed)
    fn = functools.partial(_features_jit, apply_fn=apply_fn, summed=summed, precision=policy)
    nb = -(-n // bs)

    def block(i):
        lo, hi = i * bs, min((i + 1) * bs, n)
        xb = x[lo:hi]
        if hi - lo < bs:  # one compiled shape: pad the last block with its first row, drop the padding
            xb = jnp.concatenate([xb, jnp.broadcast_to(xb[:1], (bs - (hi - lo),) + xb.shape[1:])])
        return fn(projection, params, xb)[: hi - lo]

    if root is None:
        if process_index is not None or process_count is not None:
            raise ValueError("process_index/process_count split the blocks of a store on disk: pass path= as well.")
        out, ok = None, []
        for i in range(nb):  # written in place (a donated buffer): the features are held once, not twice
            b = block(i)
            ok.append(jnp.all(jnp.isfinite(b)))  # checked once at the end: one scalar back, no sync per block
            if nb == 1:
                out = b
                break
            out = jnp.zeros((n,) + b.shape[1:], b.dtype) if out is None else out
            out = _put_rows(out, b, i * bs)
        if isinstance(out, jax.core.Tracer) or bool(jnp.all(jnp.stack(ok))):
            return out
        points = []
        for i in [i for i, f in enumerate(ok) if not bool(f)]:  # recompiled and recomputed once, else raises
            b, bad = finite_block(block, i, out[i * bs : min((i + 1) * bs, n)], i * bs, raise_=False)
            points += bad
            out = b if nb == 1 else _put_rows(out, b, i * bs)
        if points:
            raise FloatingPointError(nonfinite_message(points))
        return out
    args = (apply_fn, params, x, projection, summed, overwrite, policy, process_index, process_count)
    return features_to_disk(root, block, nb, bs, n, *args)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ProjectedKernel:
    """A kernel from projected features and its estimated error (:func:`projected_kernel`).

    Attributes:
      kernel: ``(N1, N2)`` the projected kernel (cosine-normalized unless ``normalize=False``).
      stderr: ``(N1, N2)`` one-sample estimate of each entry's standard error, ``|K_a − K_b| / 2`` from the kernels
        ``K_a``, ``K_b`` of the two halves of the features (uncorrelated sketches of half the dimension).
      mean_abs_error: scalar, the expected mean ``|K − K_exact|`` over the entries, ``sqrt(2/π) · RMS(stderr)``
        (Gaussian errors; the diagonal of a normalized symmetric kernel, exact, is excluded).
    """

    kernel: jax.Array
    stderr: jax.Array
    mean_abs_error: jax.Array


# kernel rows formed at a time by projected_kernel: its memory is the kernel and its standard error plus this many
# rows of the two half-sketch products (N = 10 000, K = 1024: +1.5 GiB all at once, +0.83 GiB in blocks; the two
# outputs are 0.8 GB)
_KERNEL_ROWS = 1024


def _half_grams(a1, b1, a2, b2):
    """Gram products of the two halves, ``(<a1_i, a2_j>, <b1_i, b2_j>)`` summed over classes and features."""

    def g(u, v):
        return jnp.einsum("ick,jck->ij", u, v, precision=HIGHEST, preferred_element_type=accumulation_dtype(u, v))

    return g(a1, a2), g(b1, b2)


def _sq(f):
    return jnp.einsum("ick,ick->i", f, f, precision=HIGHEST, preferred_element_type=accumulation_dtype(f))


@functools.partial(jax.jit, static_argnames=("sym", "normalize"))
def _pk_compute(f1, f2, *, sym: bool, normalize: bool):
    """Kernel, standard error and mean absolute error from features ``(N, C', dim)``, ``_KERNEL_ROWS`` rows at a time.

    ``K = K_a/2 + K_b/2`` unnormalized (``K_a = 2 <a, a'>``, ``K_b = 2 <b, b'>``: each unbiased), or the cosine of
    the whole features; the error is ``|K_a − K_b| / 2`` (of the normalized halves when normalizing). Each block of
    rows forms its two half products once (the full product is their sum) and writes its rows of both outputs in
    place; the last block is shifted back to end at row ``N1`` (its repeated rows count once in the mean)."""
    h = f1.shape[-1] // 2
    a1, b1, a2, b2 = f1[..., :h], f1[..., h:], f2[..., :h], f2[..., h:]
    n1, n2 = f1.shape[0], f2.shape[0]
    sa1, sb1 = _sq(a1), _sq(b1)
    sa2, sb2 = (sa1, sb1) if sym else (_sq(a2), _sq(b2))
    rows = min(n1, _KERNEL_ROWS)
    nb = -(-n1 // rows)
    diag_free = sym and normalize  # the diagonal of a normalized symmetric kernel is exactly 1: not an error

    def block(i, carry):
        k_out, se_out, acc = carry
        lo = jnp.minimum(i * rows, n1 - rows)

        def take(v):
            return jax.lax.dynamic_slice_in_dim(v, lo, rows, 0)

        ga, gb = _half_grams(take(a1), take(b1), a2, b2)
        if normalize:
            k = cosine_normalize(ga + gb, take(sa1) + take(sb1), sa2 + sb2)
            se = jnp.abs(cosine_normalize(ga, take(sa1), sa2) - cosine_normalize(gb, take(sb1), sb2)) / 2
        else:
            k, se = ga + gb, jnp.abs(ga - gb)
        r = lo + jnp.arange(rows)
        if diag_free:
            se = jnp.where(r[:, None] == jnp.arange(n2)[None, :], 0, se)
        fresh = (r >= i * rows).astype(se.dtype)  # rows of the shifted last block that an earlier block wrote
        acc = acc + jnp.sum(fresh[:, None] * se * se)
        k_out = jax.lax.dynamic_update_slice_in_dim(k_out, k.astype(k_out.dtype), lo, 0)
        se_out = jax.lax.dynamic_update_slice_in_dim(se_out, se.astype(se_out.dtype), lo, 0)
        return k_out, se_out, acc

    dt = accumulation_dtype(f1, f2)
    init = (jnp.zeros((n1, n2), dt), jnp.zeros((n1, n2), dt), jnp.zeros((), dt))
    k, se, acc = block(0, init) if nb == 1 else jax.lax.fori_loop(0, nb, block, init)
    count = max(n1 * (n1 - 1), 1) if diag_free else n1 * n2
    return k, se, jnp.sqrt(2 / jnp.pi * acc / count).astype(se.dtype)


def projected_kernel(features1: Any, features2: Any = None, *, normalize: bool = True) -> ProjectedKernel:
    """The kernel of projected features and its standard error, from the two halves of the features.

    ``K0[i, j] = Σ_c <φ_c(x1_i), φ_c(x2_j)>`` for features ``(N, C, dim)`` (``<φ(x1_i), φ(x2_j)>`` for ``(N, dim)``:
    the pNTK⁰ is this divided by ``C``); ``normalize=True`` gives the cosine-normalized kernel (proj-trNTK).
    Error estimate: for the dense :func:`random_projection` kinds the first and last ``dim/2`` features are two
    independent sketches of half the dimension, each giving an unbiased kernel ``K_a``, ``K_b`` with twice the
    variance of ``K``; so ``|K_a − K_b| / 2`` estimates the standard error of each entry of ``K``. For
    :func:`structured_projection` the halves are ``P ± Q`` (uncorrelated, :mod:`jaxcompare.ntk._sketch`) and the
    estimate errs on the high side (by up to ~1.8× in our tests: a tiny MLP at ``dim`` = 64; about 1× on a small
    CNN). Not valid for ``kind="sparse"`` or the Kronecker projection (their halves are not independent). With
    ``output_probes`` each half also has its own probes, so the estimate counts their variance; resting on few
    independent probes, it then varies more from key to key (:mod:`jaxcompare.ntk._probes`).

    Args:
      features1: ``(N1, C, dim)`` or ``(N1, dim)`` from :func:`project_gradients`; ``dim`` even.
      features2: same layout for ``x2``, or None (``x2 = x1``).
      normalize: cosine normalization.

    Returns:
      :class:`ProjectedKernel` ``(kernel, stderr, mean_abs_error)``.

    Example:
      >>> phi = jax.random.normal(jax.random.key(0), (5, 3, 64))
      >>> pk = jc.projected_kernel(phi)
      >>> pk.kernel.shape, pk.stderr.shape, pk.mean_abs_error.shape
      ((5, 5), (5, 5), ())
    """
    f1 = _check_features(features1, "features1")
    sym = features2 is None
    f2 = f1 if sym else _check_features(features2, "features2")
    if f1.shape[1:] != f2.shape[1:]:
        raise ValueError(
            f"features1 and features2 must have the same per-example shape, got {f1.shape[1:]} and {f2.shape[1:]}."
        )
    if f1.shape[-1] % 2:
        raise ValueError(
            f"the feature dimension must be even (its two halves give the error estimate), got {f1.shape[-1]}: make "
            "the projection's dim even (trace_ntk(..., projection=...) takes any dim, without an error estimate)."
        )
    normalize = check_flag(normalize, "normalize")
    as3 = (lambda f: f[:, None]) if f1.ndim == 2 else (lambda f: f)  # (N, dim) -> (N, 1, dim)
    k, se, mae = _pk_compute(as3(f1), as3(f2), sym=sym, normalize=normalize)
    if not isinstance(k, jax.core.Tracer) and not bool(jnp.isfinite(mae) & jnp.all(jnp.isfinite(k))):
        raise FloatingPointError(
            f"the projected kernel overflowed {jnp.dtype(k.dtype).name} (inf/NaN entries from finite features: "
            f"their squared norms reach {float(jnp.max(_sq(as3(f1)))):.3g}); scale the features down (the normalized "
            "kernel does not change) or pass them in float64."
        )
    return ProjectedKernel(k, se, mae)


def _check_features(f: Any, name: str) -> jax.Array:
    if not hasattr(f, "shape"):
        f = jnp.asarray(f)
    if len(f.shape) not in (2, 3) or min(f.shape) < 1:
        raise ValueError(
            f"{name} must be projected features of shape (N, C, dim) or (N, dim), got shape {tuple(f.shape)}."
        )
    if not jnp.issubdtype(f.dtype, jnp.floating):
        raise TypeError(f"{name} must be floating-point, got dtype {f.dtype}.")
    check_finite(f, name)
    return jnp.asarray(f)
