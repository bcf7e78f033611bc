"""The ``{name: command}`` table of the CLI, and the ``demo`` command."""

from __future__ import annotations

import os

from ._alpha import cmd_alpha
from ._compare import run as cmd_compare
from ._io import CLIError, check_output_dir
from ._lwr import cmd_lwr
from ._ntk import cmd_ntk
from ._spectra import cmd_spectra

__all__ = ["COMMANDS"]


def cmd_demo(args) -> int:
    from ..study import SECTIONS, run_study

    sections = None
    if args.sections is not None:
        sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        bad = [s for s in sections if s not in SECTIONS]
        if bad or not sections:
            raise CLIError(f"--sections: unknown section(s) {bad or [args.sections]}; choose from {','.join(SECTIONS)}")
    check_output_dir(args.out)
    path = run_study(args.out, quick=args.quick, seed=args.seed, sections=sections)
    print(f"report written to {path} (numbers in {os.path.join(args.out, 'results.json')})")
    return 0


COMMANDS = {
    "demo": cmd_demo,
    "alpha": cmd_alpha,
    "lwr": cmd_lwr,
    "ntk": cmd_ntk,
    "compare": cmd_compare,
    "spectra": cmd_spectra,
}
