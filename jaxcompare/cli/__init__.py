"""Command-line interface: ``jaxcompare demo|alpha|lwr|ntk`` (``jaxcompare <command> --help``).

Also the parameter files ``jaxcompare ntk`` reads: :func:`save_params` / :func:`load_params` (``.npz`` of
``/``-joined names).
"""

from __future__ import annotations

import sys

from ._params import load_params, save_params

__all__ = ["main", "save_params", "load_params"]


def main(argv: list[str] | None = None) -> int:
    """Run ``jaxcompare`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    from ._main import main as _main

    return _main(argv)


if __name__ == "__main__":  # python -m jaxcompare.cli
    sys.exit(main())
