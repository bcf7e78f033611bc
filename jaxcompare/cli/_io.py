"""Reading users' files and checking output paths for the CLI (one-line errors, never a traceback)."""

from __future__ import annotations

import os
import tempfile
import zipfile
import zlib
from typing import IO

import numpy as np

__all__ = ["CLIError", "load_array", "load_matrix", "check_output_file", "check_output_dir", "check_npy_header"]


class CLIError(Exception):
    """An error the CLI reports as one line on stderr (exit status 2)."""


def _exists(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise CLIError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{what} must be a file, got a directory: {path}")


def check_npy_header(f: IO[bytes], available: int, where: str) -> None:
    """Read an ``.npy`` header from ``f`` and check that the data it declares fits in the ``available`` bytes of the
    file (a header declaring 10¹² entries in a small file is refused before anything is allocated)."""
    try:
        version = np.lib.format.read_magic(f)
        start = f.tell()
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, EOFError, OSError, SyntaxError) as e:
        raise CLIError(f"{where} is not a valid .npy array (bad header: {str(e).splitlines()[0]})") from None
    if dtype.hasobject:
        raise CLIError(f"{where} contains Python objects (pickles are refused); save plain numeric arrays")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    have = available - (f.tell() - start) - 6 - 2  # magic string (6) and version (2) precede the header
    if need > have:
        raise CLIError(
            f"{where} declares shape {tuple(shape)} of {dtype} ({need:,} bytes) but holds only "
            f"{max(have, 0):,} bytes of data: the file is truncated or corrupt"
        )


def _check_headers(path: str, what: str, ext: str) -> None:
    if ext == ".npy":
        with open(path, "rb") as f:
            check_npy_header(f, os.path.getsize(path), f"{what} file {path}")
        return
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.filename.endswith(".npy"):
                with zf.open(info) as f:
                    check_npy_header(f, info.file_size, f"array {info.filename[:-4]!r} of {what} file {path}")


def load_array(path: str, what: str, *, key: str | None = None, key_flag: str = "--key") -> np.ndarray:
    """One array from ``.npy``, ``.npz`` (the only array or ``key``; pickles refused) or ``.csv`` (numbers only)."""
    _exists(path, what)
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".npy", ".npz"):
            _check_headers(path, what, ext)
        if ext == ".npy":
            a = np.load(path, allow_pickle=False)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.keys())
                if key is not None:
                    if key not in names:
                        raise CLIError(f"{what} file {path} has no array {key!r}; it has {names}")
                    a = z[key]
                elif len(names) == 1:
                    a = z[names[0]]
                elif not names:
                    raise CLIError(f"{what} file {path} holds no arrays")
                else:
                    raise CLIError(f"{what} file {path} holds several arrays {names}; name one with {key_flag}")
        elif ext in (".csv", ".txt"):
            a = np.loadtxt(path, delimiter="," if ext == ".csv" else None, ndmin=2)
        else:
            raise CLIError(f"{what} file must be .npy, .npz or .csv, got {path!r}")
    except CLIError:
        raise
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "pickle" in msg.lower():
            raise CLIError(
                f"{what} file {path} contains Python objects (pickles are refused); save plain arrays"
            ) from None
        raise CLIError(f"{what} file {path} could not be read as numbers: {msg}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CLIError(f"{what} file {path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise CLIError(f"{what} file {path} could not be read: {e.strerror or e}") from None
    except MemoryError:
        raise CLIError(f"{what} file {path} is too large to load into memory") from None
    if a.dtype.kind not in "biuf":
        raise CLIError(f"{what} file {path} must hold numbers, got dtype {a.dtype}")
    if a.size == 0:
        raise CLIError(f"{what} file {path} is empty")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise CLIError(f"{what} file {path} has {int(np.sum(~np.isfinite(a)))} NaN/inf values; remove them first")
    return a


def load_matrix(
    path: str, what: str, *, key: str | None = None, key_flag: str = "--key", max_ndim: int = 2
) -> np.ndarray:
    """A ``(models, points)`` score matrix (or ``(models, points, classes)`` logits when ``max_ndim=3``); a single
    row ``(points,)`` becomes ``(1, points)``."""
    a = load_array(path, what, key=key, key_flag=key_flag)
    if a.ndim == 1:
        a = a[None, :]
    if not 2 <= a.ndim <= max_ndim:
        exp = "a 2-D array (models × test points)" + (
            " or 3-D logits (models × test points × classes)" if max_ndim == 3 else ""
        )
        raise CLIError(f"{what} must be {exp}, got shape {a.shape}")
    return a.astype(np.float64) if a.dtype.kind != "f" else a


def _probe_dir(d: str, flag: str) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=d, prefix=".jaxcompare-probe-"):
            pass
    except OSError as e:
        raise CLIError(f"{flag}: cannot write in directory {d}: {e.strerror or e}") from None


def check_output_file(path: str, flag: str = "--out") -> str:
    """Fail now (before any work) if ``path`` cannot be written: its directory must exist and accept a file."""
    if os.path.isdir(path):
        raise CLIError(f"{flag} must name a file, got the directory {path}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise CLIError(f"{flag}: the directory {parent} of {path} {what}")
    _probe_dir(parent, flag)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CLIError(f"{flag}: {path} exists and is not writable")
    return path


def check_output_dir(path: str, flag: str = "--out") -> str:
    """Create the output directory ``path`` if needed and check that files can be written in it (before any work)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"{flag} must be a directory, but {path} is a file")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CLIError(f"{flag}: cannot create directory {path}: {e.strerror or e}") from None
    _probe_dir(path, flag)
    return path
