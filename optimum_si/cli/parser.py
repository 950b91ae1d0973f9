"""The argument parser of `optimum-si`: one-line errors (exit status 2), defaults shown in the help, and the
`prune` flags in groups (`flags.py` generates the recipe's from the config types). Torch-free."""

from __future__ import annotations

import argparse
import typing

from .flags import add_recipe_flags

__all__ = ["build_parser", "DTYPES"]

DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")

PRUNE_DESCRIPTION = """\
Prune the decoder blocks of a causal LM with a base method (optionally after Sparsity Induction, optionally with an
OWL allocation) and save a dense checkpoint with exact zeros, its recipe (si_config.json), its report (si_report.json)
and a model card. Every flag is checked before torch or the model is loaded."""
# The generated usage would list all ~60 flags; the groups below say the rest.
PRUNE_USAGE = ("%(prog)s --model DIR_OR_REPO --output DIR [--method METHOD] [--sparsity SPARSITY]\n"
               "         [--mask-structure N:M] [--dataset FILE_OR_SET] [--induction] [options in the groups below]")
PRUNE_EPILOG = """examples:
  optimum-si prune --model HuggingFaceTB/SmolLM2-135M --method wanda --sparsity 0.5 --dataset calib.txt \\
      --num-samples 32 --seqlen 512 --output smollm2-wanda-50
  optimum-si prune --model big-model/ --method sparsegpt --mask-structure 2:4 --dataset c4 --induction \\
      --stream --output big-model-2of4
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`<prog> <command>: error: ...`, status 2), like every other CLI mistake."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default where it has a meaningful one (not None / False / a list); descriptions and
    examples keep their own lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


def _add_verbose(parser: argparse.ArgumentParser, top: bool) -> None:
    # Accepted before and after the command; SUPPRESS keeps a subcommand from resetting a `-v` given before it.
    parser.add_argument("-v", "--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="log one line per block, and print tracebacks of errors")


def _positive_int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def build_parser(prog: str = "optimum-si") -> argparse.ArgumentParser:
    formatter = _HelpFormatter
    parser = _Parser(prog=prog, description="Post-training pruning with Sparsity Induction.", formatter_class=formatter)
    _add_verbose(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    prune = commands.add_parser("prune", help="prune a causal LM and save the checkpoint", formatter_class=formatter,
                                description=PRUNE_DESCRIPTION, epilog=PRUNE_EPILOG, usage=PRUNE_USAGE)
    _add_verbose(prune, top=False)
    source = prune.add_argument_group("model", "The dense model to prune.")
    source.add_argument("--model", required=True, metavar="DIR_OR_REPO",
                        help="local folder or Hub repo id (owner/name) of the dense model")
    source.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="dtype to load the model in ('auto': the checkpoint's)")
    source.add_argument("--trust-remote-code", action="store_true",
                        help="run the Python code a model folder or repo ships (only for sources you trust)")

    def recipe_file(group: argparse._ArgumentGroup) -> None:
        group.add_argument("--recipe", metavar="FILE_OR_DIR",
                           help="an si_config.json file, or a folder holding one, to start from (flags override it)")

    def dataset(group: argparse._ArgumentGroup) -> None:
        group.add_argument("--dataset", metavar="FILE_OR_SET",
                           help="calibration text file (UTF-8), a named set (c4, wikitext2, pileval), a Hub dataset "
                                "id (owner/name, split train) or a local dataset folder; needed by every method but "
                                "magnitude, by --induction and by --sparsity-profile owl")

    def stream(group: argparse._ArgumentGroup) -> None:
        group.add_argument("--stream", action="store_true",
                           help="stream the checkpoint block by block from its safetensors (for models larger than "
                                "RAM; the same result as in memory)")

    add_recipe_flags(prune, {"recipe": recipe_file, "calibration": dataset, "run options": stream})
    output = prune.add_argument_group("output", "Where the checkpoint goes.")
    output.add_argument("--output", required=True, metavar="DIR", help="folder to write the pruned checkpoint to")
    output.add_argument("--overwrite", action="store_true",
                        help="replace a checkpoint (finished, or an unfinished streamed run of another recipe) already "
                             "in --output; without it such a folder is refused before the model is loaded")
    output.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                        help="largest safetensors shard to write, e.g. 5GB or 500MB")
    output.add_argument("--base-model", metavar="REPO_ID",
                        help="Hub repo id of the dense model, for the recipe and the card when --model is a local "
                             "folder (a Hugging Face cache snapshot is recognised by itself)")
    output.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the saved checkpoint to this Hub repo")
    output.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")

    evaluate = commands.add_parser("eval", help="perplexity on a text file or named set; zero-shot task scores",
                                   formatter_class=formatter)
    _add_verbose(evaluate, top=False)
    evaluate.add_argument("--model", required=True, metavar="DIR_OR_REPO",
                          help="local folder or Hub repo id of the model")
    evaluate.add_argument("--text", metavar="FILE", help="evaluation text file (UTF-8)")
    evaluate.add_argument("--dataset", metavar="SET",
                          help="perplexity on a named set (wikitext2: test split; c4: validation) or a Hub dataset id "
                               "(its test split)")
    evaluate.add_argument("--tasks", nargs="+", metavar="TASK",
                          help="zero-shot tasks of lm-evaluation-harness, or the preset wanda7 (needs the eval extra)")
    evaluate.add_argument("--num-fewshot", type=_positive_int(0), default=0, help="with --tasks: examples per prompt")
    evaluate.add_argument("--limit", type=_positive_int(1), default=None,
                          help="with --tasks: at most this many documents per task (quick checks only)")
    evaluate.add_argument("--include-path", metavar="DIR", help="with --tasks: a folder of your own task YAML files")
    evaluate.add_argument("--seqlen", type=_positive_int(2), default=2048, help="tokens per evaluation window")
    evaluate.add_argument("--max-windows", type=_positive_int(1), default=None,
                          help="evaluate at most this many windows (default: all)")
    evaluate.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype to load the model in")
    evaluate.add_argument("--trust-remote-code", action="store_true",
                          help="run the Python code a model folder or repo ships (only for sources you trust)")
    evaluate.add_argument("--record-into", metavar="DIR",
                          help="checkpoint whose si_report.json and card get the --dataset and --tasks results "
                               "(default: --model itself when it is an optimum-si checkpoint; --text results are "
                               "only printed)")
    evaluate.add_argument("--record-as", choices=("pruned", "dense"), default="pruned",
                          help="record the results as the pruned model's or as the dense model's (evaluate the base "
                               "model with --record-into out/ --record-as dense for the side-by-side table)")
    evaluate.add_argument("--no-record", action="store_true", help="only print the results")

    report = commands.add_parser("report", help="measured sparsity of a checkpoint (overall and N:M; per module with "
                                                "--json)",
                                 formatter_class=formatter)
    _add_verbose(report, top=False)
    report.add_argument("path", help="checkpoint folder")
    report.add_argument("--json", action="store_true", help="print the full report as JSON")
    report.add_argument("--plots", nargs="?", const="", metavar="DIR",
                        help="also draw the charts of the run from its si_report.json (relative output error per "
                             "block; the sparsity allocation when the Linears got different sparsities) into DIR "
                             "(default: the checkpoint folder); needs matplotlib")
    return parser
