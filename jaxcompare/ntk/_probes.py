"""Output probes: the trace over a model's outputs estimated from a few random combinations of them.

The trace NTK sums over the model's ``M`` outputs (classes, or positions × classes for per-token logits):
``K0(x, x') = Σ_c <g_c(x), g_c(x')> = tr(J(x) J(x')ᵀ)`` with ``J`` the ``M × P`` Jacobian, and every projected or
exact path pays one backward pass per output. With ``p`` output probes, ``p`` random sign vectors ``v_k ∈ {±s}^M``
replace the ``M`` unit vectors: each backward pass gives ``J(x)ᵀ v_k``, the gradient of ``Σ_c v_kc f_c(x)``
(Hutchinson's trace estimator, applied to the cross-kernel ``A = J(x) J(x')ᵀ``)::

    E[v vᵀ] = s² I   ⇒   E[Σ_k <Jᵀ v_k, J'ᵀ v_k>] = h s² tr(J J'ᵀ)       (h probes, s = 1/√h: unbiased)
    Var = (1/h) Σ_{c≠c'} (A_cc'² + A_cc' A_c'c)

so the variance comes only from the off-diagonal blocks of the eNTK (the kernel between different outputs): zero
for a last layer alone, small when the eNTK is close to block-diagonal (``Θ ⊗ I`` at infinite width). The cost is
``p`` backward passes per example instead of ``M``.

**Layout.** The probes come in two independent sets ``A`` and ``B`` of ``h = p/2`` each. The features of probe
``k`` are the first half of the projection's features of ``J ᵀ v^A_k`` followed by the second half of those of
``Jᵀ v^B_k``: features ``(N, h, dim)``, and ``Σ_k <φ_k(x), φ_k(x')>`` is the average of two independent estimates
(each with ``h`` probes and half the projection), so

- it is unbiased for the projected trace kernel, hence for the trNTK⁰;
- its variance is that of one estimate with ``p`` probes and the full projection;
- the two halves stay independent sketches (now of independent probes too), so
  :func:`jaxcompare.projected_kernel`'s error estimate from the halves counts the probes' variance as well as the
  projection's, with no flag to remember.

**How many probes.** The probes' variance grows with the kernel between different outputs. Ten classes of a
quarter-width ResNet-18 (N = 256, K = 1024; ``python benchmarks/bench_output_probes.py --only resnet``): mean
|Δcos| 0.0010 with one pass per class, 0.0026 / 0.0036 / 0.0053 with 8 / 4 / 2 probes. Per-token logits are
strongly correlated across positions: a transformer's 64 × 10 outputs (N = 16) gave 0.0024 per output (640
passes), 0.0156 with 32 probes and 0.034 with 8 (0.028 over 12 keys). The error estimate from the halves is
unbiased on average (8 probes, 12 keys: 0.024 estimated, 0.028 observed) but, resting on few independent probes,
varies from key to key (0.009–0.045): with few probes read it as an order of magnitude, or compare two keys.

Probe signs come from ``fold_in(projection.key, "prob")``: the same key gives the same probes for ``x1`` and ``x2``
and in every block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._validation import check_int

_TAG = 0x70726F62  # "prob": the probes' stream of a projection's key


def check_output_probes(output_probes) -> int | None:
    """``output_probes`` validated: None, or an even int ``>= 2``."""
    if output_probes is None:
        return None
    p = check_int(output_probes, "output_probes", min=2)
    if p % 2:
        raise ValueError(
            f"output_probes must be even (two independent sets of probes give the error estimate), got {p}."
        )
    return p


def check_use(output_probes: int, n_outputs: int, summed: bool) -> None:
    """Refuse probes where they cannot help: a summed-logit gradient (pNTK), or no fewer probes than outputs."""
    if summed:
        raise ValueError(
            "output_probes estimate the trace over outputs (trace_ntk, project_gradients); the pNTK and summed=True "
            "already use one gradient of the summed outputs: use a projection without output_probes."
        )
    if output_probes >= n_outputs:
        raise ValueError(
            f"output_probes={output_probes} is not fewer than the model's {n_outputs} outputs: one backward pass per "
            "output is exact and costs no more; drop output_probes (or use fewer probes)."
        )


def probe_matrix(key: jax.Array, output_probes: int, n_outputs: int, dtype) -> jax.Array:
    """``(p, M)`` probes: rows ``[0, p/2)`` the set ``A``, ``[p/2, p)`` the set ``B``; entries ``±1/√(p/2)``."""
    h = output_probes // 2
    # signs from the top bit of 32-bit words: the same with or without jax_enable_x64 (jax.random.rademacher draws
    # through a uniform of its float dtype, whose bits differ when x64 is on)
    words = jax.random.bits(jax.random.fold_in(key, _TAG), (output_probes, n_outputs), jnp.uint32)
    signs = 1.0 - 2.0 * (words >> 31).astype(jnp.float32)
    return (signs * (1.0 / h**0.5)).astype(dtype)


def ab_layout(phi: jax.Array) -> jax.Array:
    """``(N, p, dim)`` features of the ``p`` probes -> ``(N, p/2, dim)``: set ``A``'s first halves, set ``B``'s
    second halves (module docstring)."""
    h, half = phi.shape[1] // 2, phi.shape[2] // 2
    return jnp.concatenate([phi[:, :h, :half], phi[:, h:, half:]], axis=-1)
