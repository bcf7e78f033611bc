"""Command-line interface: ``jaxcompare demo|alpha|lwr|ntk``."""
from __future__ import annotations


def main(argv=None) -> int:  # replaced by the full CLI
    from ._main import main as _main

    return _main(argv)
