"""``jaxcompare`` command line: ``demo``, ``alpha``, ``lwr``, ``ntk``, ``compare``, ``spectra``.

Every failure prints one line ``jaxcompare <command>: error: ...`` on stderr and exits with status 2 (``--debug``
prints the traceback first); output paths are checked before any work. A run that finishes with a flagged result
(``lwr``: diverged, loss grew) exits with status 1.
"""

from __future__ import annotations

import sys
import traceback

from ._io import CLIError

__all__ = ["main"]


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    from ._commands import COMMANDS
    from ._parser import build_parser

    args = build_parser().parse_args(argv)
    prefix = f"jaxcompare {args.command}"
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI boundary: every failure becomes one line
        if args.debug:
            traceback.print_exc()
        if isinstance(e, CLIError):
            msg = _first_line(e)
        else:
            if isinstance(e, (ValueError, TypeError, FloatingPointError)):
                msg = _first_line(e)
            elif isinstance(e, MemoryError):
                msg = "out of memory; use smaller inputs or a smaller --block-size"
            else:
                msg = f"{type(e).__name__}: {_first_line(e)}"
            if not args.debug:
                msg += " (rerun with --debug for the traceback)"
        print(f"{prefix}: error: {msg}", file=sys.stderr)
        return 2
