"""Per-layer spectral analysis of a model's parameters (WeightWatcher's analysis, for JAX pytrees)."""

from __future__ import annotations

import dataclasses
import re
import types
import warnings
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._paths import key_parts
from .._validation import (
    at_least_float32,
    check_array,
    check_choice,
    check_finite_tree,
    check_float,
    check_int,
    check_key,
)
from ._mp_fit import TW1_Q99, mp_bulk_fit
from ._powerlaw import KS_CONVENTIONS, MIN_DISTINCT, powerlaw_fit, powerlaw_gof

__all__ = ["LayerSpectra", "analyze_params", "report_rows", "format_report", "CONV_MODES", "HEAD_MODES"]

CONV_MODES = ("flatten", "slices")
HEAD_MODES = ("merge", "split")
# Attention projections stored with a heads axis (flax DenseGeneral / nnx LinearGeneral: query (d, heads, head_dim),
# out (heads, head_dim, d)). Recognized by the module's name (the key before the leaf's own); "q"/"k"/"v"/"o"/"out"
# and "proj" only inside a module whose name holds "attn"/"attention"/"mha".
_INTO_HEADS = frozenset({"query", "key", "value", "qkv", "q_proj", "k_proj", "v_proj", "qkv_proj", "in_proj", "c_attn"})
_INTO_HEADS_IN_ATTENTION = frozenset({"q", "k", "v", "wq", "wk", "wv"})
_OUT_OF_HEADS = frozenset({"o_proj", "out_proj"})
_OUT_OF_HEADS_IN_ATTENTION = frozenset({"out", "o", "wo", "proj", "c_proj", "dense"})
COLUMNS = (
    "path", "group", "shape", "matrix", "n", "m", "n_matrices", "ratio", "lambda_max", "stable_rank",
    "mp_sigma2", "mp_edge", "outlier_threshold", "n_outliers",
    "alpha", "xmin", "ks", "alpha_sigma", "n_tail", "p_value", "note",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class LayerSpectra:
    """Result of :func:`analyze_params`: a tidy table, one row per analysed weight matrix.

    Attributes:
      rows: one mapping per layer with the keys of ``COLUMNS`` (Python scalars; NaN only where ``note`` says why):
        ``path`` (``/``-joined pytree key path), ``group`` (the path without its last key: the module), ``shape``
        (the parameter's), ``matrix`` (``"dense"``, ``"conv flatten"``, ``"conv slices"``, ``"heads merged"``,
        ``"heads split"`` or ``"matrix_fn"``), ``n``
        and ``m`` (larger and smaller side of each analysed matrix), ``n_matrices`` (1, or the pooled slices),
        ``ratio`` (``m/n``), ``lambda_max``, ``stable_rank``, the Marchenko–Pastur fit ``mp_sigma2``, ``mp_edge``,
        ``outlier_threshold``, ``n_outliers``, the power-law tail ``alpha``, ``xmin``, ``ks``, ``alpha_sigma``,
        ``n_tail``, the bootstrap ``p_value`` (NaN without a key: "no bootstrap" in ``note``), ``note``.
      skipped: ``{"path", "shape", "reason"}`` for every leaf not analysed (biases, 1-D, tiny, integer).
      eigenvalues: path → ascending eigenvalues of ``WᵀW/N`` (read-only NumPy, the parameter's dtype; float32 for
        float16/bfloat16 layers, whose SVD runs in float32).
      settings: every option used.
    """

    rows: tuple
    skipped: tuple
    eigenvalues: Mapping[str, np.ndarray]
    settings: Mapping[str, Any]

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, path: str) -> Mapping[str, Any]:
        """The row of layer ``path``."""
        for r in self.rows:
            if r["path"] == path:
                return r
        raise KeyError(f"no analysed layer {path!r}; analysed: {[r['path'] for r in self.rows]}")

    def to_dict(self, *, eigenvalues: bool = True) -> dict:
        """Plain JSON-serializable dict: ``{"layers", "skipped", "settings"[, "eigenvalues"]}``."""
        out = {
            "layers": [dict(r, shape=list(r["shape"])) for r in self.rows],
            "skipped": [dict(s, shape=list(s["shape"])) for s in self.skipped],
            "settings": dict(self.settings),
        }
        if eigenvalues:
            out["eigenvalues"] = {k: v.astype(np.float64).tolist() for k, v in self.eigenvalues.items()}
        return out

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame`` (needs pandas: ``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "LayerSpectra.to_pandas needs pandas: pip install pandas (or use .rows / .to_dict())."
            ) from None
        return pd.DataFrame([dict(r) for r in self.rows], columns=list(COLUMNS))


@partial(jax.jit, static_argnames=("n",))
def _eigs(mats: jax.Array, n: int) -> jax.Array:
    """Ascending pooled eigenvalues ``s²/N`` of a ``(K, r, c)`` stack (singular values: stable for float32)."""
    s = jnp.linalg.svd(mats, compute_uv=False)
    return jnp.sort((s * s).reshape(-1) / n)


_LEAF_NAMES = frozenset({"kernel", "bias", "weight", "scale", "embedding", "w", "b"})


def _parts(path: str) -> list[str]:
    """Lower-case path parts without an nnx Variable's box: a checkpoint written from ``nnx.state(model)`` by other
    tools names its leaves ``query/kernel/value``."""
    parts = [p.lower() for p in path.split("/")]
    parts[-1] = re.sub(r"\[\d+\]$", "", parts[-1])  # one layer of a stacked (scanned) parameter: "kernel[3]"
    if len(parts) > 2 and parts[-1] == "value" and parts[-2] in _LEAF_NAMES:
        parts = parts[:-1]
    return parts


def _heads_layout(path: str, ndim: int) -> str | None:
    """``"into"`` (``(d, *heads)``: a query/key/value projection), ``"out of"`` (``(*heads, d)``: the output
    projection) or ``None``: from the module's name, for kernels of 3 or more axes."""
    parts = _parts(path)
    if ndim < 3 or len(parts) < 2:
        return None
    module, outer = parts[-2], parts[:-2]
    in_attention = any("attn" in p or "attention" in p or "mha" in p for p in outer)
    if module in _INTO_HEADS or (in_attention and module in _INTO_HEADS_IN_ATTENTION):
        return "into"
    if module in _OUT_OF_HEADS or (in_attention and module in _OUT_OF_HEADS_IN_ATTENTION):
        return "out of"
    return None


def _as_stack(path: str, leaf, conv: str, heads: str, matrix_fn) -> tuple[Any, str, str | None]:
    """``(stack (K, r, c) or None, kind, skip reason)`` for one leaf."""
    shape = tuple(leaf.shape)
    if matrix_fn is not None:
        mat = matrix_fn(path, leaf)
        if mat is None:
            return None, "", "skipped by matrix_fn"
        if isinstance(mat, (np.ndarray, jax.Array)) and mat.ndim not in (2, 3):
            raise ValueError(
                f"matrix_fn({path!r}, ...) must return a 2-D matrix, a 3-D stack or None; got shape {mat.shape}."
            )
        mat = check_array(mat, f"matrix_fn({path!r}, ...)'s matrix", ndim=(2, 3))  # numbers, finite, not empty
        return (mat[None] if mat.ndim == 2 else mat), "matrix_fn", None
    if len(shape) < 2:
        return None, "", f"{len(shape)}-D (bias, scale or scalar)"
    if _parts(path)[-1] == "bias":  # a (heads, head_dim) attention bias is 2-D and no map
        return None, "", "bias (a shift, not a weight matrix)"
    if len(shape) == 2:
        return jnp.asarray(leaf)[None], "dense", None
    w = jnp.asarray(leaf)
    layout = _heads_layout(path, len(shape))
    if layout == "into":  # (d, *heads, head_dim): the map d -> heads·head_dim, or one (d, head_dim) per head
        if heads == "merge":
            return jnp.reshape(w, (1, shape[0], -1)), "heads merged", None
        return jnp.transpose(jnp.reshape(w, (shape[0], -1, shape[-1])), (1, 0, 2)), "heads split", None
    if layout == "out of":  # (*heads, head_dim, d): the map heads·head_dim -> d, or one (head_dim, d) per head
        if heads == "merge":
            return jnp.reshape(w, (1, -1, shape[-1])), "heads merged", None
        return jnp.reshape(w, (-1, shape[-2], shape[-1])), "heads split", None
    if conv == "flatten":  # flax (*spatial, cin, cout) -> (prod(spatial)·cin, cout)
        return jnp.reshape(w, (1, -1, shape[-1])), "conv flatten", None
    return jnp.reshape(w, (-1, shape[-2], shape[-1])), "conv slices", None


def _leaves(params) -> list:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError(
            "params is empty: it has no array leaves (expected a pytree of weight arrays, e.g. flax params)."
        )
    out = []
    for kp, leaf in leaves:
        path = "/".join(key_parts(kp)) or "<root>"  # nnx.state(model): "query/kernel", not "query/kernel/value"
        if not isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
            raise TypeError(
                f"params leaf {path!r} must be an array (numpy or jax), got {type(leaf).__name__}; "
                "pass only the parameter pytree (e.g. variables['params'])."
            )
        out.append((path, leaf))
    check_finite_tree(params, "params")
    return out


def _stacked_match(stacked: Any) -> Callable[[str], bool] | None:
    if stacked is None:
        return None
    if isinstance(stacked, str):
        try:
            pattern = re.compile(stacked)
        except re.error as e:
            raise ValueError(f"stacked must be a regular expression of parameter paths, got {stacked!r}: {e}") from None
        return lambda path: pattern.search(path) is not None
    if callable(stacked):
        return lambda path: bool(stacked(path))
    raise TypeError(f"stacked must be a regular expression (str) or a callable path -> bool, got {stacked!r}.")


def _expand_stacked(leaves: list, stacked: Any) -> list:
    """Leaves stacked over layers (``nn.scan``/``nnx.scan``: axis 0 is the layer) as one entry per layer,
    ``path[j]``."""
    match = _stacked_match(stacked)
    if match is None:
        return leaves
    out, hit = [], False
    for path, leaf in leaves:
        if match(path) and leaf.ndim >= 1:
            hit = True
            out.extend((f"{path}[{j}]", leaf[j]) for j in range(leaf.shape[0]))
        else:
            out.append((path, leaf))
    if not hit:
        raise ValueError(
            f"stacked={stacked!r} matched no parameter; the paths are e.g. {[p for p, _ in leaves[:4]]} (a regular "
            "expression searched in each path, e.g. 'ScanBlock' for the layers of nn.scan)."
        )
    return out


def _warn_stacked(leaves: list) -> None:
    """Warn about kernels that look stacked over layers (a scanned module): their bias has a leading axis of the
    kernel's leading size and the kernel's output shape after it — analysed whole, they would be one matrix."""
    by_module: dict[str, dict[str, Any]] = {}
    for path, leaf in leaves:
        parts = path.rsplit("/", 1)
        if len(parts) == 2:
            by_module.setdefault(parts[0], {})[_parts(path)[-1]] = (path, leaf)
    for module, leafs in by_module.items():
        kernel = leafs.get("kernel") or leafs.get("weight")
        bias = leafs.get("bias")
        if kernel is None or bias is None:
            continue
        (kpath, k), (_, b) = kernel, bias
        if k.ndim >= 3 and b.ndim >= 2 and b.shape[0] == k.shape[0] and b.shape[1:] == k.shape[k.ndim - b.ndim + 1 :]:
            warnings.warn(
                f"{kpath} of shape {tuple(k.shape)} looks stacked over {k.shape[0]} layers (a scanned module: its "
                f"bias has shape {tuple(b.shape)}); it is analysed as one matrix. Pass stacked= (a regular "
                f"expression of the stacked paths, e.g. stacked={module.split('/')[0]!r}) to analyse each layer.",
                UserWarning,
                stacklevel=3,
            )


def _parse_args(args) -> tuple[Any, Any]:
    if len(args) == 1:
        return None, args[0]
    if len(args) == 2:
        if not hasattr(args[0], "dtype"):
            raise TypeError(
                f"key must be a PRNG key from jax.random.key(seed), got {type(args[0]).__name__}; "
                "call analyze_params(key, params) (key first) or analyze_params(params) without a bootstrap."
            )
        return check_key(args[0]), args[1]
    raise TypeError(f"analyze_params takes ([key,] params): 1 or 2 positional arguments, got {len(args)}.")


NO_BOOTSTRAP_NOTE = "no bootstrap (pass a key for the p-value)"


def _tail_fit(key, lam: np.ndarray, dtype, opts: dict) -> tuple[dict, str]:
    """Power-law tail of the positive eigenvalues (NaN fields plus a note when there is no tail to fit)."""
    nan = {"alpha": np.nan, "xmin": np.nan, "ks": np.nan, "alpha_sigma": np.nan, "n_tail": 0, "p_value": np.nan}
    pos = lam[lam > lam[-1] * lam.size * np.finfo(dtype).eps]  # numerically nonzero (rank-deficient W)
    if pos.size < opts["min_tail"] or np.unique(pos).size < MIN_DISTINCT:
        return nan, f"no power-law fit: {pos.size} nonzero eigenvalues, {np.unique(pos).size} distinct"
    if pos[-1] <= pos[0] * (1 + 1e3 * np.finfo(dtype).eps):
        return nan, "no power-law fit: all nonzero eigenvalues equal (e.g. an orthogonal matrix)"
    x = jnp.asarray(pos, dtype=dtype)
    f = powerlaw_fit(x, ks=opts["ks"], min_tail=opts["min_tail"], max_candidates=opts["max_candidates"])
    out = {"alpha": float(f.alpha), "xmin": float(f.xmin), "ks": float(f.ks), "alpha_sigma": float(f.sigma),
           "n_tail": int(f.n_tail), "p_value": np.nan}  # fmt: skip
    if key is None:
        return out, NO_BOOTSTRAP_NOTE
    g = powerlaw_gof(key, x, n_boot=opts["n_boot"], ks=opts["ks"], min_tail=opts["min_tail"],
                     max_candidates=opts["boot_candidates"])  # fmt: skip
    out["p_value"] = float(g.p_value)
    return out, ""


def analyze_params(
    *args,
    conv: str = "flatten",
    heads: str = "merge",
    stacked: str | Callable[[str], bool] | None = None,
    matrix_fn: Callable[[str, Any], Any] | None = None,
    min_dim: int = 10,
    tw_margin: float = TW1_Q99,
    ks: str = "data",
    min_tail: int = 10,
    max_candidates: int | None = 2000,
    n_boot: int = 100,
    boot_candidates: int | None = 200,
) -> LayerSpectra:
    r"""Per-layer spectral analysis of a parameter pytree: ``analyze_params([key,] params, ...)``.

    For every floating leaf with ≥ 2 dimensions (others are listed in ``skipped`` with the reason), the analysed
    matrix ``W`` is (``matrix`` column):

    - ``(in, out)`` dense kernel: ``W`` itself;
    - ``(*spatial, cin, cout)`` convolution kernel (flax layout): ``conv="flatten"`` (default) reshapes it to
      ``(prod(spatial)·cin, cout)``, the matrix of the convolution acting on one patch (im2col);
      ``conv="slices"`` analyses the ``prod(spatial)`` matrices ``(cin, cout)`` and pools their eigenvalues
      (WeightWatcher's convention);
    - attention projections with a heads axis (flax ``DenseGeneral``/nnx ``LinearGeneral``: ``query``/``key``/
      ``value`` kernels ``(d, heads, head_dim)``, ``out`` kernels ``(heads, head_dim, d)``; recognised by the
      module's name, listed below): ``heads="merge"`` (default) analyses the map ``(d, heads·head_dim)`` (or
      ``(heads·head_dim, d)``), ``heads="split"`` the ``heads`` matrices ``(d, head_dim)`` (``(head_dim, d)``)
      with their eigenvalues pooled. Without this rule such a kernel would be read as a 1-D convolution
      ``(d·heads, head_dim)``, a matrix the layer never applies. Module names taken as projections into the heads:
      ``query``, ``key``, ``value``, ``qkv``, ``q_proj``, ``k_proj``, ``v_proj``, ``qkv_proj``, ``in_proj``,
      ``c_attn``, and inside a module whose name holds ``attn``/``attention``/``mha`` also ``q``, ``k``, ``v``,
      ``wq``, ``wk``, ``wv``; out of the heads: ``o_proj``, ``out_proj``, and inside such a module ``out``, ``o``,
      ``wo``, ``proj``, ``c_proj``, ``dense``;
    - other layouts (PyTorch-ordered kernels, custom names) need ``matrix_fn(path, leaf)`` returning the matrix, a
      stack of matrices, or ``None`` to skip.

    A flax nnx state (``nnx.state(model)``) is read as its plain parameters: paths end at the variable
    (``"attn/query/kernel"``), not at its ``value`` attribute.

    With ``N ≥ M`` the sides of ``W``, the spectrum is the ``M`` eigenvalues of ``WᵀW/N`` (``λ = s²/N`` from the
    singular values; ``N`` is the larger side so that iid entries of variance ``σ²`` give the Marchenko–Pastur law of
    ratio ``c = M/N ≤ 1`` scaled by ``σ²``). Per layer:

    - ``stable_rank = ‖W‖_F²/‖W‖₂² = Σλ/λ_max`` (pooled over slices);
    - MP bulk fit (:func:`mp_bulk_fit`): ``σ̂² = median(λ)/median(MP_c)``, edge ``λ₊ = σ̂²(1 + √c)²`` and the number of
      eigenvalues above the finite-size threshold ``λ₊`` plus ``tw_margin`` Tracy–Widom units (scale
      ``≈ N^{-2/3}``; default: TW₁'s 99 % quantile, ≈ 1 % false outliers per pure-noise layer);
    - power-law tail of the nonzero eigenvalues (:func:`powerlaw_fit`, ``ks`` convention): ``alpha``, ``xmin``,
      KS distance, ``alpha_sigma = (α − 1)/√n_tail``, and with a key the semi-parametric bootstrap p-value of
      Clauset et al. (2009, §4.1) (:func:`powerlaw_gof`, ``n_boot`` samples; p < 0.1 rejects a power law).

    Eigenvalues are computed in the parameters' dtype (float32 or float64) by a jitted SVD; the fits run on the host
    (this is an eager, per-layer analysis: it is not meant for ``jit``).

    Args:
      key: optional first positional argument, a ``jax.random.key`` for the bootstrap p-values (split per layer).
      params: pytree of arrays (e.g. ``variables["params"]``).
      conv: ``"flatten"`` or ``"slices"`` (above).
      heads: ``"merge"`` or ``"split"``: attention kernels with a heads axis (above).
      stacked: parameters stacked over layers by ``nn.scan``/``nnx.scan`` (axis 0 is the layer): a regular
        expression searched in each path, or a callable ``path -> bool``; each matching leaf is analysed as one
        layer per index, ``path[j]``. Without it such a kernel ``(layers, in, out)`` would be one matrix; a kernel
        whose bias looks stacked (leading size of the kernel's, then its output shape) is named in a warning.
      matrix_fn: optional ``(path, leaf) -> matrix | stack | None`` overriding the default matrices.
      min_dim: layers whose smaller side is below it are skipped (≥ 2).
      tw_margin: outlier margin in Tracy–Widom units (≥ 0).
      ks, min_tail, max_candidates: as in :func:`powerlaw_fit`.
      n_boot, boot_candidates: bootstrap size and its candidate cap (:func:`powerlaw_gof`).

    Returns:
      :class:`LayerSpectra` (``.rows``, ``.skipped``, ``.eigenvalues``, ``.to_dict()``, ``.to_pandas()``).

    Raises:
      ValueError: empty params, NaN/inf entries (the leaf is named), no analysable layer, bad options.
      TypeError: a leaf that is not an array, a bad key.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> params = {"Dense_0": {"kernel": rng.standard_normal((300, 100)), "bias": np.zeros(100)}}
      >>> res = analyze_params(jax.random.key(0), params, n_boot=20)
      >>> r = res.rows[0]
      >>> r["path"], r["shape"], r["n_outliers"], round(r["mp_sigma2"], 2)
      ('Dense_0/kernel', (300, 100), 0, 0.98)
      >>> res.skipped[0]["reason"]
      '1-D (bias, scale or scalar)'

    References:
      C. H. Martin, M. W. Mahoney, *Implicit self-regularization in deep neural networks*, JMLR 22 (2021).
      A. Clauset, C. R. Shalizi, M. E. J. Newman, SIAM Review 51 (2009).
    """
    key, params = _parse_args(args)
    conv = check_choice(conv, "conv", CONV_MODES)
    heads = check_choice(heads, "heads", HEAD_MODES)
    if matrix_fn is not None and not callable(matrix_fn):
        raise TypeError(f"matrix_fn must be callable (path, leaf) -> matrix or None, got {matrix_fn!r}.")
    min_dim = check_int(min_dim, "min_dim", min=2)
    tw_margin = float(check_float(tw_margin, "tw_margin", low=0.0))
    ks = check_choice(ks, "ks", KS_CONVENTIONS)
    min_tail = check_int(min_tail, "min_tail", min=2)
    for name, v in (("max_candidates", max_candidates), ("boot_candidates", boot_candidates)):
        if v is not None:
            check_int(v, name, min=1)
    n_boot = check_int(n_boot, "n_boot", min=1)
    fn_name = None if matrix_fn is None else getattr(matrix_fn, "__name__", "callable")
    opts = dict(
        conv=conv,
        heads=heads,
        stacked=stacked if stacked is None or isinstance(stacked, str) else getattr(stacked, "__name__", "callable"),
        matrix_fn=fn_name,
        min_dim=min_dim,
        tw_margin=tw_margin,
        ks=ks,
        min_tail=min_tail,
        max_candidates=max_candidates,
        n_boot=n_boot if key is not None else 0,
        boot_candidates=boot_candidates,
    )

    entries = _leaves(params)
    if stacked is None:
        _warn_stacked(entries)
    entries = _expand_stacked(entries, stacked)
    rows, skipped, eigs = [], [], {}
    for i, (path, leaf) in enumerate(entries):
        shape = tuple(int(s) for s in leaf.shape)
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            skipped.append({"path": path, "shape": shape, "reason": f"not floating (dtype {leaf.dtype})"})
            continue
        stack, kind, reason = _as_stack(path, leaf, conv, heads, matrix_fn)
        if reason is None and min(stack.shape[1:]) < min_dim:
            reason = f"smaller side {min(stack.shape[1:])} < min_dim = {min_dim}"
        if reason is None and not bool(jnp.any(stack != 0)):
            reason = "all-zero matrix"
        if reason is not None:
            skipped.append({"path": path, "shape": shape, "reason": reason})
            continue
        k_mat, r, c = (int(s) for s in stack.shape)
        n, m = max(r, c), min(r, c)
        lam_j = _eigs(at_least_float32(stack), n)  # no SVD in float16/bfloat16: those layers in float32
        lam = np.asarray(lam_j)
        if not (np.all(np.isfinite(lam)) and lam[-1] > 0):  # s²/N overflowed or underflowed the dtype
            big = float(jnp.max(jnp.abs(stack)))
            skipped.append({"path": path, "shape": shape, "reason": (
                f"its eigenvalues s²/N leave the range of {lam.dtype} (max |w| = {big:.3g}): rescale the layer "
                "or analyse it in float64 (jax_enable_x64)")})  # fmt: skip
            continue
        lam.setflags(write=False)
        lam64 = lam.astype(np.float64)
        # a median at rounding level (rank below half the eigenvalues) is no bulk: fitting MP to it counted the
        # nonzero eigenvalues as outliers (22 outliers of a rank-20 matrix)
        zero = lam64[-1] * lam64.size * np.finfo(lam.dtype).eps
        mp = mp_bulk_fit(lam64, n, m, n_matrices=k_mat, tw_margin=tw_margin) if np.median(lam64) > zero else None
        layer_key = None if key is None else jax.random.fold_in(key, i)
        tail, note = _tail_fit(layer_key, lam64, lam.dtype, opts)
        if mp is None:
            note = "; ".join(filter(None, [note, "no MP fit: zero median eigenvalue (rank below half the size)"]))
        rows.append(types.MappingProxyType({
            "path": path, "group": path.rsplit("/", 1)[0] if "/" in path else path, "shape": shape,
            "matrix": kind, "n": n, "m": m, "n_matrices": k_mat, "ratio": m / n,
            "lambda_max": float(lam64[-1]), "stable_rank": float(lam64.sum() / lam64[-1]),
            "mp_sigma2": mp.sigma2 if mp else np.nan, "mp_edge": mp.edge if mp else np.nan,
            "outlier_threshold": mp.threshold if mp else np.nan, "n_outliers": mp.n_outliers if mp else -1,
            **tail, "note": note,
        }))  # fmt: skip
        eigs[path] = lam
    if not rows:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped)
        raise ValueError(f"params has no weight matrix to analyse (every leaf was skipped: {reasons}).")
    return LayerSpectra(
        rows=tuple(rows),
        skipped=tuple(types.MappingProxyType(s) for s in skipped),
        eigenvalues=types.MappingProxyType(eigs),
        settings=types.MappingProxyType(opts),
    )


_REPORT = (
    ("layer", "path", "{}"),
    ("shape", "shape", "{}"),
    ("N×M", None, ""),
    ("λmax", "lambda_max", "{:.3g}"),
    ("stable rank", "stable_rank", "{:.1f}"),
    ("σ²(MP)", "mp_sigma2", "{:.3g}"),
    ("λ+", "mp_edge", "{:.3g}"),
    ("outliers", "n_outliers", "{}"),
    ("α", "alpha", "{:.2f}"),
    ("±", "alpha_sigma", "{:.2f}"),
    ("xmin", "xmin", "{:.3g}"),
    ("n_tail", "n_tail", "{}"),
    ("KS", "ks", "{:.3f}"),
    ("p", "p_value", "{:.2f}"),
)


def report_rows(result: LayerSpectra) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of formatted strings for a text table (the CLI's ``jaxcompare spectra``); NaN prints "–".

    Example:
      >>> rng = np.random.default_rng(0)
      >>> header, rows = report_rows(analyze_params({"w": rng.standard_normal((200, 50))}))
      >>> header[:4], rows[0][:3]
      (['layer', 'shape', 'N×M', 'λmax'], ['w', '200×50', '200×50'])
    """
    if not isinstance(result, LayerSpectra):
        raise TypeError(f"result must be a LayerSpectra from analyze_params, got {type(result).__name__}.")
    header = [h for h, _, _ in _REPORT]
    out = []
    for r in result.rows:
        line = []
        for _, k, fmt in _REPORT:
            if k is None:
                v = f"{r['n']}×{r['m']}" + (f" ×{r['n_matrices']}" if r["n_matrices"] > 1 else "")
            elif k == "shape":
                v = "×".join(str(s) for s in r["shape"])
            elif isinstance(r[k], float) and not np.isfinite(r[k]):
                v = "–"
            else:
                v = fmt.format(r[k])
            line.append(v)
        out.append(line)
    return header, out


def format_report(result: LayerSpectra) -> str:
    """The :func:`report_rows` table as aligned text, followed by the skipped leaves."""
    header, rows = report_rows(result)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    lines += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))) for r in rows]
    if result.skipped:
        lines.append("skipped: " + "; ".join(f"{s['path']} ({s['reason']})" for s in result.skipped))
    return "\n".join(lines)
