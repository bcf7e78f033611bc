"""Progress reporting for long host-side loops (tqdm when installed, a plain stderr line otherwise)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

__all__ = ["progress", "progress_enabled"]


def progress_enabled(flag: bool | None) -> bool:
    """Resolve a ``progress_bar`` argument: ``None`` means on unless ``JAXCOMPARE_PROGRESS=0``."""
    if flag is not None:
        return flag
    return os.environ.get("JAXCOMPARE_PROGRESS", "1") not in ("0", "false", "no")


def _interval() -> float:
    """Seconds between updates: 0.1 on a terminal (tqdm's default), 30 in a log file or pipe."""
    try:
        return 0.1 if sys.stderr.isatty() else 30.0
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return 30.0


def progress(it: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool | None = None) -> Iterator[T]:
    """Wrap an iterable with a progress bar on stderr.

    Disabled by ``enabled=False`` or the environment variable ``JAXCOMPARE_PROGRESS=0``. When stderr is not a
    terminal (a batch job's log, a pipe) the line is written at most every 30 s instead of several times a second,
    so that logs stay readable.
    """
    if not progress_enabled(enabled):
        yield from it
        return
    interval = _interval()
    try:
        from tqdm.auto import tqdm  # optional dependency

        yield from tqdm(
            it, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True, mininterval=interval
        )
        return
    except ImportError:
        pass
    t0 = time.perf_counter()
    last = 0.0
    for i, x in enumerate(it, 1):
        yield x
        now = time.perf_counter()
        if now - last > max(interval, 1.0) or (total is not None and i == total):
            last = now
            tot = f"/{total}" if total else ""
            sys.stderr.write(f"\r{desc} {i}{tot} [{now - t0:.1f}s]")
            sys.stderr.flush()
    sys.stderr.write("\n")
