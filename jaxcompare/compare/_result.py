"""The result of :func:`jaxcompare.compare.compare_models`: a tidy per-model table, saved as JSON + ``.npz``."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
import zlib
from types import MappingProxyType
from typing import Any

import numpy as np

from .._jsonable import to_jsonable

__all__ = ["ComparisonResult", "load_comparison", "to_jsonable", "FORMAT_VERSION"]

#: Version of the files :meth:`ComparisonResult.save` writes (``comparison.json`` + ``arrays.npz``).
FORMAT_VERSION = 1


def _frozen_array(a: Any) -> np.ndarray:
    a = np.array(a)
    a.setflags(write=False)
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class ComparisonResult:
    """Everything :func:`compare_models` found (host-side, read-only; not a pytree).

    Attributes:
      rows: one dict per model, in input order: ``name, group, role`` (``"reference"``, ``"candidate"`` or
        ``"leave-one-out"``), ``accuracy, accuracy_gap, churn, ece`` (and ``train_accuracy,
        generalization_gap`` with train data), ``alpha_hat, alpha_hat_sd, rank`` (1 = largest α̂) with the
        ``alpha`` section, ``kernel_cka, kernel_dissimilarity`` with ``similarity``, ``surrogate_accuracy,
        surrogate_tad, surrogate_tau, surrogate_r_miss, surrogate_converged, attribution_overlap`` with
        ``surrogate``, ``flags`` (statistic → flagged by the rule of :mod:`jaxcompare.compare._findings`) and
        ``atypical``.
      detection: with groups, one dict per (non-reference group, statistic): ``group, statistic, auroc, n_group,
        n_reference`` (the AUROC of the statistic for telling the group's models from the reference models).
      bounds: the rule's ``median, scale, bound, n_reference`` per statistic.
      findings: the summary sentences.
      settings: every setting and derived constant (score, n_boot, level, threshold, reference, seed, ...).
      skipped: section → reason, for requested sections that could not run.
      spectra: per-model output of ``jaxcompare.spectra.analyze_params`` (JSON form) or ``None``.
      arrays: read-only NumPy arrays: ``scores (K, T)`` (the reduced scores α̂ compares), ``alpha_boot (K, B)``
        (α̂ per bootstrap round); with the kernel sections ``kernel_points (n,)`` (indices of the test points the
        kernels use); with ``"surrogate"`` ``surrogate_train_points``, ``attribution_indices (K, n, k)`` (training
        indices, most influential first), ``attribution_values (K, n, k)`` and ``surrogate_predictions (K, n)``.
      similarity: section ``"similarity"`` (JSON form) or ``None``: ``kernel, label, n_points, n_permutations,
        names, cka, p_value, null_mean, null_sd`` (``K × K`` lists), ``resolution`` (the rule's floor).
      surrogate: section ``"surrogate"`` (JSON form) or ``None``: ``kernel, label, protocol, n_train, n_test,
        attribution_k`` and ``attribution`` (per shown test point: its index, label, and per model the network's
        and the surrogate's prediction and the top training points with label and contribution).
    """

    rows: tuple[dict[str, Any], ...]
    detection: tuple[dict[str, Any], ...]
    bounds: dict[str, dict[str, float]]
    findings: tuple[str, ...]
    settings: dict[str, Any]
    skipped: dict[str, str]
    spectra: Any
    arrays: dict[str, np.ndarray]
    similarity: Any = None
    surrogate: Any = None

    def __post_init__(self):
        object.__setattr__(self, "rows", tuple(MappingProxyType(dict(r)) for r in self.rows))
        object.__setattr__(self, "detection", tuple(MappingProxyType(dict(d)) for d in self.detection))
        object.__setattr__(self, "findings", tuple(self.findings))
        object.__setattr__(self, "arrays", MappingProxyType({k: _frozen_array(v) for k, v in self.arrays.items()}))
        for name in ("bounds", "settings", "skipped"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def names(self) -> list[str]:
        """Model names in input order."""
        return [r["name"] for r in self.rows]

    @property
    def atypical(self) -> list[str]:
        """Names of the atypical models (flagged on α̂), largest α̂ first."""
        rows = sorted((r for r in self.rows if r["atypical"]), key=lambda r: -r["alpha_hat"])
        return [r["name"] for r in rows]

    def table(self) -> list[dict[str, Any]]:
        """The per-model table as flat dicts (``flags`` spread into ``flag_<statistic>`` columns), input order."""
        out = []
        for r in self.rows:
            flat = {k: v for k, v in r.items() if k != "flags"}
            flat.update({f"flag_{s}": bool(f) for s, f in r["flags"].items()})
            out.append(flat)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain JSON-able Python (the content of ``comparison.json`` and ``results.json``)."""
        return to_jsonable(
            {
                "format_version": FORMAT_VERSION,
                "models": [dict(r) for r in self.rows],
                "detection": [dict(d) for d in self.detection],
                "bounds": dict(self.bounds),
                "findings": list(self.findings),
                "atypical": self.atypical,
                "settings": dict(self.settings),
                "skipped": dict(self.skipped),
                "spectra": self.spectra,
                "similarity": self.similarity,
                "surrogate": self.surrogate,
            }
        )

    def to_pandas(self) -> Any:
        """The per-model table as a ``pandas.DataFrame`` (one row per model, indexed by name; needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas needs pandas: pip install pandas (or use .table() / .to_dict())") from None
        return pd.DataFrame(self.table()).set_index("name")

    def save(self, directory: str | os.PathLike) -> str:
        """Write ``arrays.npz`` and ``comparison.json`` to ``directory`` (created); read back by
        :func:`load_comparison`. Nothing is pickled. Each file is written to a temporary name and renamed, the
        arrays first; ``comparison.json`` records each array's shape, dtype and CRC-32, so a directory left with
        one new and one old file (a run killed between the two) is refused on load. Returns the directory."""
        d = _directory(directory, "directory")
        os.makedirs(d, exist_ok=True)
        data = self.to_dict()
        data["arrays"] = {k: _manifest(v) for k, v in self.arrays.items()}
        text = json.dumps(data, indent=1, allow_nan=False)  # formed before anything is written
        _atomic(os.path.join(d, "arrays.npz"), lambda f: np.savez(f, **dict(self.arrays)), "wb")
        _atomic(os.path.join(d, "comparison.json"), lambda f: f.write(text), "w")
        return d

    def report(self, directory: str | os.PathLike) -> str:
        """Write the HTML report (``index.html``), ``results.json``, ``models.csv`` and figures; returns the
        path of ``index.html``. See :func:`jaxcompare.compare.write_report`."""
        from ._report import write_report

        return write_report(self, directory)

    def __repr__(self) -> str:
        cols = ("name", "group", "accuracy", "churn", "ece", "alpha_hat", "alpha_hat_sd")
        lines = [f"ComparisonResult({len(self.rows)} models, atypical: {self.atypical})"]
        for r in self.rows:
            lines.append(
                "  "
                + "  ".join(
                    f"{c}={r[c]:.4g}" if isinstance(r.get(c), float) else f"{c}={r.get(c)}" for c in cols if c in r
                )
            )
        return "\n".join(lines)


def load_comparison(directory: str | os.PathLike) -> ComparisonResult:
    """Read a :class:`ComparisonResult` written by :meth:`ComparisonResult.save` (JSON + ``.npz``, no pickle).

    Args:
      directory: the directory passed to ``save``.

    Returns:
      The result, equal field by field to the saved one (non-finite numbers are stored as ``null`` and come back
      as ``None``).

    Raises:
      FileNotFoundError: ``comparison.json`` or ``arrays.npz`` is missing.
      ValueError: the files are not a saved comparison (or of an unknown format version), are damaged, or are not
        from one save (the arrays' shapes, dtypes and checksums recorded in ``comparison.json`` are checked).
      TypeError: ``directory`` is not a path.

    Example:
      >>> import tempfile, jax, jax.numpy as jnp
      >>> from jaxcompare.compare import compare_models
      >>> x = jnp.linspace(-1, 1, 8)[:, None]; y = (x[:, 0] > 0).astype(jnp.int32)
      >>> fn = lambda p, x: jnp.concatenate([-p * x, p * x], axis=1)
      >>> res = compare_models(jax.random.key(0), fn, [1.0, 2.0], x, y, sections=(), progress_bar=False)
      >>> d = res.save(tempfile.mkdtemp())
      >>> back = load_comparison(d)
      >>> back.to_dict() == res.to_dict(), [r["accuracy"] for r in back.rows]
      (True, [1.0, 1.0])
    """
    d = _directory(directory, "directory")
    js, npz = os.path.join(d, "comparison.json"), os.path.join(d, "arrays.npz")
    for p in (js, npz):
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p} not found; directory must be one written by ComparisonResult.save")
    try:
        with open(js) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{js} is not valid JSON: {e}") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if type(version) is not int or version != FORMAT_VERSION:  # True and 1.0 are not the version 1
        raise ValueError(f"{js} is not a saved comparison of format version {FORMAT_VERSION}")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.keys()}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"{npz} could not be read (damaged, truncated, or pickled; pickles are refused): {e}"
        ) from None
    _check_saved(data, arrays, js, npz)
    return ComparisonResult(
        rows=data["models"],
        detection=data["detection"],
        bounds=data["bounds"],
        findings=data["findings"],
        settings=data["settings"],
        skipped=data["skipped"],
        spectra=data["spectra"],
        arrays=arrays,
        similarity=data.get("similarity"),
        surrogate=data.get("surrogate"),
    )


def _directory(v: Any, name: str) -> str:
    if not isinstance(v, (str, os.PathLike)) or not os.fspath(v):
        raise TypeError(f"{name} must be a directory path (a non-empty str or os.PathLike), got {v!r}.")
    d = os.fspath(v)
    if os.path.exists(d) and not os.path.isdir(d):
        raise ValueError(f"{name} {d} is a file, not a directory.")
    return d


def _manifest(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a)
    return {"shape": list(a.shape), "dtype": a.dtype.str, "crc32": zlib.crc32(memoryview(a.reshape(-1).view(np.uint8)))}


def _atomic(path: str, write, mode: str) -> None:
    """``write(f)`` into a temporary file beside ``path``, then rename: ``path`` is whole, old or new."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_REQUIRED = ("models", "detection", "bounds", "findings", "settings", "skipped", "spectra")


def _check_saved(data: dict, arrays: dict, js: str, npz: str) -> None:
    """The two files belong together and hold what a saved comparison holds."""
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{js} lacks {', '.join(missing)}: not a saved comparison")
    models = data["models"]
    if not isinstance(models, list) or not models or not all(isinstance(r, dict) and "name" in r for r in models):
        raise ValueError(f"{js}: 'models' must be a non-empty list of rows with a name")
    manifest = data.get("arrays")
    if manifest is not None:  # written by save() since the manifest was added: one file pair, checked exactly
        if not isinstance(manifest, dict) or sorted(manifest) != sorted(arrays):
            raise ValueError(
                f"{npz} holds arrays {sorted(arrays)} but {js} recorded {sorted(manifest or {})}: the two files are "
                "not from one save (a save interrupted between them, or files copied from elsewhere)"
            )
        for k, a in arrays.items():
            if _manifest(a) != manifest[k]:
                raise ValueError(
                    f"{npz}: array {k!r} is not the one {js} recorded (shape {list(a.shape)}, dtype {a.dtype.str}, "
                    "or its checksum differ): the two files are not from one save"
                )
        return
    # files from before the manifest: their shapes must at least agree with the table
    k = len(models)
    if "scores" not in arrays:
        raise ValueError(f"{npz} lacks 'scores': not the arrays of a saved comparison")
    sections = data["settings"].get("sections", []) if isinstance(data["settings"], dict) else []
    if "alpha" in sections and "alpha_boot" not in arrays:
        raise ValueError(f"{npz} lacks 'alpha_boot', which the alpha section writes")
    for name in ("scores", "alpha_boot", "attribution_indices", "attribution_values", "surrogate_predictions"):
        if name in arrays and (arrays[name].ndim < 1 or arrays[name].shape[0] != k):
            raise ValueError(
                f"{npz}: {name!r} has shape {arrays[name].shape} but {js} has {k} models: the files do not belong "
                "together"
            )
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ValueError(f"{npz}: {name!r} holds NaN/inf values; a saved comparison's arrays are finite")
