"""The records of the API conformance registry: a :class:`Case` per public function, an :class:`Arg` per argument
that the suite feeds bad values, and the bad values themselves (:func:`probes`).

A case declares only facts about the function (valid example inputs, which arguments are arrays and of what kind,
whether it is documented to run under ``jit``/``vmap`` and to keep the floating dtype). ``tests/test_conformance.py``
derives every check from these facts, so covering a new public function is one ``Case`` in one of the area modules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

#: the error types a bad input may raise (a case adds its own through ``Case.errors``)
ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FloatingPointError)

#: the probes each kind of argument receives (``Arg.bad`` adds or replaces probes)
KIND_PROBES: dict[str, tuple[str, ...]] = {
    "float": ("nan", "inf", "empty", "rank", "dtype"),  # a real floating array
    "prob": ("nan", "inf", "empty", "rank", "dtype", "range"),  # probabilities in [0, 1]
    "labels": ("empty", "rank", "dtype", "range"),  # integer class labels
    "mask": ("empty", "rank", "dtype"),  # a boolean mask
    "key": ("dtype",),  # a typed PRNG key
    "tree": ("nan", "inf"),  # a parameter pytree (its first floating leaf is spoiled)
    "scalar": ("nan", "inf"),  # a real number
    "other": (),  # anything else: only the probes of ``Arg.bad``
}

NOT_DOCUMENTED = "not documented to run under this transform"
VMAP_BUDGET = (
    "documented; vmap == loop is compiled here only for alpha_hat, auroc, kendall_tau, cka, fit_kglm (over l2), pca "
    "and lwr.kernels, whose batching code the others share (compile budget)"
)
CHECKED_BUDGET = (
    "in the checked-mode list; checked(jit(f)) is compiled here for alpha_hat, accuracy, fit_kglm and faithfulness "
    "(compile budget); the traced checks themselves are shared helpers of jaxcompare._checked"
)
WRAPPER = "a bootstrap/permutation/batching wrapper of a function whose dtype is checked here (compile budget)"
HOST = "host-side function (NumPy/SciPy on concrete values), documented as not traceable"
NOT_ARRAY = "returns no floating array (a record of Python values, a string or a file)"


@dataclasses.dataclass(frozen=True)
class Arg:
    """An argument of a case that receives bad values.

    Attributes:
      name: its key in the case's example dict.
      kind: one of :data:`KIND_PROBES` (which default probes apply).
      label: the text the error message must contain (default ``name``).
      bad: extra or replacing probes: ``{probe: value or callable(valid value) -> bad value}``.
      skip: ``{probe: reason}`` for default probes that do not apply (e.g. "any shape is valid").
      xfail: ``{probe: defect}``: a known defect in a module owned by someone else (strict xfail).
    """

    name: str
    kind: str = "float"
    label: str | None = None
    bad: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    skip: Mapping[str, str] = dataclasses.field(default_factory=dict)
    xfail: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def probe_names(self) -> tuple[str, ...]:
        names = [p for p in KIND_PROBES[self.kind] if p not in self.skip]
        return tuple(names + [p for p in self.bad if p not in names])

    @property
    def text(self) -> str:
        return self.label or self.name


@dataclasses.dataclass(frozen=True)
class Case:
    """One public function and the facts the conformance suite derives its checks from.

    Attributes:
      name: qualified public name (``"jaxcompare.alpha_hat"``, ``"jaxcompare.embed.pca"``).
      make: ``make(rng) -> dict`` of valid example arguments (small; different seeds give different values of the
        same shapes, used by the ``vmap`` check).
      call: ``call(**example)`` calls the function (default: the public function with the example as keywords).
      args: the arguments that receive bad values.
      jit: ``True`` if documented to run under ``jax.jit`` (checked: jit == eager), else the reason why not.
      traced: the example entries traced under ``jit`` (default: every ``Arg`` of an array kind).
      vmap: the example entries documented to be ``vmap``-able (checked: vmap == loop), or the reason why not.
      dtype: ``True`` if floating outputs keep the floating dtype of the inputs (float32 and float64), or why not.
      checked: ``True`` if ``jaxcompare.checked(jax.jit(f))`` reports a NaN in the first traced floating argument;
        otherwise the reason (e.g. documented as "only shapes are checked under jit").
      run: ``True``: the valid example runs here (and must give finite floating outputs); otherwise where its
        valid runs are tested (for functions too slow to compile within this suite's budget; the bad inputs are
        still probed, and then ``jit``/``vmap``/``dtype`` must be reasons too).
      out: maps the result to what is compared / dtype-checked (default: the result).
      errors: error types accepted for bad inputs, besides :data:`ERRORS`.
      rtol: tolerance of jit == eager and vmap == loop (the same arithmetic, reordered by XLA).
      xfail: ``{check: defect}`` for derived checks (``"jit"``, ``"vmap"``, ``"float32"``, ``"float64"``,
        ``"checked"``) that fail because of a known defect in a module owned by someone else (strict xfail).
    """

    name: str
    make: Callable[[np.random.Generator], dict]
    call: Callable[..., Any] | None = None
    args: tuple[Arg, ...] = ()
    jit: bool | str = NOT_DOCUMENTED
    traced: tuple[str, ...] | None = None
    vmap: tuple[str, ...] | str = NOT_DOCUMENTED
    dtype: bool | str = NOT_ARRAY
    checked: bool | str = "not in the checked-mode list of jaxcompare._checked"
    run: bool | str = True
    out: Callable[[Any], Any] | None = None
    errors: tuple[type[BaseException], ...] = ()
    rtol: float = 1e-6
    xfail: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def function(self) -> Callable:
        import importlib

        module, _, attr = self.name.rpartition(".")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, example: Mapping[str, Any]) -> Any:
        fn = self.call if self.call is not None else self.function()
        return fn(**example)

    def traced_names(self) -> tuple[str, ...]:
        if self.traced is not None:
            return self.traced
        return tuple(a.name for a in self.args if a.kind in ("float", "prob", "labels", "mask", "key", "tree"))


# --- bad values ------------------------------------------------------------------------------------------------------


def is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _is_float_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray)) and not is_key(x) and np.issubdtype(x.dtype, np.floating)


def spoil(x: Any, value: float) -> Any:
    """``x`` with its first entry replaced by ``value`` (NaN, inf...), the dtype kept when it is floating."""
    a = np.array(x, dtype=np.result_type(np.asarray(x).dtype, np.float32), copy=True)
    a.reshape(-1)[0] = value
    return a


def spoil_tree(tree: Any, value: float) -> Any:
    """``tree`` with the first entry of its first floating leaf replaced by ``value``."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    for i, leaf in enumerate(leaves):
        if _is_float_array(leaf) or isinstance(leaf, float):
            leaves[i] = spoil(leaf, value)
            break
    return jax.tree_util.tree_unflatten(treedef, leaves)


def bad_value(arg: Arg, probe: str, valid: Any) -> Any:
    """The bad value of ``probe`` for the argument ``arg`` whose valid value is ``valid``."""
    if probe in arg.bad:
        b = arg.bad[probe]
        return b(valid) if callable(b) else b
    kind = arg.kind
    if kind == "tree":
        return spoil_tree(valid, {"nan": np.nan, "inf": np.inf}[probe])
    if kind == "key" and probe == "dtype":
        return np.array([0.5, 1.5])  # floats where a key is expected
    if kind == "scalar" and probe in ("nan", "inf"):
        return float(probe)
    if probe == "nan":
        return spoil(valid, np.nan)
    if probe == "inf":
        return spoil(valid, -np.inf if kind == "prob" else np.inf)
    a = np.asarray(valid)
    if probe == "empty":
        return a[:0]
    if probe == "rank":
        return a[..., None]
    if probe == "dtype":
        if kind in ("float", "prob", "scalar"):
            return a.astype(np.complex64) + 1j  # complex where a real array is expected
        if kind == "labels":
            return a.astype(np.float64) + 0.5  # fractions where class labels are expected
        if kind == "mask":
            return a.astype(np.float64) + 0.25  # neither bool nor 0/1
    if probe == "range":
        if kind == "prob":
            return spoil(valid, 1.5)
        if kind == "labels":
            b = np.array(a, copy=True)
            b.reshape(-1)[0] = -1
            return b
    raise KeyError(f"no default {probe!r} probe for kind {kind!r}; give it in Arg.bad")


# --- comparison of results -------------------------------------------------------------------------------------------


def leaves(x: Any) -> list[Any]:
    """Every array/number/string in a result (pytrees, dataclasses, named tuples, mappings, sequences)."""
    if isinstance(x, (jax.Array, np.ndarray, np.generic, float, int, complex, bool, str, bytes)) or x is None:
        return [x]
    if isinstance(x, Mapping):
        return [leaf for k in sorted(x, key=str) for leaf in leaves(x[k])]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return [leaf for f in dataclasses.fields(x) for leaf in leaves(getattr(x, f.name))]
    if isinstance(x, (tuple, list)):
        return [leaf for item in x for leaf in leaves(item)]
    return [leaf for leaf in jax.tree_util.tree_leaves(x) if leaf is not x] or [x]


def float_leaves(x: Any) -> list[Any]:
    """The floating arrays of a result (JAX or NumPy), the ones whose dtype must follow the inputs'."""
    out = []
    for leaf in leaves(x):
        if _is_float_array(leaf):
            out.append(leaf)
    return out


def to_float32(x: Any) -> Any:
    """Floating arrays and pytrees of them cast to float32 (keys, ints and other values unchanged)."""

    def cast(leaf: Any) -> Any:
        if _is_float_array(leaf):
            return leaf.astype(np.float32)  # a JAX array stays one, a NumPy array too
        return leaf

    return jax.tree_util.tree_map(cast, x)
