"""Loaders for embeddings computed elsewhere (``.npz``, ``.npy``, ``.csv``) and an ``.npz`` writer."""

from __future__ import annotations

import csv
import os
import zipfile
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["EmbeddingData", "load_embeddings", "save_embeddings"]

_LABEL_COLUMNS = ("label", "labels", "source", "sources")


class EmbeddingData(NamedTuple):
    """Embeddings with their source labels.

    Attributes:
      embeddings: ``(n, d)`` NumPy float32/float64 array (float16 is widened to float32). Host memory: move to the
        device with ``jnp.asarray`` after any subsampling.
      labels: ``(n,)`` int32 source labels in ``[0, K)``, or ``None`` if the file has none.
      names: ``K`` source names (``labels == i`` is ``names[i]``); empty when there are no labels.
    """

    embeddings: np.ndarray
    labels: np.ndarray | None
    names: tuple[str, ...]


def _as_embeddings(a: np.ndarray, where: str) -> np.ndarray:
    if a.dtype.kind not in "fiub":
        raise ValueError(f"{where}: embeddings must be numeric, got dtype {a.dtype}.")
    if a.ndim != 2:
        raise ValueError(f"{where}: embeddings must be a 2-D array (n_samples, n_features), got shape {a.shape}.")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{where}: embeddings are empty (shape {a.shape}).")
    if a.dtype.kind != "f" or a.dtype.itemsize < 4:
        a = a.astype(np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(
            f"{where}: embeddings have {int(bad.sum())} NaN/inf entries in {rows.size} rows (first rows: "
            f"{rows[:5].tolist()}); drop or impute them before loading."
        )
    return a


def _encode_labels(lab: np.ndarray, names: Sequence[str] | None, n: int, where: str) -> tuple[np.ndarray, tuple]:
    lab = np.asarray(lab)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"{where}: labels must have shape ({n},) (one per embedding), got {lab.shape}.")
    if lab.dtype.kind in "US":
        uniq, codes = np.unique(lab.astype(str), return_inverse=True)
        if names is not None:
            raise ValueError(f"{where}: labels are strings, so a separate names array is not allowed.")
        return codes.astype(np.int32), tuple(str(u) for u in uniq)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or np.any(lab != np.round(lab)):
            raise ValueError(f"{where}: labels must be integers (or strings), got non-integer values.")
    elif lab.dtype.kind not in "iub":
        raise ValueError(f"{where}: labels must be integers or strings, got dtype {lab.dtype}.")
    if lab.min() < 0:
        raise ValueError(f"{where}: labels must be >= 0, found {lab.min()}.")
    if lab.max() > max(2 * n, 256):  # one name per code 0..max: a label of 10**7 made ten million names
        raise ValueError(
            f"{where}: integer labels are codes 0..K-1 (names[i] for label i), but they reach {lab.max()} for {n} "
            "samples; encode them first, e.g. codes, values = np.unique(labels, return_inverse=True)[::-1], and "
            "pass the values as names."
        )
    lab = lab.astype(np.int64)
    K = int(lab.max()) + 1
    if names is None:
        names = tuple(str(i) for i in range(K))
    else:
        names = _names(names, where)
        if len(names) < K:
            raise ValueError(f"{where}: {len(names)} names given for labels up to {K - 1}.")
    return lab.astype(np.int32), names


def _names(names: Any, where: str) -> tuple[str, ...]:
    """Source names: a 1-D sequence of strings (bytes decoded as UTF-8; one string is not a sequence of names)."""
    a = np.asarray(names)
    if a.ndim != 1:
        raise ValueError(f"{where}: names must be a 1-D sequence of source names, got shape {a.shape} ({names!r}).")
    return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in a.tolist())


def _unreadable(path: str, e: Exception) -> ValueError:
    """The error for a file NumPy could not read: pickles refused, or the file truncated or corrupt."""
    if "pickle" in str(e).lower() or "object arrays" in str(e).lower():
        return ValueError(f"{path}: cannot read without pickle (object arrays are not accepted): {e}")
    return ValueError(f"{path}: the file is truncated or corrupt ({type(e).__name__}: {e}).")


def _load_npz(path: str, ek: str, lk: str, nk: str) -> EmbeddingData:
    try:
        z = np.load(path, allow_pickle=False)
        if not hasattr(z, "files"):  # an .npy file named .npz
            raise ValueError(f"{path}: not an .npz archive (an .npy file named .npz?); rename it to .npy.")
        with z:
            files = {k: z[k] for k in z.files}
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as e:
        if isinstance(e, ValueError) and str(e).startswith(path):
            raise
        raise _unreadable(path, e) from None
    if ek in files:
        X = _as_embeddings(files[ek], path)
    elif len(files) == 1:
        X = _as_embeddings(next(iter(files.values())), path)
    else:
        raise ValueError(
            f"{path}: no array named {ek!r}; found {sorted(files)}. Pass embeddings_key=... to choose one."
        )
    if lk in files:
        lab, names = _encode_labels(files[lk], files.get(nk), X.shape[0], path)
        return EmbeddingData(X, lab, names)
    return EmbeddingData(X, None, ())


def _load_csv(path: str, delimiter: str) -> EmbeddingData:
    with open(path, newline="", encoding="utf-8-sig") as f:  # a byte-order mark (Excel) is not part of the header
        rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: empty file.")

    def numeric(cell: str) -> bool:
        try:
            float(cell)
            return True
        except ValueError:
            return False

    header = None if all(numeric(c) for c in rows[0]) else [c.strip() for c in rows[0]]
    body = rows[1:] if header is not None else rows
    if not body:
        raise ValueError(f"{path}: a header but no data rows.")
    width = len(body[0])
    for i, r in enumerate(body):
        if len(r) != width:
            raise ValueError(f"{path}: row {i + 1 + (header is not None)} has {len(r)} fields, expected {width}.")
    label_col = None
    if header is not None and not all(header):
        raise ValueError(
            f"{path}: header column {header.index('') + 1} has no name (a pandas index? write the file with "
            "index=False); name every column, the label column 'label'."
        )
    if header is not None:
        hits = [j for j, h in enumerate(header) if h.lower() in _LABEL_COLUMNS]
        label_col = hits[0] if hits else None
    cols = [j for j in range(width) if j != label_col]
    try:
        X = np.array([[float(r[j]) for j in cols] for r in body], dtype=np.float64)
    except ValueError as e:
        raise ValueError(
            f"{path}: non-numeric embedding value ({e}); name a label column 'label' in the header."
        ) from None
    X = _as_embeddings(X, path)
    if label_col is None:
        return EmbeddingData(X, None, ())
    raw = np.array([r[label_col].strip() for r in body])
    blank = np.flatnonzero(raw == "")
    if blank.size:
        raise ValueError(
            f"{path}: {blank.size} rows have an empty label (first data rows: {(blank[:5] + 1).tolist()}); give "
            "every sample its source."
        )
    if all(numeric(c) for c in raw):
        lab, names = _encode_labels(raw.astype(np.float64), None, X.shape[0], path)
    else:
        lab, names = _encode_labels(raw, None, X.shape[0], path)
    return EmbeddingData(X, lab, names)


def _load_one(path: Any, ek: str, lk: str, nk: str) -> EmbeddingData:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such embeddings file: {path!r}.")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        return _load_npz(path, ek, lk, nk)
    if ext == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as e:
            raise _unreadable(path, e) from None
        return EmbeddingData(_as_embeddings(a, path), None, ())
    if ext in (".csv", ".tsv"):
        return _load_csv(path, "\t" if ext == ".tsv" else ",")
    if ext == ".parquet":
        raise ValueError(
            f"{path}: parquet is not supported (no parquet library is a dependency). Convert it once, e.g. "
            "df = pandas.read_parquet(path); numpy.savez(out, embeddings=numpy.stack(df['embedding']), "
            "labels=df['source'].to_numpy()), and load the .npz."
        )
    raise ValueError(f"{path}: unknown extension {ext!r}; expected .npz, .npy, .csv or .tsv.")


def load_embeddings(
    path: Any,
    *,
    embeddings_key: str = "embeddings",
    labels_key: str = "labels",
    names_key: str = "names",
) -> EmbeddingData:
    """Load embeddings computed elsewhere, with their source labels.

    Formats (nothing is ever unpickled):
      * ``.npz``: the array ``embeddings_key`` (or the only array in the file), optional integer or string
        ``labels_key`` and optional ``names_key`` (source names for integer labels).
      * ``.npy``: one ``(n, d)`` array, no labels.
      * ``.csv`` / ``.tsv``: one sample per row; an optional header; a header column named ``label``, ``labels``,
        ``source`` or ``sources`` holds the labels (integers or strings), every other column is a feature.
      * several paths (a list or tuple): one source per file, ``labels`` = file index and ``names`` = file names
        without extension; the files must hold no labels of their own and the same number of features.

    String labels are encoded by sorted unique value (``names`` gives the mapping). Integer and boolean embeddings
    and float16 are converted to float32; float32/float64 are kept.

    Args:
      path: a file path or a sequence of paths.
      embeddings_key, labels_key, names_key: array names inside ``.npz`` files.

    Returns:
      :class:`EmbeddingData` ``(embeddings, labels, names)``.

    Raises:
      FileNotFoundError: a missing file. ValueError: an unknown format, a malformed file, NaN/inf entries,
      mismatched label length, non-integer labels, mismatched feature counts between files.

    Example:
      >>> rng = np.random.default_rng(0)
      >>> np.save("human.npy", rng.normal(size=(30, 8)))   # embeddings computed elsewhere, one file per source
      >>> np.save("llm.npy", rng.normal(0.5, 1.0, size=(20, 8)))
      >>> data = embed.load_embeddings(["human.npy", "llm.npy"])
      >>> data.embeddings.shape, data.names
      ((50, 8), ('human', 'llm'))
      >>> np.bincount(data.labels).tolist()   # samples per source
      [30, 20]
      >>> res = embed.separability(jax.random.key(0), jnp.asarray(data.embeddings), data.labels)
    """
    if isinstance(path, (list, tuple)):
        if len(path) < 1:
            raise ValueError("load_embeddings needs at least one path, got an empty list.")
        parts = [_load_one(p, embeddings_key, labels_key, names_key) for p in path]
        d = {os.fspath(p): part.embeddings.shape[1] for p, part in zip(path, parts)}
        if len(set(d.values())) > 1:
            raise ValueError(f"files have different numbers of features: {d}.")
        for p, part in zip(path, parts):
            if part.labels is not None:
                raise ValueError(
                    f"{os.fspath(p)} has labels of its own; when loading several files each file is one source. "
                    "Load it alone, or save its embeddings without labels."
                )
        X = np.concatenate([part.embeddings for part in parts], axis=0)
        lab = np.concatenate([np.full(part.embeddings.shape[0], i, np.int32) for i, part in enumerate(parts)])
        names = tuple(os.path.splitext(os.path.basename(os.fspath(p)))[0] for p in path)
        return EmbeddingData(X, lab, names)
    return _load_one(path, embeddings_key, labels_key, names_key)


def save_embeddings(path: Any, embeddings: Any, labels: Any = None, names: Sequence[str] | None = None) -> None:
    """Write embeddings (and optional integer labels and source names) to an ``.npz`` readable by
    :func:`load_embeddings` (no pickled objects).

    Example:
      >>> X = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
      >>> labels = np.array([0, 0, 0, 1, 1, 1])
      >>> embed.save_embeddings("demo.npz", X, labels, names=("original", "noised"))
      >>> data = embed.load_embeddings("demo.npz")
      >>> data.embeddings.shape, data.labels.tolist(), data.names
      ((6, 4), [0, 0, 0, 1, 1, 1], ('original', 'noised'))
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"save_embeddings writes .npz files; got {path!r}.")
    X = _as_embeddings(np.asarray(embeddings), "embeddings")
    out = {"embeddings": X}
    if labels is not None:
        lab, nm = _encode_labels(np.asarray(labels), names, X.shape[0], "labels")
        out["labels"] = lab
        out["names"] = np.array(nm, dtype=str)
    elif names is not None:
        raise ValueError("names given without labels.")
    np.savez(path, **out)
