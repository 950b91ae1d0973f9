"""`optimum-si` command line: prune, eval, report.

    optimum-si prune --model <dir|repo> --method wanda --sparsity 0.5 --mask-structure 2:4 \\
                     --dataset calib.txt --num-samples 128 --seqlen 2048 --output out/ [--induction] \\
                     [--stream] [--push-to-hub owner/name] [--trust-remote-code] [-v]
    optimum-si eval --model out/ --text eval.txt [--seqlen 2048] [--max-windows 40]
    optimum-si report out/ [--json] [--plots [DIR]]

The same commands run as `optimum-cli si prune|eval|report ...` (optimum's CLI; see
`optimum_si/commands/register/register_optimum_si.py`).
The `prune` flags are generated from the `SIConfig` fields (their help text included), so they never drift.

Every argument is checked before torch, transformers or a model is loaded, so mistakes are answered at once. User
mistakes print one line naming the flag and exit with status 2; other failures print one line and exit with status 1
(`-v` prints the traceback too). Code shipped with a model folder runs only with `--trust-remote-code`: transformers
is never allowed to ask on stdin.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import json
import logging
import os
import re
import sys
import traceback
import typing
from typing import Any

from .config import CHOICES, CONFIG_NAME, SIConfig, read_recipe

__all__ = ["main", "build_parser"]

logger = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
_SHARD_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?$", re.IGNORECASE)
# Hub repo ids are 'name' or 'owner/name'; anything else that does not exist locally was meant as a folder.
_PATH_HINTS = ("./", "../", "/", "~", ".\\", "..\\")


class UsageError(Exception):
    """A mistake of the user's: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`<prog> <command>: error: ...`, status 2), like every other CLI mistake."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's default where it has a meaningful one (not None / False / a list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


def _field_type(field: dataclasses.Field) -> tuple[Any, bool]:
    """(scalar type, is_list) of an SIConfig field, from its resolved type hint (`X | None` -> X, `list[X]`)."""
    hint = typing.get_type_hints(SIConfig)[field.name]
    options = [arg for arg in typing.get_args(hint) if arg is not type(None)] if _is_union(hint) else [hint]
    inner = options[0]
    is_list = typing.get_origin(inner) is list
    if is_list:
        inner = typing.get_args(inner)[0]
    return (inner if inner in (bool, int, float) else str), is_list


def _is_union(hint: Any) -> bool:
    import types

    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(SIConfig):
        flag = "--" + field.name.replace("_", "-")
        kind, is_list = _field_type(field)
        help_text = field.metadata.get("help", "").replace("%", "%%")
        default = field.default if field.default is not dataclasses.MISSING else None
        # The flags default to None ("not given", so that a --recipe keeps its value); the help shows SIConfig's.
        if default is not None and not isinstance(default, bool) or default is True:
            help_text += f" (default: {default})"
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif is_list:
            parser.add_argument(flag, dest=field.name, nargs="+", type=kind, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=field.name, type=kind, default=None, choices=CHOICES.get(field.name),
                                help=help_text)


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

    prune = commands.add_parser("prune", help="prune a causal LM and save the checkpoint", formatter_class=formatter)
    _add_verbose(prune, top=False)
    prune.add_argument("--model", required=True, metavar="DIR_OR_REPO",
                       help="local folder or Hub repo id (owner/name) of the dense model")
    prune.add_argument("--dataset", metavar="FILE_OR_SET",
                       help="calibration text file (UTF-8), a named set (c4, wikitext2, pileval), a Hub dataset id "
                            "(owner/name, split train) or a local dataset folder; needed by wanda, sparsegpt and "
                            "--induction")
    prune.add_argument("--output", required=True, metavar="DIR", help="folder to write the pruned checkpoint to")
    prune.add_argument("--recipe", metavar="FILE_OR_DIR",
                       help="an si_config.json file, or a folder holding one, to start from (flags override it)")
    prune.add_argument("--dtype", default="auto", choices=_DTYPES,
                       help="dtype to load the model in ('auto': the checkpoint's)")
    prune.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                       help="largest safetensors shard to write, e.g. 5GB or 500MB")
    prune.add_argument("--stream", action="store_true",
                       help="stream the checkpoint block by block from its safetensors (for models larger than RAM)")
    prune.add_argument("--overwrite", action="store_true", help="with --stream: replace a finished or different run")
    prune.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the saved checkpoint to this Hub repo")
    prune.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo as private")
    prune.add_argument("--trust-remote-code", action="store_true",
                       help="run the Python code a model folder or repo ships (only for sources you trust)")
    prune.add_argument("--base-model", metavar="REPO_ID",
                       help="Hub repo id of the dense model, for the recipe and the card when --model is a local "
                            "folder (a Hugging Face cache snapshot is recognised by itself)")
    _add_config_flags(prune)

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
    evaluate.add_argument("--dtype", default="float32", choices=_DTYPES, help="dtype to load the model in")
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


# ------------------------------------------------------------------------------------------ checks (no torch)
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cli_message(err: BaseException | str) -> str:
    """An error of the Python API in CLI terms: `SIConfig(ignore=[...])` -> `--ignore`, `seqlen=8` -> `--seqlen 8`,
    and a field name that opens the message (`num_samples must ...`) -> `--num-samples must ...`."""
    text = str(err)
    for field in dataclasses.fields(SIConfig):
        flag = _flag(field.name)
        text = re.sub(rf"SIConfig\({field.name}=[^)]*\)", flag, text)
        text = re.sub(rf"(?<![\w.-]){field.name}=", f"{flag} ", text)
        text = re.sub(rf"^{field.name}(?=\W)", flag, text)
        text = text.replace(f"`{field.name}`", flag)
    return text


def _config_from_args(args: argparse.Namespace) -> SIConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SIConfig) if getattr(args, f.name) is not None}
    if not args.recipe:
        try:
            return SIConfig(**values)
        except ValueError as err:
            raise UsageError(_cli_message(err)) from None
    path = args.recipe
    if os.path.isdir(path):
        path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(path):
            raise UsageError(f"--recipe {args.recipe!r} is a folder without {CONFIG_NAME}; give the recipe file "
                             "itself.")
    elif not os.path.isfile(path):
        if _looks_like_path(path) or path.endswith(".json") or not _is_repo_id(path):
            raise UsageError(f"--recipe {args.recipe!r}: no such file or folder.")
        try:  # a Hub repo holding an si_config.json
            return SIConfig.from_pretrained(path, **values)
        except OSError as err:
            raise UsageError(f"--recipe {args.recipe!r}: {err}") from None
        except ValueError as err:
            raise UsageError(f"--recipe {args.recipe!r}: {_cli_message(err)}") from None
    try:
        data = read_recipe(path)
    except OSError as err:
        raise UsageError(f"--recipe {args.recipe!r} cannot be read ({err.strerror or err}).") from None
    except ValueError as err:
        raise UsageError(f"--recipe: {err}") from None
    try:
        return SIConfig.from_dict(data, strict=False, **values)
    except ValueError as err:
        raise UsageError(f"--recipe {args.recipe!r}: {_cli_message(err)}") from None


def _looks_like_path(text: str) -> bool:
    return text.startswith(_PATH_HINTS) or os.sep in text.strip("/").replace("/", "", 1) or text.endswith("/")


def _is_repo_id(text: str) -> bool:
    from .hub import check_repo_id

    try:
        check_repo_id(text)
    except ValueError:
        return False
    return True


def _check_model_source(model: str, flag: str = "--model", stream: bool = False) -> None:
    """A model argument is an existing folder with a config.json, or a Hub repo id that may be fetched."""
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise UsageError(f"{flag} {model!r} has no config.json; it is not a transformers model folder.")
        if stream and not any(name.endswith(".safetensors") or name.endswith(".safetensors.index.json")
                              for name in os.listdir(model)):
            raise UsageError(
                f"{flag} {model!r} has no safetensors weights, and --stream reads only safetensors; convert the "
                "checkpoint (save_pretrained writes safetensors) or drop --stream."
            )
        return
    if os.path.exists(model):
        raise UsageError(f"{flag} {model!r} is a file; give the model folder (or a Hub repo id).")
    if _looks_like_path(model) or not _is_repo_id(model):
        raise UsageError(f"{flag} {model!r}: no such folder, and not a Hub repo id (owner/name).")
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise UsageError(
                f"{flag} {model!r} is not a local folder and not in the Hub cache, and HF_HUB_OFFLINE forbids "
                "downloading it; unset HF_HUB_OFFLINE or give a local folder."
            )


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _check_text_file(path: str, flag: str) -> None:
    """An existing, readable UTF-8 file (checked in chunks: the model is not loaded yet)."""
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path!r} is not a file.")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                decoder.decode(chunk)
                offset += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        raise UsageError(f"{flag} {path!r} is not UTF-8 text (invalid byte near offset {offset + err.start}); "
                         "convert it to UTF-8, e.g. with `iconv -t UTF-8`.") from None
    except OSError as err:
        raise UsageError(f"{flag} {path!r} cannot be read ({err.strerror or err}).") from None
    if offset == 0:
        raise UsageError(f"{flag} {path!r} is empty.")


def _check_prune_args(args: argparse.Namespace) -> SIConfig:
    config = _config_from_args(args)
    _check_model_source(args.model, stream=args.stream)
    if config.needs_calibration:
        if not args.dataset:
            needs = f"--method {config.method}" if config.pruning_method.needs_data else "--induction"
            raise UsageError(f"{needs} needs calibration text: pass --dataset FILE (UTF-8 text).")
    if args.dataset:
        from .calibration_sets import is_text_set_reference

        if not is_text_set_reference(args.dataset):
            _check_text_file(args.dataset, "--dataset")
    if args.base_model and args.stream:
        raise UsageError("--base-model applies without --stream (a streamed Hub --model names itself); drop one.")
    if not args.output.strip():
        raise UsageError("--output is empty; give a folder to write the checkpoint to.")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"--output {args.output!r} is a file; give a folder to write the checkpoint to.")
    if os.path.isdir(args.model) and os.path.realpath(args.output) == os.path.realpath(args.model):
        raise UsageError(f"--output {args.output!r} is the --model folder: writing there would replace the dense "
                         "checkpoint; choose another folder.")
    size = _SHARD_SIZE.match(args.max_shard_size.strip())
    if size is None or float(size.group(1)) <= 0:
        raise UsageError(f"--max-shard-size {args.max_shard_size!r} is not a size; use e.g. 5GB, 500MB or 2GiB.")
    if args.stream and args.trust_remote_code:
        raise UsageError("--stream builds only architectures that transformers ships, so it cannot run a model's own "
                         "code; drop --trust-remote-code, or drop --stream.")
    if not args.stream and (args.overwrite):
        logger.warning("--overwrite only applies with --stream; ignored.")
    if args.private and not args.push_to_hub:
        raise UsageError("--private applies to the Hub repo: use it with --push-to-hub REPO_ID.")
    if args.push_to_hub:
        from .hub import check_repo_id

        try:
            check_repo_id(args.push_to_hub, "--push-to-hub")
        except ValueError as err:
            raise UsageError(str(err)) from None
        if _hub_offline():
            raise UsageError("--push-to-hub needs the network, but HF_HUB_OFFLINE is set; unset it, or push later "
                             "with SIPruner.push_to_hub.")
    if config.activation_dir and config.activation_storage != "disk":
        logger.warning("--activation-dir is used only with --activation-storage disk; ignored.")
    _check_runtime(config)
    return config


def _check_runtime(config: SIConfig) -> None:
    from .devices import check_runtime

    try:
        check_runtime(config)
    except ValueError as err:
        raise UsageError(_cli_message(err)) from None


# ------------------------------------------------------------------------------------------ commands
def _load_model(path: str, dtype: str, trust_remote_code: bool):
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype == "auto" else getattr(torch, dtype),
                                                     trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError, SafetensorError) as err:
        raise UsageError(f"cannot load --model {path!r}: {_first_line(err)}{_remote_code_hint(err)}") from err
    except RecursionError as err:
        raise UsageError(_nested_json(path)) from err
    return model, tokenizer


def _nested_json(path: str) -> str:
    return (f"cannot load --model {path!r}: a JSON file of it (config.json, the tokenizer's) nests too deeply; the "
            "file is corrupted.")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _remote_code_hint(err: BaseException) -> str:
    return " Pass --trust-remote-code to run the model's own code." if "custom code" in str(err) else ""


def _check_stream_config(path: str) -> None:
    """Streaming builds the model from its config: refuse (never prompt for) a config that needs the model's code."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        if "custom code" in str(err):
            raise UsageError(f"--model {path!r} needs its own Python code, which --stream cannot run; prune it "
                             "without --stream and with --trust-remote-code.") from err
        raise UsageError(f"cannot load --model {path!r}: {_first_line(err)}") from err
    except RecursionError as err:
        raise UsageError(_nested_json(path)) from err


def _prune(args: argparse.Namespace) -> int:
    config = _check_prune_args(args)
    from .pruner import SIPruner

    pruner = SIPruner(config)
    if args.stream:
        from transformers import AutoTokenizer

        _check_stream_config(args.model)
        tokenizer = None
        if args.dataset:
            try:
                tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=False)
            except (OSError, ValueError) as err:
                raise UsageError(f"cannot load the tokenizer of --model {args.model!r}: {_first_line(err)}") from err
        pruner.prune(args.model, tokenizer=tokenizer, dataset=args.dataset, save_dir=args.output,
                     max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    else:
        model, tokenizer = _load_model(args.model, args.dtype, args.trust_remote_code)
        pruner.prune(model, tokenizer=tokenizer, dataset=args.dataset)
        pruner.save(model, args.output, tokenizer=tokenizer, max_shard_size=args.max_shard_size,
                    base_model=args.base_model)
    from .distributed import is_main_process

    show = is_main_process()  # under torchrun every rank runs this; one prints
    done = pruner.report.summary() if pruner.report is not None else "already complete for this run"
    if show:
        print(f"{done}; saved to {args.output}")
    if args.push_to_hub:
        url = pruner.push_to_hub(args.output, args.push_to_hub, private=args.private or None)
        if show:
            print(f"pushed to {url}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    _check_model_source(args.model)
    if not (args.text or args.dataset or args.tasks):
        raise UsageError("Nothing to evaluate: pass --text FILE, --dataset SET (e.g. wikitext2) or --tasks (e.g. "
                         "wanda7).")
    if args.text:
        _check_text_file(args.text, "--text")
    if args.dataset:
        from .calibration_sets import is_text_set_reference

        if not is_text_set_reference(args.dataset):
            raise UsageError(f"--dataset {args.dataset!r} is neither a named set (wikitext2, c4) nor a Hub dataset id "
                             "(owner/name); for a text file use --text.")
    if args.tasks:
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:
            raise UsageError('--tasks needs lm-evaluation-harness: pip install "optimum-si[eval]".')
    from .results import is_checkpoint

    record_into = None if args.no_record else args.record_into or (args.model if is_checkpoint(args.model) else None)
    if record_into is not None and not is_checkpoint(record_into):
        raise UsageError(f"--record-into {record_into!r} is not an optimum-si checkpoint folder (it needs "
                         "si_config.json and si_report.json).")
    from .calibration import read_text_file
    from .evaluation import perplexity

    model, tokenizer = _load_model(args.model, args.dtype, args.trust_remote_code)
    sources = []
    if args.text:
        sources.append((args.text, read_text_file(args.text, "--text ")))
    if args.dataset:
        from .calibration_sets import NAMED_SETS, text_set

        named = args.dataset if args.dataset in NAMED_SETS else text_set(args.dataset, "evaluation")
        sources.append((args.dataset, named))
    results: dict[str, typing.Any] = {"seqlen": args.seqlen} if args.dataset else {}
    for label, text in sources:
        try:
            value = perplexity(model, tokenizer, text, seqlen=args.seqlen, max_windows=args.max_windows,
                               show_progress=True)
        except ValueError as err:
            raise UsageError(_cli_message(err).replace("seqlen=", "--seqlen ")) from None
        print(f"perplexity {value:.4f} ({args.model}, {label}, seqlen {args.seqlen})")
        if label == args.dataset:
            results.setdefault("perplexity", {})[label] = value
    if args.tasks:
        from .evaluation import zero_shot

        try:
            scores = zero_shot(model, tokenizer, tasks=args.tasks, num_fewshot=args.num_fewshot, limit=args.limit,
                               include_path=args.include_path)
        except ValueError as err:
            raise UsageError(_cli_message(err)) from None
        for task, metrics in scores.items():
            shown = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items() if not name.endswith("_stderr"))
            print(f"{task}: {shown}")
        results["zero_shot"] = scores
    if record_into is not None and (results.get("perplexity") or results.get("zero_shot")):
        from .results import record_results

        written = record_results(record_into, results, model=args.record_as)
        print(f"recorded as the {args.record_as} model's results in {', '.join(written)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.path):
        raise UsageError(f"{args.path!r} is not a folder.")
    plots_dir = (args.plots or args.path) if args.plots is not None else None
    if plots_dir is not None and not os.path.isdir(plots_dir):
        raise UsageError(f"--plots {plots_dir!r} is not a folder.")
    from safetensors import SafetensorError

    from .sparsity import sparsity_report

    try:
        report = sparsity_report(args.path)
    except FileNotFoundError as err:
        raise UsageError(f"{args.path!r} holds no safetensors weights; give a checkpoint folder.") from err
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"cannot read the weights in {args.path!r} ({_first_line(err)}); the checkpoint is "
                         "truncated or corrupted.") from err
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.path}: {report['pruned_modules']} pruned modules, overall sparsity {report['sparsity']:.4f}")
        for pattern, ok in report["patterns"].items():
            print(f"  {pattern}: {'every pruned module follows it' if ok else 'not followed'}")
    if plots_dir is not None:
        from .plots import PlotUnavailable, render_plots
        from .report import REPORT_NAME

        try:
            written = render_plots(args.path, plots_dir)
        except PlotUnavailable as err:
            raise UsageError(str(err)) from err
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise UsageError(f"{os.path.join(args.path, REPORT_NAME)} is not valid JSON ({_first_line(err)}); the "
                             "file is truncated or corrupted.") from err
        for name in written.values():
            print(f"wrote {os.path.join(plots_dir, name)}", file=sys.stderr if args.json else sys.stdout)
    return 0


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
        return {"prune": _prune, "eval": _eval, "report": _report}[args.command](args)
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place that turns every failure into one line
        from .hub import HubPushError

        if args.verbose and not isinstance(err, UsageError):  # a usage error's line says all there is
            traceback.print_exc()
        # Messages of our own are whole sentences (newlines folded); others are cut to their first line.
        message = " ".join(str(err).split()) if isinstance(err, (UsageError, HubPushError)) else _first_line(err)
        if isinstance(err, ValueError) and args.command == "prune":
            message = _cli_message(message)
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
