"""`optimum-cli si prune|eval|report ...`: optimum-si's command line as a subcommand of Optimum's CLI.

optimum-cli (optimum >= 2.0) imports every module of the `optimum.commands.register` namespace package and registers
the commands listed in its `REGISTER_COMMANDS`. This file lives in the optimum_si source tree; `pyproject.toml` maps
its folder onto that namespace (`package-dir`), so a wheel installs it as
`optimum/commands/register/register_optimum_si.py` and an editable install exposes it through setuptools' editable
finder. There must be no `__init__.py` in this folder (PEP 420 namespace).

Every optimum-cli call imports this module, so it stays light: optimum_si (and torch) load only when `si` runs.
The arguments are handed over untouched to `optimum_si.cli.main`, so the flags, help and errors are exactly those
of `optimum-si` (mistakes: one line, exit status 2).
"""

from __future__ import annotations

import argparse
import sys

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

__all__ = ["SICommand", "REGISTER_COMMANDS"]

PROG = "optimum-cli si"


class SICommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="si",
                          help="Post-training pruning with Sparsity Induction (optimum-si): prune, eval, report.")

    @staticmethod
    def parse_args(parser: argparse.ArgumentParser) -> None:
        # optimum-si's own parser does the real parsing: everything from the command on is passed through as is.
        # Only what may come before the command is this parser's: `-v`, handed on, and `-h`, whose help is
        # optimum-si's (built when asked for, so that listing optimum-cli's commands does not import torch).
        parser.add_argument("-v", "--verbose", dest="si_verbose", action="store_true",
                            help="log one line per block")
        parser.add_argument("si_argv", nargs=argparse.REMAINDER, metavar="{prune,eval,report} ...")

        def print_help(file=None):
            from optimum_si.cli import build_parser

            build_parser(PROG).print_help(file)

        parser.print_help = print_help

    def run(self) -> None:
        from optimum_si.cli import main

        sys.exit(main(["-v"] * bool(self.args.si_verbose) + list(self.args.si_argv), prog=PROG))


REGISTER_COMMANDS = [SICommand]
