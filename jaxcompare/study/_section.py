"""What a section of the main job is: a name, its sizes and a function that writes into the report."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax

from .._validation import check_float
from ._report import Report

__all__ = ["Section", "log", "pyplot"]


@dataclasses.dataclass(frozen=True)
class Section:
    """One section of the main job.

    Attributes:
      name: registry name (``jaxcompare demo --sections NAME``).
      run: ``run(key, report, sizes, out_dir) -> dict``: adds text, tables and figures to ``report`` and returns the
        section's numbers (stored under ``results.json[name]``).
      quick, full: the section's sizes for ``--quick`` and the full run (keys are the section's own).
      cost: its CPU time relative to the others (measured, rough): parallel workers start the costliest sections
        first, so that no worker is left with a long one at the end. It never changes a number.
    """

    name: str
    run: Callable[[jax.Array, Report, Mapping[str, Any], str], dict]
    quick: Mapping[str, Any]
    full: Mapping[str, Any]
    cost: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"Section.name must be an identifier (a str such as 'ensembles'), got {self.name!r}.")
        if not callable(self.run):
            raise TypeError(f"Section.run must be callable run(key, report, sizes, out_dir) -> dict, got {self.run!r}.")
        for which in ("quick", "full"):
            if not isinstance(getattr(self, which), Mapping):
                raise TypeError(
                    f"Section.{which} must be a mapping of sizes, got {type(getattr(self, which)).__name__}."
                )
        if set(self.quick) != set(self.full):
            raise ValueError(
                f"Section {self.name!r}: quick and full must set the same sizes; only in quick: "
                f"{sorted(set(self.quick) - set(self.full))}, only in full: {sorted(set(self.full) - set(self.quick))}."
            )
        check_float(self.cost, "Section.cost", low=0.0, low_open=True)
        object.__setattr__(self, "quick", MappingProxyType(dict(self.quick)))
        object.__setattr__(self, "full", MappingProxyType(dict(self.full)))

    def sizes(self, quick: bool) -> Mapping[str, Any]:
        return self.quick if quick else self.full


def log(msg: str) -> None:
    """A progress line on stderr (the report's numbers are on stdout/disk, never here)."""
    sys.stderr.write(f"[jaxcompare demo] {msg}\n")
    sys.stderr.flush()


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported lazily, with an actionable error)."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the main job's figures need matplotlib: pip install 'jaxcompare[demo]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
