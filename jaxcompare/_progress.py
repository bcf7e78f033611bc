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


def progress(it: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool | None = None) -> Iterator[T]:
    """Wrap an iterable with a progress bar on stderr.

    Disabled by ``enabled=False`` or the environment variable ``JAXCOMPARE_PROGRESS=0``.
    """
    if not progress_enabled(enabled):
        yield from it
        return
    try:
        from tqdm.auto import tqdm  # optional dependency

        yield from tqdm(it, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
        return
    except ImportError:
        pass
    t0 = time.perf_counter()
    last = 0.0
    for i, x in enumerate(it, 1):
        yield x
        now = time.perf_counter()
        if now - last > 1.0 or (total is not None and i == total):
            last = now
            tot = f"/{total}" if total else ""
            sys.stderr.write(f"\r{desc} {i}{tot} [{now - t0:.1f}s]")
            sys.stderr.flush()
    sys.stderr.write("\n")
