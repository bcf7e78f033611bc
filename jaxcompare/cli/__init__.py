"""Command-line interface: ``jaxcompare demo|alpha|lwr|ntk`` (``jaxcompare <command> --help``)."""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    from ._main import main as _main

    return _main(argv)


if __name__ == "__main__":  # python -m jaxcompare.cli
    sys.exit(main())
