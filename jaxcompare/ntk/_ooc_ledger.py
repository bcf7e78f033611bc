"""The ledgers of an out-of-core kernel store (:mod:`._ooc`): which process owns which tile, reading and verifying
what each process recorded (:func:`load_kernel`: a finished store's kernel, checked), and the writer thread that
moves computed tiles to disk and records them."""

from __future__ import annotations

import json
import os
import queue
import threading
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .._validation import check_int
from ._disk import atomic_json, crc, open_npy, store_dir
from ._tiling import TilePlan

__all__ = ["processes", "load_kernel"]

_VERSION = 3
_LEDGER_KEYS = ("fingerprint", "model", "done", "checksums")


def _ledger_path(root: Path, index: int) -> Path:
    return root / ("state.json" if index == 0 else f"state.{index}.json")


def processes(process_index: Any, process_count: Any) -> tuple[int, int, bool]:
    """``(index, count, from_runtime)``: JAX's multi-process runtime unless both overrides are given."""
    if process_index is None and process_count is None:
        return jax.process_index(), jax.process_count(), True
    if process_index is None or process_count is None:
        raise ValueError(
            "process_index and process_count go together: give both (e.g. an array job's task id and "
            f"task count) or neither (JAX's runtime), got process_index={process_index!r}, "
            f"process_count={process_count!r}."
        )
    count = check_int(process_count, "process_count", min=1)
    return check_int(process_index, "process_index", min=0, max=count - 1), count, False


def _read_state(state_path: Path, overwrite: bool) -> dict | None:
    if not state_path.exists():
        return None
    try:
        with open(state_path) as f:
            state = json.load(f)
        if not isinstance(state, dict) or state.get("version") != _VERSION:
            raise ValueError("not a ledger of this version")
        for k in _LEDGER_KEYS + ("shape", "dtype", "norms"):
            state[k]  # noqa: B018 - presence check
        return state
    except (OSError, ValueError, KeyError, TypeError) as e:
        if overwrite:
            return None
        raise ValueError(
            f"{state_path} cannot be read as a kernel_to_disk ledger ({type(e).__name__}: {e}); pass "
            "overwrite=True to start afresh, or use another path."
        ) from None


def _ledgers(root: Path, header: dict) -> dict[int, dict]:
    """Every process's ledger of this store (``{index: ledger}``); unreadable or foreign ones are skipped (a ledger
    being replaced is read whole or not at all)."""
    out = {0: header}
    for p in root.glob("state.*.json"):
        try:
            index = int(p.name.split(".")[1])
            with open(p) as f:
                led = json.load(f)
            if all(led.get(k) == header[k] for k in ("fingerprint", "model")):
                out[index] = led
        except (OSError, ValueError, TypeError, AttributeError, KeyError, IndexError):
            continue
    return out


def _regions(plan: TilePlan, t: int, n1: int, n2: int) -> list[tuple[slice, slice]]:
    i, j = plan.pairs[t]
    r0, r1 = plan.rows(i, n1)
    c0, c1 = plan.rows(j, n2)
    out = [(slice(r0, r1), slice(c0, c1))]
    if plan.symmetric and i != j:
        out.append((slice(c0, c1), slice(r0, r1)))
    return out


def _checked_tiles(mm: np.memmap, plan: TilePlan, ledgers: dict, share: set, n1: int, n2: int) -> tuple[set, set]:
    """``(verified, bad)``: the tiles of ``share`` recorded by any process whose stored values match their checksums,
    and those recorded (listed as done) by some process but matching none of their checksums, or without one."""
    records: dict[int, list] = {}
    for led in ledgers.values():
        for t in led["done"]:
            sums = led["checksums"].get(str(t))
            if int(t) in share:
                records.setdefault(int(t), [])
                if sums is not None:
                    records[int(t)].append(sums)
    ok = set()
    for t, options in records.items():
        regions = _regions(plan, t, n1, n2)
        actual = None
        for sums in options:
            if len(sums) == len(regions):
                actual = actual or [crc(mm[r]) for r in regions]
                if actual == list(sums):
                    ok.add(t)
                    break
    return ok, set(records) - ok


def _verified_tiles(mm: np.memmap, plan: TilePlan, ledgers: dict, share: set, n1: int, n2: int) -> set:
    """The verified tiles of ``share`` (:func:`_checked_tiles`); the others are recomputed, with a warning when a
    recorded one did not match (or had no checksum: an edited ledger)."""
    ok, bad = _checked_tiles(mm, plan, ledgers, share, n1, n2)
    if bad:
        warnings.warn(
            f"{len(bad)} stored tile(s) do not match their checksums (edited or damaged); recomputing them.",
            RuntimeWarning,
            stacklevel=3,
        )
    return ok


class _Writer:
    """A thread that moves computed tiles to the kernel file, checksums them and records them in the ledger, while
    the device computes the next tiles (at most ``depth`` tiles wait)."""

    def __init__(self, mm, plan, n1, n2, ledger_path, ledger, durable, depth=2):
        self.mm, self.plan, self.n1, self.n2 = mm, plan, n1, n2
        self.ledger_path, self.ledger, self.durable = ledger_path, ledger, durable
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="jaxcompare-kernel-writer", daemon=True)
        self.thread.start()

    def submit(self, t: int, out: tuple) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put((t, out), timeout=0.5)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                self._write(*item)
            except BaseException as e:  # re-raised in the computing thread
                self.error = e

    def _write(self, t: int, out: tuple) -> None:
        sums = []
        for (rows, cols), a in zip(_regions(self.plan, t, self.n1, self.n2), out):
            a = np.asarray(a)[: rows.stop - rows.start, : cols.stop - cols.start]  # crop padding (a view)
            self.mm[rows, cols] = a  # contiguous rows: the mirror was transposed on the device
            sums.append(crc(a))
        if self.durable:
            self.mm.flush()
        self.ledger["checksums"][str(t)] = sums
        self.ledger["done"] = sorted(set(self.ledger["done"]) | {t})
        atomic_json(self.ledger_path, self.ledger, self.durable)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _current_ledger0(root: Path, state: dict) -> dict:
    """Process 0's records as they are on disk now (kept when another process rewrites the header)."""
    now = _read_state(root / "state.json", True)
    if now is None or now["fingerprint"] != state["fingerprint"]:
        return dict(done=state["done"], checksums=state["checksums"])
    return dict(done=now["done"], checksums=now["checksums"])


def load_kernel(path: str | os.PathLike) -> np.memmap:
    """The kernel of a finished :func:`kernel_to_disk` store, verified: every tile against the checksum its process
    recorded (``np.load(path / "kernel.npy")`` reads the same array without any check).

    Needs neither the model nor the data: the ledgers (``state*.json``) hold the shape, dtype, block size and
    checksums. The whole file is read once to verify it.

    Args:
      path: the store's directory (the ``path=`` of :func:`.kernel_to_disk`).

    Returns:
      The kernel as a read-only ``numpy.memmap`` of shape ``(N1, N2, ...)`` and the stored dtype.

    Raises:
      FileNotFoundError: ``path`` holds no store (no ``state.json``).
      ValueError: the ledger cannot be read; ``kernel.npy`` is missing, truncated or not of the recorded shape and
        dtype; tiles are not written yet or do not match their checksums (rerun :func:`kernel_to_disk` with the
        same arguments: it completes or repairs the store).

    Example:
      >>> def apply_fn(params, x):
      ...     return jnp.tanh(x @ params["w1"]) @ params["w2"]
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> params = {"w1": jax.random.normal(k1, (3, 16)), "w2": jax.random.normal(k2, (16, 2))}
      >>> x = jax.random.normal(k3, (10, 3))
      >>> import os, tempfile
      >>> run = os.path.join(tempfile.mkdtemp(), "ntk_run")
      >>> K = jc.kernel_to_disk(jc.trace_ntk(apply_fn), params, x, path=run, block_size=4, progress_bar=False)
      >>> bool(np.array_equal(jc.load_kernel(run), K))            # later, in another process
      True
    """
    if path is None:
        raise TypeError("path is required: the directory of a kernel_to_disk store.")
    root = store_dir(path, "a kernel_to_disk store")
    state_path = root / "state.json"
    if not state_path.is_file():
        raise FileNotFoundError(f"{root} holds no kernel_to_disk store: {state_path} does not exist.")
    state = _read_state(state_path, True)
    if state is None:
        raise ValueError(
            f"{state_path} cannot be read as a kernel_to_disk ledger (damaged, of another version, or another "
            "store's); rerun kernel_to_disk to recompute the kernel."
        )
    try:
        shape, dtype = tuple(int(d) for d in state["shape"]), np.dtype(state["dtype"])
        plan = TilePlan(shape[0], shape[1], int(state["block_size"]), bool(state["symmetric"]))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"{state_path} cannot be read as a kernel_to_disk ledger ({type(e).__name__}: {e}).") from None
    kpath = root / "kernel.npy"
    mm = open_npy(kpath, shape, dtype, mode="r")
    if mm is None:
        raise ValueError(
            f"{kpath} is missing, truncated or not of the recorded shape {list(shape)} and dtype {dtype}; rerun "
            "kernel_to_disk with the same arguments to recompute it."
        )
    tiles = set(range(len(plan.pairs)))
    ok, bad = _checked_tiles(mm, plan, _ledgers(root, state), tiles, shape[0], shape[1])
    if ok != tiles:
        missing = len(tiles - ok - bad)
        raise ValueError(
            f"{kpath} is not a finished, intact kernel: {missing} of {len(tiles)} tiles are not written yet and "
            f"{len(bad)} do not match their checksums (edited or damaged); rerun kernel_to_disk with the same "
            "arguments to complete or repair it."
        )
    return mm
