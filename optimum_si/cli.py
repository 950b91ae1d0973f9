"""`optimum-si` command line: prune, eval, report.

    optimum-si prune --model <dir|repo> --method wanda --sparsity 0.5 --mask-structure 2:4 \\
                     --dataset calib.txt --num-samples 128 --seqlen 2048 --output out/ [--induction] \\
                     [--stream] [--push-to-hub owner/name]
    optimum-si eval --model out/ --text eval.txt [--seqlen 2048] [--max-windows 40]
    optimum-si report out/ [--json] [--plots [DIR]]

The same commands run as `optimum-cli si prune|eval|report ...` (optimum's CLI; see
`optimum_si/commands/register/register_optimum_si.py`).
The `prune` flags are generated from the `SIConfig` fields (their help text included), so they never drift.
User mistakes print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from typing import Any

from .config import SIConfig

__all__ = ["main", "build_parser"]

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """A mistake of the user's: printed as one line, exit status 2."""


def _field_type(field: dataclasses.Field) -> tuple[Any, bool]:
    """(scalar type, is_list) of an SIConfig field, from its annotation string."""
    text = str(field.type)
    is_list = "list[" in text
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if text.startswith(name) or f"[{name}]" in text:
            return kind, is_list
    return str, is_list


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(SIConfig):
        flag = "--" + field.name.replace("_", "-")
        kind, is_list = _field_type(field)
        help_text = field.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif is_list:
            parser.add_argument(flag, dest=field.name, nargs="+", type=kind, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=field.name, type=kind, default=None, help=help_text)


def build_parser(prog: str = "optimum-si") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Post-training pruning with Sparsity Induction.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log one line per block")
    commands = parser.add_subparsers(dest="command", required=True)

    prune = commands.add_parser("prune", help="prune a causal LM and save the checkpoint")
    prune.add_argument("--model", required=True, help="local folder or Hub repo id of the dense model")
    prune.add_argument("--dataset", help="calibration text file (UTF-8)")
    prune.add_argument("--output", required=True, help="folder to write the pruned checkpoint to")
    prune.add_argument("--recipe", help="an si_config.json folder or file to start from (flags override it)")
    prune.add_argument("--dtype", default="auto", help="dtype to load the model in (default: the checkpoint's)")
    prune.add_argument("--max-shard-size", default="5GB")
    prune.add_argument("--stream", action="store_true",
                       help="stream the checkpoint block by block from its safetensors (for models larger than RAM)")
    prune.add_argument("--overwrite", action="store_true", help="with --stream: replace a finished or different run")
    prune.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the saved checkpoint to this Hub repo")
    prune.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")
    _add_config_flags(prune)

    evaluate = commands.add_parser("eval", help="perplexity of a model on a text file")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--text", required=True, help="evaluation text file (UTF-8)")
    evaluate.add_argument("--seqlen", type=int, default=2048)
    evaluate.add_argument("--max-windows", type=int, default=None)
    evaluate.add_argument("--dtype", default="float32")

    report = commands.add_parser("report", help="measured sparsity of a checkpoint (per module and overall)")
    report.add_argument("path", help="checkpoint folder")
    report.add_argument("--json", action="store_true", help="print the full report as JSON")
    report.add_argument("--plots", nargs="?", const="", metavar="DIR",
                        help="also draw the charts of the run from its si_report.json (per-layer sparsity, importance "
                             "histograms after Sparsity Induction) into DIR (default: the checkpoint folder); needs "
                             "matplotlib")
    return parser


def _config_from_args(args: argparse.Namespace) -> SIConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SIConfig) if getattr(args, f.name) is not None}
    if args.recipe:
        recipe = args.recipe if os.path.isdir(args.recipe) else os.path.dirname(os.path.abspath(args.recipe))
        return SIConfig.from_pretrained(recipe, **values)
    return SIConfig(**values)


def _load_model(path: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise UsageError(f"--dtype {dtype!r} is not a torch dtype (try float32, bfloat16, float16 or auto).")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise UsageError(f"cannot load {path!r}: {str(err).splitlines()[0]}") from err
    return model, tokenizer


def _prune(args: argparse.Namespace) -> int:
    from .pruner import SIPruner

    config = _config_from_args(args)
    if args.dataset and not os.path.isfile(args.dataset):
        raise UsageError(f"--dataset {args.dataset!r} is not a file.")
    pruner = SIPruner(config)
    if args.stream:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.model) if args.dataset else None
        pruner.prune(args.model, tokenizer=tokenizer, dataset=args.dataset, save_dir=args.output,
                     max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    else:
        model, tokenizer = _load_model(args.model, args.dtype)
        pruner.prune(model, tokenizer=tokenizer, dataset=args.dataset)
        pruner.save(model, args.output, tokenizer=tokenizer, max_shard_size=args.max_shard_size)
    print(f"{pruner.report.summary()}; saved to {args.output}")
    if args.push_to_hub:
        url = pruner.push_to_hub(args.output, args.push_to_hub, private=args.private or None)
        print(f"pushed to {url}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import perplexity

    if not os.path.isfile(args.text):
        raise UsageError(f"--text {args.text!r} is not a file.")
    model, tokenizer = _load_model(args.model, args.dtype)
    with open(args.text, encoding="utf-8") as handle:
        text = handle.read()
    value = perplexity(model, tokenizer, text, seqlen=args.seqlen, max_windows=args.max_windows, show_progress=True)
    print(f"perplexity {value:.4f} ({args.model}, {args.text}, seqlen {args.seqlen})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .sparsity import sparsity_report

    if not os.path.isdir(args.path):
        raise UsageError(f"{args.path!r} is not a folder.")
    plots_dir = (args.plots or args.path) if args.plots is not None else None
    if plots_dir is not None and not os.path.isdir(plots_dir):
        raise UsageError(f"--plots {plots_dir!r} is not a folder.")
    report = sparsity_report(args.path)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.path}: {report['pruned_modules']} pruned modules, overall sparsity {report['sparsity']:.4f}")
        for pattern, ok in report["patterns"].items():
            print(f"  {pattern}: {'every pruned module follows it' if ok else 'not followed'}")
    if plots_dir is not None:
        from .plots import PlotUnavailable, render_plots

        try:
            written = render_plots(args.path, plots_dir)
        except PlotUnavailable as err:
            raise UsageError(str(err)) from err
        for name in written.values():
            print(f"wrote {os.path.join(plots_dir, name)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def main(argv: typing.Sequence[str] | None = None, prog: str = "optimum-si") -> int:
    """Run one command; returns the exit status (argparse itself exits with 2 on malformed flags). `prog` names the
    command in usage and error lines (`optimum-cli si` when run through optimum's CLI)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return {"prune": _prune, "eval": _eval, "report": _report}[args.command](args)
    except (UsageError, ValueError, NotImplementedError, FileNotFoundError, FileExistsError) as err:
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from .hub import HubPushError

        if not isinstance(err, HubPushError):
            raise
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
