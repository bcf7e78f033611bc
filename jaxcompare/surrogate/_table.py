"""Side-by-side faithfulness of kGLM surrogates built on every kernel of one network (the published table's shape)."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._progress import progress
from .._validation import REQUIRED, check_array, check_flag, check_int, check_key, check_labels
from ._faithfulness import faithfulness
from ._kglm import KGLM, fit_kglm, kglm_logits

__all__ = ["SurrogateRow", "SurrogateTable", "surrogate_table", "SURROGATE_KERNELS"]

#: kernels of :func:`surrogate_table` by default, in the published table's order (names and labels: the kernel
#: registry ``jaxcompare.ntk.KERNELS``; any 2-D registry kernel is accepted)
SURROGATE_KERNELS = ("trntk", "trntk0", "proj_trntk", "pntk", "proj_pntk", "ck", "em")


def _registry():
    from ..ntk import KERNELS  # lazy: keeps the surrogate core independent of how kernels are computed

    return KERNELS


def _label(name: str) -> str:
    info = _registry().get(name)
    return info.label if info is not None else name


@dataclasses.dataclass(frozen=True)
class SurrogateRow:
    """One kernel's surrogate: test accuracy, faithfulness (TAD as a fraction, τ_K, R_Miss) and costs."""

    kernel: str
    accuracy: float
    network_accuracy: float
    tad: float
    kendall_tau: float
    r_miss: float
    converged: bool
    n_iter: int
    kernel_seconds: float
    fit_seconds: float


@dataclasses.dataclass(frozen=True)
class SurrogateTable:
    """Rows of :func:`surrogate_table`, the fitted models and (optionally) the test×train kernels."""

    rows: tuple[SurrogateRow, ...]
    models: dict[str, KGLM]
    test_kernels: dict[str, jax.Array]
    network_logits: jax.Array

    def __getitem__(self, kernel: str) -> SurrogateRow:
        for r in self.rows:
            if r.kernel == kernel:
                return r
        raise KeyError(f"no row for kernel {kernel!r}; rows: {[r.kernel for r in self.rows]}.")

    def as_dicts(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) for r in self.rows]

    def to_markdown(self) -> str:
        """A markdown table (TAD in percentage points)."""
        head = "| kernel | test acc | TAD | τ_K | R_Miss | converged | kernel time | fit time |"
        lines = [head, "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(
                f"| {_label(r.kernel)} | {r.accuracy:.4f} | {100 * r.tad:+.2f}% | {r.kendall_tau:.3f} "
                f"| {r.r_miss:.3f} | {'yes' if r.converged else 'no'} ({r.n_iter} it) | {r.kernel_seconds:.2f} s "
                f"| {r.fit_seconds:.2f} s |"
            )
        return "\n".join(lines)


def _kernel_fns(apply_fn, feature_fn, layers_fn, key, names, projection_dim, projection_kind):
    from .. import ntk  # lazy: keeps the surrogate core independent of how kernels are computed

    # one key per projected kernel of the registry, in registry order (proj_trntk: the first, proj_pntk: the second)
    projected = [n for n, info in ntk.KERNELS.items() if info.projected]
    keys = (
        dict(zip(projected, jax.random.split(check_key(key), len(projected))))
        if any(n in projected for n in names)
        else {}
    )
    fns = {"apply_fn": apply_fn, "feature_fn": feature_fn, "layers_fn": layers_fn}
    out = {}
    for n in names:
        info = ntk.KERNELS[n]
        opts = {"projection": ntk.random_projection(keys[n], projection_dim, projection_kind)} if info.projected else {}
        out[n] = ntk.kernel(n, fns[info.needs], **opts)
    return out


def surrogate_table(
    key: Any,
    apply_fn: Callable,
    params: Any,
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any = REQUIRED,
    /,
    *,
    feature_fn: Callable | None = None,
    layers_fn: Callable | None = None,
    kernels: Sequence[str] | None = None,
    loss: str = "ovr",
    l2: float = 1e-4,
    class_weight: Any = "balanced",
    projection_dim: int = 10240,
    projection_kind: str = "rademacher",
    block_size: int | None = None,
    keep_kernels: bool = True,
    progress_bar: bool | None = None,
    **fit_kwargs: Any,
) -> SurrogateTable:
    r"""Fit a kGLM surrogate on each kernel of one network and report their faithfulness side by side.

    For every kernel ``κ``: ``K_tr = κ(X_train, X_train)``, ``K_te = κ(X_test, X_train)``,
    ``fit_kglm(K_tr, y_train)`` on the ground-truth training labels, then :func:`faithfulness` of
    ``kglm_logits(K_te)`` to ``apply_fn(params, x_test)``. Kernels are those of the registry
    ``jaxcompare.ntk.KERNELS`` (names and labels); the unnormalized ones (trNTK⁰, pNTK⁰) are standardized by the
    standard deviation of their train×train block (the published protocol for trNTK⁰). The defaults
    reproduce the published fit: one-vs-rest, ``l2 = 1e-4`` (SGDClassifier ``alpha``), balanced class weights.
    τ_K compares softmax probabilities of both models' logits (for one-vs-rest, of the ``C`` margins): on a digits
    MLP this ranks more faithfully than scikit-learn's normalized sigmoids (:func:`kglm_proba`), which saturate
    (τ_K 0.74 vs 0.62 at ``l2 = 1e-4``); pass those to :func:`faithfulness` yourself to compare.

    Kernels (``kernels=None``: every one computable from the functions given): ``"trntk"``, ``"trntk0"``,
    ``"proj_trntk"``, ``"pntk"``, ``"proj_pntk"`` (from ``apply_fn``; the projected ones need ``key``),
    ``"ck"`` (needs ``feature_fn``), ``"em"`` (needs ``layers_fn``); ``"pntk0"`` on request.

    Args:
      key: a ``jax.random.key`` for the projected kernels (split once per projected kernel), or ``None`` when no
        projected kernel is asked for. The first seven arguments are positional.
      apply_fn: ``apply_fn(params, x) -> (N, C)`` logits.
      params: the trained parameters.
      x_train, y_train: ``(N, ...)`` training inputs (or a pytree of arrays with one leading size, e.g. tokens and
        mask) and ``(N,)`` labels; x_test, y_test likewise ``(T, ...)``, of ``x_train``'s structure.
      feature_fn: ``feature_fn(params, x) -> (N, D)`` penultimate features, for CK.
      layers_fn: ``layers_fn(params, x) -> pytree of (N, ...)`` per-layer outputs, for Em.
      kernels: names to compute, in order.
      loss, l2, class_weight, ``**fit_kwargs``: passed to :func:`fit_kglm`.
      projection_dim, projection_kind: of :func:`jaxcompare.random_projection` (published: 10240, Rademacher).
      block_size: compute kernels in tiles with :func:`jaxcompare.batched`.
      keep_kernels: keep the test×train kernels in the result (for :func:`attribute`).
      progress_bar: show progress over kernels (default: on unless ``JAXCOMPARE_PROGRESS=0``).

    Returns:
      :class:`SurrogateTable` (``.rows``, ``.to_markdown()``, ``.models``, ``.test_kernels``).

    Example:
      >>> def feature_fn(params, x):                            # penultimate features of a tiny MLP
      ...     return jnp.tanh(x @ params["w1"])
      >>> def apply_fn(params, x):                              # its logits: 4 inputs, 3 classes
      ...     return feature_fn(params, x) @ params["w2"]
      >>> def layers_fn(params, x):                             # per-layer outputs
      ...     return [feature_fn(params, x), apply_fn(params, x)]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (4, 8)), "w2": jax.random.normal(k2, (8, 3))}
      >>> x = jax.random.normal(k3, (30, 4))
      >>> y = jnp.argmax(x[:, :3], axis=1)
      >>> x_tr, y_tr, x_te, y_te = x[:20], y[:20], x[20:], y[20:]
      >>> table = jc.surrogate_table(None, apply_fn, params, x_tr, y_tr, x_te, y_te, kernels=("trntk", "ck", "em"),
      ...                            feature_fn=feature_fn, layers_fn=layers_fn, progress_bar=False)
      >>> [(r.kernel, r.converged) for r in table.rows]   # projected kernels need a key instead of None
      [('trntk', True), ('ck', True), ('em', True)]
      >>> table.models["ck"].W.shape                            # one kGLM per kernel: W is (C, M)
      (3, 20)
      >>> print(table.to_markdown())                            # accuracy, TAD, τ_K, R_Miss, timings
      | kernel | test acc | TAD | τ_K | R_Miss | converged | kernel time | fit time |
      |---|---|---|---|---|---|---|---|
      | trNTK | ...
      | CK | ...
      | Em | ...
    """
    if callable(key) and not hasattr(key, "dtype"):  # the former order: surrogate_table(apply_fn, ..., key=k)
        if y_test is not REQUIRED:
            raise TypeError(
                "surrogate_table() takes 7 positional arguments (key, apply_fn, params, x_train, "
                "y_train, x_test, y_test); got 8."
            )
        warnings.warn(
            "surrogate_table(apply_fn, params, ..., key=k) is deprecated; pass the key first: "
            "surrogate_table(key, apply_fn, params, x_train, y_train, x_test, y_test) (key may be None when no "
            "projected kernel is asked for).",
            DeprecationWarning,
            stacklevel=2,
        )
        key, apply_fn, params, x_train, y_train, x_test, y_test = (
            fit_kwargs.pop("key", None),
            key,
            apply_fn,
            params,
            x_train,
            y_train,
            x_test,
        )
    elif "key" in fit_kwargs:
        raise TypeError("surrogate_table() got key twice: it is the first positional argument.")
    if y_test is REQUIRED:
        raise TypeError("surrogate_table() missing the argument y_test (the test labels).")
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable, got {type(apply_fn).__name__}.")
    keep_kernels = check_flag(keep_kernels, "keep_kernels")
    if key is not None:
        key = check_key(key, "key")
    registry = _registry()
    given = {"apply_fn": apply_fn, "feature_fn": feature_fn, "layers_fn": layers_fn}
    if kernels is None:
        names = [
            n
            for n in SURROGATE_KERNELS
            if given[registry[n].needs] is not None and not (registry[n].projected and key is None)
        ]
    else:
        names = [kernels] if isinstance(kernels, str) else list(kernels)  # one name, or several
        for n in names:
            if n not in registry or registry[n].name == "entk":
                valid = [m for m in registry if m != "entk"]
                raise ValueError(f"unknown kernel {n!r}; expected some of {', '.join(valid)}.")
        if len(set(names)) != len(names):
            raise ValueError(f"kernels has duplicates: {names}.")
        for n in names:
            need = registry[n].needs
            if given[need] is None:
                what = {
                    "feature_fn": "feature_fn(params, x) -> (N, D) penultimate features",
                    "layers_fn": "layers_fn(params, x) -> per-layer outputs",
                }.get(need, need)
                raise ValueError(f"kernel {n!r} needs {what}.")
        if any(registry[n].projected for n in names) and key is None:
            raise ValueError("projected kernels need an explicit key as the first argument, e.g. jax.random.key(0).")
    check_int(projection_dim, "projection_dim", min=1)
    from ..ntk._inputs import batch_size, validate_pair

    # arrays (N, ...) or pytrees of them (tokens and mask, ...) of one structure; complex inputs refused
    x_tr, x_te = validate_pair(x_train, x_test, ("x_train", "x_test"))
    net_te = check_array(apply_fn(params, x_te), "apply_fn(params, x_test)", ndim=2)
    C = int(net_te.shape[1])
    y_tr = check_labels(y_train, "y_train", C, length=batch_size(x_tr))
    y_te = check_labels(y_test, "y_test", C, length=batch_size(x_te))

    fns = _kernel_fns(apply_fn, feature_fn, layers_fn, key, names, projection_dim, projection_kind)
    if block_size is not None:
        from ..ntk import batched

        fns = {n: batched(f, block_size) for n, f in fns.items()}
    rows, models, test_kernels = [], {}, {}
    for name in progress(names, total=len(names), desc="surrogates", enabled=progress_bar):
        t0 = time.perf_counter()
        K_tr = jax.block_until_ready(fns[name](params, x_tr))
        K_te = jax.block_until_ready(fns[name](params, x_te, x_tr))
        t1 = time.perf_counter()
        model = fit_kglm(
            K_tr,
            y_tr,
            n_classes=C,
            loss=loss,
            l2=l2,
            class_weight=class_weight,
            standardize=not registry[name].normalized,
            **{"throw": False, **fit_kwargs},
        )
        jax.block_until_ready(model.W)
        t2 = time.perf_counter()
        del K_tr
        f = faithfulness(net_te, kglm_logits(model, K_te), y_te)
        rows.append(
            SurrogateRow(
                kernel=name,
                accuracy=float(f.surrogate_accuracy),
                network_accuracy=float(f.network_accuracy),
                tad=float(f.tad),
                kendall_tau=float(f.kendall_tau),
                r_miss=float(f.r_miss),
                converged=bool(model.converged),
                n_iter=int(model.n_iter),
                kernel_seconds=t1 - t0,
                fit_seconds=t2 - t1,
            )
        )
        models[name] = model
        if keep_kernels:
            test_kernels[name] = K_te
    return SurrogateTable(tuple(rows), models, test_kernels, jnp.asarray(net_te))
