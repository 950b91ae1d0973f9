"""The commands: `prune` (a model in memory or streamed, saved and optionally pushed), `eval` (perplexity and
zero-shot scores, recorded into a checkpoint) and `report` (measured sparsity, charts)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import typing

from .checks import check_model_source, check_prune_args, check_settings, check_text_file
from .errors import UsageError
from .flags import cli_message

__all__ = ["prune_command", "eval_command", "report_command", "first_line"]


@contextlib.contextmanager
def _hub(path: str) -> typing.Iterator[None]:
    """The Hub calls of loading --model: a local folder needs none; a repo id is fetched with a timeout, offline
    mode honoured at once, and a failure to reach the Hub raised as `NetworkError` (exit status 1)."""
    if os.path.isdir(path):
        yield
        return
    from ..network import hub_access

    with hub_access(f"download --model {path!r}"):
        yield


def _load_model(path: str, dtype: str, trust_remote_code: bool):
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..network import NetworkError

    try:
        with _hub(path):
            # Pickled weights only with --trust-remote-code: unpickling a file can run code from it.
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype if dtype == "auto" else getattr(torch, dtype), trust_remote_code=trust_remote_code,
                use_safetensors=None if trust_remote_code else True)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except NetworkError:
        raise
    except (OSError, ValueError, ImportError, SafetensorError) as err:
        raise UsageError(f"cannot load --model {path!r}: {first_line(err)}{_remote_code_hint(err)}"
                         f"{_pickle_hint(err, trust_remote_code)}") from err
    except RecursionError as err:
        raise UsageError(_nested_json(path)) from err
    return model, tokenizer


def _pickle_hint(err: BaseException, trust_remote_code: bool) -> str:
    if trust_remote_code or "safetensors" not in str(err).lower():
        return ""
    return (" If it holds only pickle weights (pytorch_model.bin), convert them to safetensors where you trust them, "
            "or pass --trust-remote-code to load them (unpickling can run code).")


def _nested_json(path: str) -> str:
    return (f"cannot load --model {path!r}: a JSON file of it (config.json, the tokenizer's) nests too deeply; the "
            "file is corrupted.")


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _remote_code_hint(err: BaseException) -> str:
    return " Pass --trust-remote-code to run the model's own code." if "custom code" in str(err) else ""


def _check_stream_config(path: str) -> None:
    """Streaming builds the model from its config: refuse (never prompt for) a config that needs the model's code."""
    from transformers import AutoConfig

    from ..network import NetworkError

    try:
        with _hub(path):
            AutoConfig.from_pretrained(path, trust_remote_code=False)
    except NetworkError:
        raise
    except (OSError, ValueError) as err:
        if "custom code" in str(err):
            raise UsageError(f"--model {path!r} needs its own Python code, which --stream cannot run; prune it "
                             "without --stream and with --trust-remote-code.") from err
        raise UsageError(f"cannot load --model {path!r}: {first_line(err)}") from err
    except RecursionError as err:
        raise UsageError(_nested_json(path)) from err


def _fetch_dataset(reference: str | None, purpose: str) -> typing.Any:
    """A named or Hub dataset (or a dataset folder), loaded before the model is: a wrong name or no network is
    answered at once. Anything else (a text file) is passed on as it is."""
    if not reference:
        return reference
    from ..data.named_sets import is_text_set_reference, load_text_set

    if not is_text_set_reference(reference):
        return reference
    return load_text_set(reference, purpose)


def prune_command(args: argparse.Namespace) -> int:
    config, options = check_prune_args(args)
    from ..network import NetworkError
    from ..pruner import SIPruner

    pruner = SIPruner(config, options=options)
    dataset = _fetch_dataset(args.dataset, "calibration")
    if args.stream:
        from transformers import AutoTokenizer

        _check_stream_config(args.model)
        tokenizer = None
        if args.dataset:
            try:
                with _hub(args.model):
                    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=False)
            except NetworkError:
                raise
            except (OSError, ValueError) as err:
                raise UsageError(f"cannot load the tokenizer of --model {args.model!r}: {first_line(err)}") from err
        pruner.prune(args.model, tokenizer=tokenizer, dataset=dataset, save_dir=args.output,
                     max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    else:
        model, tokenizer = _load_model(args.model, args.dtype, args.trust_remote_code)
        pruner.prune(model, tokenizer=tokenizer, dataset=dataset)
        pruner.save(model, args.output, tokenizer=tokenizer, max_shard_size=args.max_shard_size,
                    base_model=args.base_model, overwrite=args.overwrite)
    from ..distributed import is_main_process

    show = is_main_process()  # under torchrun every rank runs this; one prints
    if show:
        print(pruner.report.summary() if pruner.report is not None else f"{args.output} was already complete for this "
              "run")
    where = f"saved to {args.output}"
    if args.push_to_hub:
        where += f", pushed to {pruner.push_to_hub(args.output, args.push_to_hub, private=args.private or None)}"
    if show:
        print(f"done: {what_ran(config, pruner.report)}; {where}")
    return 0


def what_ran(config: typing.Any, report: typing.Any) -> str:
    """`wanda 50% unstructured, SI on, OWL off`: the method, the pattern, and whether SI and OWL ran."""
    pattern = config.mask_structure if config.n_m else f"{config.sparsity * 100:g}% unstructured"
    # SI may have been skipped for an architecture it does not support (induction_unsupported="skip").
    induction = config.induction is not None and (report is None or report.induction_summary() is not None)
    owl = config.profile_args is not None
    return f"{config.method} {pattern}, SI {'on' if induction else 'off'}, OWL {'on' if owl else 'off'}"


def eval_command(args: argparse.Namespace) -> int:
    check_settings()
    check_model_source(args.model, trust_remote_code=args.trust_remote_code)
    if not (args.text or args.dataset or args.tasks):
        raise UsageError("Nothing to evaluate: pass --text FILE, --dataset SET (e.g. wikitext2) or --tasks (e.g. "
                         "wanda7).")
    if args.text:
        check_text_file(args.text, "--text")
    if args.dataset:
        from ..data.named_sets import is_text_set_reference

        if os.path.isfile(args.dataset):
            raise UsageError(f"--dataset {args.dataset!r} is a file (a path that exists is read as one, even named "
                             "like a set); for a text file use --text, or run from another folder for the named set.")
        if not is_text_set_reference(args.dataset):
            raise UsageError(f"--dataset {args.dataset!r} is neither a named set (wikitext2, c4) nor a Hub dataset id "
                             "(owner/name); for a text file use --text.")
    if args.tasks:
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:
            raise UsageError('--tasks needs lm-evaluation-harness (the eval extra): pip install "lm-eval>=0.4.5".')
    from ..export.results import is_checkpoint

    record_into = None if args.no_record else args.record_into or (args.model if is_checkpoint(args.model) else None)
    if record_into is not None and not is_checkpoint(record_into):
        raise UsageError(f"--record-into {record_into!r} is not an optimum-si checkpoint folder (it needs "
                         "si_config.json and si_report.json).")
    if record_into is not None and (args.dataset or args.tasks):  # only those results are recorded
        _check_record_target(record_into)
    from ..data.text import read_text_file
    from ..evaluation import perplexity

    named = _fetch_dataset(args.dataset, "evaluation")
    model, tokenizer = _load_model(args.model, args.dtype, args.trust_remote_code)
    sources = []
    if args.text:
        sources.append((args.text, read_text_file(args.text, "--text ")))
    if args.dataset:
        sources.append((args.dataset, named))
    results: dict[str, typing.Any] = {"seqlen": args.seqlen} if args.dataset else {}
    for label, text in sources:
        try:
            value = perplexity(model, tokenizer, text, seqlen=args.seqlen, max_windows=args.max_windows,
                               show_progress=True)
        except ValueError as err:
            raise UsageError(cli_message(err).replace("seqlen=", "--seqlen ")) from None
        print(f"perplexity {value:.4f} ({args.model}, {label}, seqlen {args.seqlen})")
        if label == args.dataset:
            results.setdefault("perplexity", {})[label] = value
    if args.tasks:
        from ..evaluation import zero_shot

        try:
            scores = zero_shot(model, tokenizer, tasks=args.tasks, num_fewshot=args.num_fewshot, limit=args.limit,
                               include_path=args.include_path)
        except ValueError as err:
            raise UsageError(cli_message(err)) from None
        for task, metrics in scores.items():
            shown = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items() if not name.endswith("_stderr"))
            print(f"{task}: {shown}")
        results["zero_shot"] = scores
    if record_into is not None and (results.get("perplexity") or results.get("zero_shot")):
        from ..export.results import record_results

        written = record_results(record_into, results, model=args.record_as)
        print(f"recorded as the {args.record_as} model's results in {', '.join(written)}")
    return 0


def _check_record_target(folder: str) -> None:
    """The checkpoint the results go into can take them (its report and recipe read back), checked before the model
    is loaded and evaluated."""
    from ..recipe.config import SIConfig
    from ..reporting.report import PruneReport

    for read in (PruneReport.load, SIConfig.from_pretrained):
        try:
            read(folder)
        except (OSError, ValueError) as err:
            raise UsageError(f"--record-into {folder!r} cannot take the results: {first_line(err)} Restore the file "
                             "(or prune again), or pass --no-record to only print the results.") from None


def report_command(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.path):
        raise UsageError(f"{args.path!r} is not a folder.")
    plots_dir = (args.plots or args.path) if args.plots is not None else None
    if plots_dir is not None and not os.path.isdir(plots_dir):
        raise UsageError(f"--plots {plots_dir!r} is not a folder.")
    from ..sparsity import sparsity_report  # reads the folder with numpy: no torch, so the answer comes at once

    try:
        report = sparsity_report(args.path)
    except FileNotFoundError as err:
        raise UsageError(f"{args.path!r} holds no safetensors weights; give a checkpoint folder.") from err
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read the weights in {args.path!r} ({first_line(err)}); the checkpoint is "
                         "truncated or corrupted.") from err
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.path}: {report['pruned_modules']} pruned modules, overall sparsity {report['sparsity']:.4f}")
        for pattern, ok in report["patterns"].items():
            print(f"  {pattern}: {'every pruned module follows it' if ok else 'not followed'}")
    if plots_dir is not None:
        from ..checkpoint.files import REPORT_NAME
        from ..reporting.plots import PlotUnavailable, render_plots

        try:
            written = render_plots(args.path, plots_dir)
        except PlotUnavailable as err:
            raise UsageError(str(err)) from err
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise UsageError(f"{os.path.join(args.path, REPORT_NAME)} is not valid JSON ({first_line(err)}); the "
                             "file is truncated or corrupted.") from err
        for name in written.values():
            print(f"wrote {os.path.join(plots_dir, name)}", file=sys.stderr if args.json else sys.stdout)
    return 0
