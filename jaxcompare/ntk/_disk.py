"""On-disk primitives of the kernel stores (:func:`kernel_to_disk`, :func:`save_rows`): atomic files, checksums,
preallocated ``.npy`` arrays and the directory lock.

Several processes (one per host of a cluster, or the tasks of an array job) may write one directory at the same time.
They coordinate through advisory locks (``fcntl.flock``; Linux NFS clients forward them to the server's lock
manager) on small files of the directory:

- ``.lock.setup``, exclusive, short: *setup* — reading the ledger, creating the kernel file, computing the norms;
  one process at a time, the others wait;
- ``.lock``, shared while a process writes tiles, exclusive to discard a store (``overwrite=True`` on a store of
  other inputs): a store in use by any writer is never discarded under it;
- ``.lock.<p>``, exclusive while the writer with ``process_index=p`` runs: two writers with the same index are
  refused (they would share a ledger).

Every file is replaced atomically (written under a name unique to the process, then ``os.replace``); ``fsync`` only
when asked (``durable=True``): the checksums recorded in the ledgers detect tiles lost to a power failure, which are
then recomputed. The temporary files of a writer that was killed are removed when the store is next opened
(:func:`remove_stale_tmp`): only those of this host whose process is gone, and only while no process holds the store.

Guards shared by the stores: :func:`store_dir` (the ``path=`` argument), :func:`refuse_unledgered` (a directory
holding files of a store but no ledger is never overwritten unless asked).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "tmp_name",
    "atomic_json",
    "atomic_npy",
    "crc",
    "open_npy",
    "create_npy",
    "DirLock",
    "SPACE_MARGIN",
    "store_dir",
    "store_files",
    "refuse_unledgered",
    "remove_stale_tmp",
]

SPACE_MARGIN = 64 * 1024**2  # bytes kept free beyond a kernel file


def tmp_name(path: Path) -> Path:
    """A temporary name next to ``path``, unique to this process on this host (hosts may share the directory)."""
    return path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def _replace_from_tmp(path: Path, write, mode: str, durable: bool) -> None:
    """``write(f)`` into a temporary file next to ``path``, then ``os.replace``: ``path`` is either as it was or
    complete; a failed write removes its temporary file."""
    tmp = tmp_name(path)
    try:
        with open(tmp, mode) as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_json(path: Path, obj: dict, durable: bool = False) -> None:
    _replace_from_tmp(path, lambda f: json.dump(obj, f), "w", durable)


def atomic_npy(path: Path, a: np.ndarray, durable: bool = False) -> None:
    _replace_from_tmp(path, lambda f: np.save(f, a), "wb", durable)


def crc(a: np.ndarray) -> int:
    """CRC-32 of the C-ordered bytes of ``a`` (no copy when ``a`` is contiguous; any dtype, bfloat16 included)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)))


def open_npy(kpath: Path, shape: tuple, dtype: np.dtype, mode: str = "r+") -> np.memmap | None:
    """The stored array when its header has ``shape`` and ``dtype`` and the file its full size, else None.

    The size is checked before opening: ``np.load(mmap_mode="r+")`` would silently zero-extend a truncated file.
    """
    try:
        with open(kpath, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            hshape, fortran, hdtype = read(f)
            offset = f.tell()
    except (OSError, ValueError, EOFError, SyntaxError):
        return None
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if tuple(hshape) != tuple(shape) or np.dtype(hdtype) != dtype or fortran or kpath.stat().st_size != need:
        return None
    return np.load(kpath, mmap_mode=mode)


def create_npy(root: Path, kpath: Path, shape: tuple, dtype: np.dtype, *, exclusive: bool = False) -> bool:
    """Create ``kpath`` as a zero ``.npy`` array with its blocks reserved (a full disk is an error here, not a SIGBUS
    later). The file appears complete or not at all; ``exclusive``: keep an existing file (another process created
    it first) and return False."""
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    free = shutil.disk_usage(root).free + (kpath.stat().st_size if kpath.exists() and not exclusive else 0)
    if need + SPACE_MARGIN > free:
        raise OSError(
            f"not enough free disk space in {root} for an array of shape {shape} ({dtype}): it needs "
            f"{need / 1e9:.2f} GB (+{SPACE_MARGIN // 1024**2} MB margin), {free / 1e9:.2f} GB are free."
        )
    tmp = tmp_name(kpath)
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    offset = mm.offset
    del mm
    if need and hasattr(os, "posix_fallocate"):
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, offset + need)
        except OSError as e:
            os.close(fd)
            tmp.unlink()
            raise OSError(f"cannot reserve {need / 1e9:.2f} GB in {root} for the kernel: {e}") from None
        os.close(fd)
    if not exclusive:
        try:
            os.replace(tmp, kpath)
        except OSError:
            tmp.unlink(missing_ok=True)  # (a kernel-sized file left behind otherwise)
            raise
        return True
    try:
        os.link(tmp, kpath)  # atomic and fails when the file exists
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


class DirLock:
    """Advisory locks (``fcntl.flock``) on files of ``root``, held until :meth:`close` (see the module docstring);
    no-ops where ``fcntl`` is missing."""

    STORE, SETUP = ".lock", ".lock.setup"

    def __init__(self, root: Path):
        self.root = root
        self._held: dict = {}
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: per-process temporary names only
            fcntl = None
        self._fcntl = fcntl

    @staticmethod
    def writer(index: int) -> str:
        return f".lock.{index}"

    def acquire(self, name: str, *, shared: bool = False, block: bool = True) -> bool:
        if self._fcntl is None:
            return True
        fc = self._fcntl
        f = open(self.root / name, "a+")
        try:
            fc.flock(f.fileno(), (fc.LOCK_SH if shared else fc.LOCK_EX) | (0 if block else fc.LOCK_NB))
        except OSError:
            f.close()
            return False
        self._held[name] = f
        return True

    def release(self, name: str) -> None:
        f = self._held.pop(name, None)
        if f is not None:
            self._fcntl.flock(f.fileno(), self._fcntl.LOCK_UN)
            f.close()

    def close(self) -> None:
        for name in list(self._held):
            self.release(name)

    @contextlib.contextmanager
    def held(self, name: str) -> Iterator[None]:
        self.acquire(name)
        try:
            yield
        finally:
            self.release(name)


def store_dir(path: Any, what: str) -> Path:
    """``path`` as the directory of a store (``what``: its contents, for the messages): a ``str`` or
    ``os.PathLike`` naming a new or existing directory — not empty (``""`` would silently mean the current
    directory; ``"."`` says so), not an existing file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a directory path (str or os.PathLike), got {type(path).__name__}.")
    if os.fspath(path) in ("", b""):
        raise ValueError(
            f"path is empty: give a directory for {what} (pass '.' to write it into the current directory)."
        )
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise ValueError(f"path must be a directory for {what}, but {root} is an existing file.")
    for parent in root.absolute().parents:  # a file on the way (a/file/store) gave a bare NotADirectoryError
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"path {root} cannot be created for {what}: {parent} is a file, not a directory.")
            break
    return root


def read_only(root: Path) -> bool:
    """Whether ``root`` is an existing directory this process cannot write (a read-only mount, an archive's
    permissions): a store there can only be read, and only when it is finished."""
    return root.is_dir() and not os.access(root, os.W_OK | os.X_OK)


def read_only_refusal(root: Path, fn: str, why: str) -> PermissionError:
    """The error of ``fn`` on a read-only ``root`` whose store cannot be used as it is (``why``)."""
    return PermissionError(
        f"{root} is not writable, and {why}: {fn} can only read a finished store of these same inputs there. "
        "Pass a writable path, or copy the store to writable storage to resume or recompute it."
    )


def store_files(root: Path, names: re.Pattern) -> list[str]:
    """The names of the files in ``root`` that a store writes (``names``: a pattern of their full names)."""
    return sorted(p.name for p in root.iterdir() if names.fullmatch(p.name))


def refuse_unledgered(root: Path, names: re.Pattern, fn: str) -> None:
    """Refuse a directory that holds files of the store ``names`` (those ``fn`` writes) but no ledger
    (``state.json``): they are another program's, or a store whose ledger was lost — unverifiable either way, and
    never overwritten unless asked (``overwrite=True``)."""
    found = store_files(root, names)
    if found:
        shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise ValueError(
            f"{root} holds {shown} but no ledger (state.json) of a {fn} store: files {fn} did not write, or a store "
            "whose ledger was lost, which cannot be verified. They would be overwritten: pass overwrite=True to "
            "replace them, or use another path."
        )


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this host may be running (when unsure: yes)."""
    if pid == os.getpid() or os.name == "nt":  # (os.kill on Windows terminates the process)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: another user's live process
        return True
    return True


def remove_stale_tmp(root: Path, names: re.Pattern, lock: DirLock) -> list[str]:
    """Remove the temporary files (:func:`tmp_name`) of the store files ``names`` left in ``root`` by writers that
    died (a SIGKILL between writing and ``os.replace``; a kernel-sized one would count against the free space):
    only files of this host whose process is gone, and only while no writer holds the store (the caller holds the
    setup lock; the store lock must be free), so that a live writer's file is never touched — on another host, in
    another PID namespace, or with a reused PID it is kept. Returns the names removed."""
    if not lock.acquire(DirLock.STORE, block=False):
        return []
    try:
        host = "." + socket.gethostname()
        removed = []
        for p in root.glob("*.tmp"):
            stem, _, pid = p.name[: -len(".tmp")].rpartition(".")  # <name>.<host>.<pid>.tmp
            if not (stem.endswith(host) and pid.isdigit() and names.fullmatch(stem[: -len(host)])) or _alive(int(pid)):
                continue
            p.unlink(missing_ok=True)
            removed.append(p.name)
        return removed
    finally:
        lock.release(DirLock.STORE)
