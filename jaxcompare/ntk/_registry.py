"""The kernel registry: one name → kernel table, the package's single vocabulary of kernel names.

Every tool reads this table: :func:`kernel` builds a kernel by name, the surrogate table and the CLI take their names
and display labels from it, and each built kernel's :class:`KernelSpec` carries the registry name, label and
normalization. The table is static (a read-only mapping defined here); adding a kernel is one entry below.

=============  ============  ==========  =========  ===========  ==================================================
name           label         normalized  projected  needs        kernel
=============  ============  ==========  =========  ===========  ==================================================
``entk``       eNTK          no          no         apply_fn     ``K[i,j,c,c'] = <g_c(x_i), g_c'(x_j)>``
``trntk``      trNTK         yes         no         apply_fn     cosine-normalized ``Σ_c <g_c(x_i), g_c(x_j)>``
``trntk0``     trNTK⁰        no          no         apply_fn     ``Σ_c <g_c(x_i), g_c(x_j)>`` (a sum over classes)
``pntk``       pNTK          yes         no         apply_fn     cosine-normalized pseudo NTK
``pntk0``      pNTK⁰         no          no         apply_fn     ``(1/C) <∇Σ_c f^c(x_i), ∇Σ_c f^c(x_j)>``
``proj_trntk`` proj-trNTK    yes         yes        apply_fn     trNTK of projected gradients ``R g_c``
``proj_pntk``  proj-pNTK     yes         yes        apply_fn     pNTK of projected gradients
``ck``         CK            yes         no         feature_fn   cosine-normalized conjugate kernel
``em``         Em            yes         no         layers_fn    cosine-normalized embedding kernel
=============  ============  ==========  =========  ===========  ==================================================

Normalization follows the reference work (Engel et al., ICLR 2024), which cosine-normalizes every kernel but
trNTK⁰ before fitting surrogates. The factories (:func:`trace_ntk`, :func:`pseudo_ntk`...) also build variants
outside the table (``proj_trntk0``, ``proj_pntk0``, ``ck0``, ``em0``: unnormalized); their specs name them so.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

from ._common import Kernel
from ._kernels import conjugate_kernel, embedding_kernel, empirical_ntk, pseudo_ntk, trace_ntk

__all__ = ["KernelInfo", "KERNELS", "kernel", "kernel_label"]


@dataclasses.dataclass(frozen=True)
class KernelInfo:
    """One registry entry.

    Attributes:
      name: registry name (``"trntk"``...), the key of :data:`KERNELS`.
      label: display label (``"trNTK"``, ``"trNTK⁰"``, ``"pNTK"``, ``"proj-trNTK"``...).
      normalized: whether the kernel is cosine-normalized.
      projected: whether it needs ``projection=`` (a :func:`random_projection` or :func:`kronecker_projection`).
      needs: the model function it is built from: ``"apply_fn"`` (logits), ``"feature_fn"`` (penultimate
        features) or ``"layers_fn"`` (per-layer outputs).
      summary: one line for tables and ``--help``.
      build: ``build(fn, **options) -> Kernel``.
    """

    name: str
    label: str
    normalized: bool
    projected: bool
    needs: str
    summary: str
    build: Callable[..., Kernel]


def _entry(name, label, normalized, projected, needs, summary, build) -> tuple[str, KernelInfo]:
    return name, KernelInfo(name, label, normalized, projected, needs, summary, build)


#: name → :class:`KernelInfo`, read-only; the one table of kernel names (see the module docstring)
KERNELS: Mapping[str, KernelInfo] = types.MappingProxyType(
    dict(
        [
            _entry(
                "entk",
                "eNTK",
                False,
                False,
                "apply_fn",
                "full empirical NTK with class blocks (N1, N2, C, C)",
                lambda f, **o: empirical_ntk(f, **o),
            ),
            _entry(
                "trntk",
                "trNTK",
                True,
                False,
                "apply_fn",
                "trace NTK, cosine-normalized",
                lambda f, **o: trace_ntk(f, normalize=True, **o),
            ),
            _entry(
                "trntk0",
                "trNTK⁰",
                False,
                False,
                "apply_fn",
                "trace NTK, unnormalized (a sum over classes)",
                lambda f, **o: trace_ntk(f, normalize=False, **o),
            ),
            _entry(
                "pntk",
                "pNTK",
                True,
                False,
                "apply_fn",
                "pseudo NTK (summed-logit gradients), cosine-normalized",
                lambda f, **o: pseudo_ntk(f, normalize=True, **o),
            ),
            _entry(
                "pntk0",
                "pNTK⁰",
                False,
                False,
                "apply_fn",
                "pseudo NTK, unnormalized",
                lambda f, **o: pseudo_ntk(f, normalize=False, **o),
            ),
            _entry(
                "proj_trntk",
                "proj-trNTK",
                True,
                True,
                "apply_fn",
                "trNTK of randomly projected gradients",
                lambda f, **o: trace_ntk(f, normalize=True, **o),
            ),
            _entry(
                "proj_pntk",
                "proj-pNTK",
                True,
                True,
                "apply_fn",
                "pNTK of randomly projected gradients",
                lambda f, **o: pseudo_ntk(f, normalize=True, **o),
            ),
            _entry(
                "ck",
                "CK",
                True,
                False,
                "feature_fn",
                "conjugate kernel of the penultimate features, cosine-normalized",
                lambda f, **o: conjugate_kernel(f, normalize=True, **o),
            ),
            _entry(
                "em",
                "Em",
                True,
                False,
                "layers_fn",
                "embedding kernel over every layer's outputs, cosine-normalized",
                lambda f, **o: embedding_kernel(f, normalize=True, **o),
            ),
        ]
    )
)


def _info(name: Any) -> KernelInfo:
    if not isinstance(name, str) or name not in KERNELS:
        raise ValueError(f"unknown kernel name {name!r}; expected one of {', '.join(KERNELS)}.")
    return KERNELS[name]


def kernel_label(name: str) -> str:
    """Display label of a registry name: ``kernel_label("trntk0") == "trNTK⁰"``.

    Raises:
      ValueError: for a name not in :data:`KERNELS` (the message lists the valid names).
    """
    return _info(name).label


def kernel(name: str, fn: Callable, **options: Any) -> Kernel:
    """Build the kernel called ``name`` in :data:`KERNELS` from the model function ``fn``.

    Args:
      name: a registry name (``"entk"``, ``"trntk"``, ``"trntk0"``, ``"pntk"``, ``"pntk0"``, ``"proj_trntk"``,
        ``"proj_pntk"``, ``"ck"``, ``"em"``).
      fn: the function the entry needs (``KERNELS[name].needs``): ``apply_fn(params, x) -> (N, C)`` logits,
        ``feature_fn(params, x) -> (N, D)`` or ``layers_fn(params, x) -> pytree of (N, ...)``.
      **options: passed to the factory: ``implementation=`` for the gradient kernels, ``projection=`` (required,
        and only accepted) for the projected ones, ``precision=`` for every kernel (see :func:`precision`).
        Normalization is part of the name: ``normalize=`` is refused.

    Returns:
      A :class:`Kernel` ``kernel_fn(params, x1, x2=None)``; ``kernel_fn.spec`` carries name, label, normalization.

    Example:
      >>> def apply_fn(params, x):                         # a tiny two-layer MLP: (N, 3) -> (N, 2) logits
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x = jax.random.normal(k3, (10, 3))
      >>> k = jc.kernel("trntk0", apply_fn)
      >>> k.spec.name, k.spec.label, k.spec.normalize
      ('trntk0', 'trNTK⁰', False)
      >>> bool(jnp.allclose(k(params, x), jc.trace_ntk(apply_fn, normalize=False)(params, x)))
      True
      >>> p = jc.random_projection(jax.random.key(1), 256)
      >>> jc.kernel("proj_trntk", apply_fn, projection=p).spec.label
      'proj-trNTK'
    """
    info = _info(name)
    if not callable(fn):
        raise TypeError(f"fn must be the model's {info.needs}, a callable (params, x) -> ..., got {type(fn).__name__}.")
    if "normalize" in options:
        raise ValueError(
            f"kernel({name!r}, ...) does not take normalize=: normalization is part of the name "
            f"({name!r} is {'' if info.normalized else 'un'}normalized); see jaxcompare.ntk.KERNELS."
        )
    if info.projected and options.get("projection") is None:
        raise ValueError(
            f"kernel {name!r} needs projection=jc.random_projection(key, dim) "
            "(or jc.kronecker_projection(key, dim_in, dim_out))."
        )
    if not info.projected and "projection" in options:
        raise ValueError(
            f"kernel {name!r} takes no projection=; use 'proj_trntk' or 'proj_pntk' for projected kernels."
        )
    allowed = {
        "apply_fn": ("implementation", "projection", "precision"),
        "feature_fn": ("precision",),
        "layers_fn": ("precision",),
    }[info.needs]
    extra = sorted(set(options) - set(allowed))
    if extra:
        raise TypeError(
            f"kernel {name!r} got unexpected option(s) {', '.join(extra)}; it accepts "
            f"{', '.join(allowed) or 'no options'}."
        )
    return info.build(fn, **options)
