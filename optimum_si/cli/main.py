"""`optimum-si` command line: prune, eval, report.

    optimum-si prune --model <dir|repo> --method wanda --sparsity 0.5 --mask-structure 2:4 \\
                     --dataset calib.txt --num-samples 128 --seqlen 2048 --output out/ [--induction] \\
                     [--stream] [--push-to-hub owner/name] [--trust-remote-code] [-v]
    optimum-si eval --model out/ --text eval.txt [--seqlen 2048] [--max-windows 40]
    optimum-si report out/ [--json] [--plots [DIR]]

The same commands run as `optimum-cli si prune|eval|report ...` (optimum's CLI; see
`optimum_si/commands/register/register_optimum_si.py`).
The `prune` flags are generated from the config types (their help text included), so they never drift.

Every argument is checked before torch, transformers or a model is loaded, so mistakes are answered at once (a named
or Hub --dataset is fetched before the model too). User mistakes print one line naming the flag and exit with status
2; other failures (a Hub that cannot be reached included: the line names the endpoint and the fixes) print one line
and exit with status 1 (`-v` prints the traceback too). Code shipped with a model folder runs only with `--trust-remote-code`: transformers
is never allowed to ask on stdin.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import typing

from .commands import eval_command, first_line, prune_command, report_command
from .errors import UsageError
from .flags import cli_message
from .parser import build_parser

__all__ = ["main"]


# Exceptions that mean the input was wrong (exit 2); anything else is a failure of the run (exit 1).
_USER_ERRORS = (UsageError, ValueError, NotImplementedError, OSError)


def main(argv: typing.Sequence[str] | None = None, prog: str = "optimum-si") -> int:
    """Run one command; returns the exit status (argparse itself exits with 2 on malformed flags). `prog` names the
    command in usage and error lines (`optimum-cli si` when run through optimum's CLI)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return {"prune": prune_command, "eval": eval_command, "report": report_command}[args.command](args)
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place that turns every failure into one line
        from ..hub import HubPushError
        from ..network import NetworkError

        if args.verbose and not isinstance(err, UsageError):  # a usage error's line says all there is
            traceback.print_exc()
        if isinstance(err, NetworkError):  # not the user's mistake: the network's (exit 1); the line names the fix
            print(f"{prog} {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
            return 1
        # Messages of our own are whole sentences (newlines folded); others are cut to their first line.
        message = " ".join(str(err).split()) if isinstance(err, (UsageError, HubPushError)) else first_line(err)
        if isinstance(err, (ValueError, OSError)) and args.command == "prune":  # the library's words in flags
            message = cli_message(message)
        from safetensors import SafetensorError  # a corrupted weight file is the user's to fix, like any bad file

        if isinstance(err, (*_USER_ERRORS, SafetensorError)) and not isinstance(err, HubPushError):
            print(f"{prog} {args.command}: error: {message}", file=sys.stderr)
            return 2
        kind = "" if isinstance(err, HubPushError) else f"{type(err).__name__}: "
        hint = "" if args.verbose else " (run with -v for the traceback)"
        print(f"{prog} {args.command}: error: {kind}{message}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
