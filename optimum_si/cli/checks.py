"""Every check of the command line's arguments that can run before torch, transformers or a model is loaded, so
that mistakes are answered at once (one line, exit status 2)."""

from __future__ import annotations

import argparse
import codecs
import logging
import os
import re

from ..recipe.config import CONFIG_NAME, SIConfig, read_recipe
from ..recipe.run_options import RunOptions
from .errors import UsageError
from .flags import cli_message, config_and_options

__all__ = ["check_prune_args", "check_model_source", "check_text_file", "check_settings", "hub_offline"]

logger = logging.getLogger("optimum_si.cli")

_SHARD_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?$", re.IGNORECASE)
# Hub repo ids are 'name' or 'owner/name'; anything else that does not exist locally was meant as a folder.
_PATH_HINTS = ("./", "../", "/", "~", ".\\", "..\\")


def _config_from_args(args: argparse.Namespace) -> tuple[SIConfig, RunOptions]:
    """The recipe (a --recipe file, folder or Hub repo, with the flags over it) and the run options."""
    base = None
    if args.recipe:
        base = _read_recipe_arg(args.recipe)
    try:
        return config_and_options(args, base)
    except ValueError as err:
        where = f"--recipe {args.recipe!r}: " if args.recipe else ""
        raise UsageError(where + cli_message(err)) from None


def _read_recipe_arg(recipe: str) -> SIConfig:
    path = recipe
    if os.path.isdir(path):
        path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(path):
            raise UsageError(f"--recipe {recipe!r} is a folder without {CONFIG_NAME}; give the recipe file itself.")
    elif not os.path.isfile(path):
        if _looks_like_path(path) or path.endswith(".json") or not _is_repo_id(path):
            raise UsageError(f"--recipe {recipe!r}: no such file or folder.")
        from ..network import NetworkError

        try:  # a Hub repo holding an si_config.json
            return SIConfig.from_pretrained(path)
        except NetworkError:
            raise  # the network's failure, not the user's (exit status 1)
        except OSError as err:
            raise UsageError(f"--recipe {recipe!r}: {err}") from None
        except ValueError as err:
            raise UsageError(f"--recipe {recipe!r}: {cli_message(err)}") from None
    try:
        data = read_recipe(path)
    except OSError as err:
        raise UsageError(f"--recipe {recipe!r} cannot be read ({err.strerror or err}).") from None
    except ValueError as err:
        raise UsageError(f"--recipe: {err}") from None
    try:
        return SIConfig.from_dict(data, strict=False)
    except ValueError as err:
        raise UsageError(f"--recipe {recipe!r}: {cli_message(err)}") from None


def _looks_like_path(text: str) -> bool:
    return text.startswith(_PATH_HINTS) or os.sep in text.strip("/").replace("/", "", 1) or text.endswith("/")


def _is_repo_id(text: str) -> bool:
    from ..hub import check_repo_id

    try:
        check_repo_id(text)
    except ValueError:
        return False
    return True


def check_model_source(model: str, flag: str = "--model", stream: bool = False, trust_remote_code: bool = False) -> None:
    """A model argument is an existing folder with a config.json, whose links stay inside it (or inside the Hub
    cache's blobs), and with safetensors weights (pickles only with --trust-remote-code: unpickling can run code);
    or a Hub repo id that may be fetched."""
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise UsageError(f"{flag} {model!r} has no config.json; it is not a transformers model folder.")
        from ..checkpoint.links import check_folder

        try:
            check_folder(model)
        except ValueError as err:
            raise UsageError(f"{flag} {model!r}: {err}") from None
        names = os.listdir(model)
        if any(name.endswith(".safetensors") or name.endswith(".safetensors.index.json") for name in names):
            return
        pickles = sorted(name for name in names if name.endswith((".bin", ".pt", ".pth", ".ckpt")))
        if stream:
            raise UsageError(
                f"{flag} {model!r} has no safetensors weights, and --stream reads only safetensors; convert the "
                "checkpoint (save_pretrained writes safetensors) or drop --stream."
            )
        if pickles and not trust_remote_code:
            raise UsageError(
                f"{flag} {model!r} holds only pickle weights ({pickles[0]}), and unpickling a file can run code from "
                "it; convert them to safetensors once where you trust them (from_pretrained, then save_pretrained), "
                "or pass --trust-remote-code to load them."
            )
        return
    if os.path.exists(model):
        raise UsageError(f"{flag} {model!r} is a file; give the model folder (or a Hub repo id).")
    if _looks_like_path(model) or not _is_repo_id(model):
        raise UsageError(f"{flag} {model!r}: no such folder, and not a Hub repo id (owner/name).")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise UsageError(
                f"{flag} {model!r} is not a local folder and not in the Hub cache, and HF_HUB_OFFLINE forbids "
                "downloading it; unset HF_HUB_OFFLINE or give a local folder."
            )


def check_settings() -> None:
    """The environment variables a run reads (optimum_si.settings), each a clear error naming it."""
    from ..settings import data_parallel, dist_timeout, network_timeout

    try:
        dist_timeout()
        network_timeout()
        data_parallel()
    except ValueError as err:
        raise UsageError(str(err)) from None


def hub_offline() -> bool:
    from ..network import offline

    return offline()


def check_text_file(path: str, flag: str) -> None:
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


def check_prune_args(args: argparse.Namespace) -> tuple[SIConfig, RunOptions]:
    """The recipe and run options of `prune`'s flags, every argument checked (no torch, no model loaded)."""
    check_settings()
    config, options = _config_from_args(args)
    check_model_source(args.model, stream=args.stream, trust_remote_code=args.trust_remote_code)
    if config.needs_calibration:
        if not args.dataset:
            needs = f"--method {config.method}" if config.pruning_method.needs_data else "--induction" \
                if config.induction is not None else "--reconstruction" if config.reconstruction is not None \
                else "--sparsity-profile owl"
            raise UsageError(f"{needs} needs calibration text: pass --dataset FILE (UTF-8 text).")
    if args.dataset:
        from ..data.named_sets import is_text_set_reference

        if not is_text_set_reference(args.dataset):
            check_text_file(args.dataset, "--dataset")
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
    if not args.stream and os.path.isdir(args.output):
        from ..checkpoint import folders

        try:  # the same rule as the library's, answered before the model loads; streaming resumes its own run
            folders.check_replace(args.output, folders.describe(folders.resolve(args.output)), args.overwrite)
        except FileExistsError as err:
            raise UsageError(cli_message(err)) from None
    if args.private and not args.push_to_hub:
        raise UsageError("--private applies to the Hub repo: use it with --push-to-hub REPO_ID.")
    if args.push_to_hub:
        from ..hub import check_repo_id

        try:
            check_repo_id(args.push_to_hub, "--push-to-hub")
        except ValueError as err:
            raise UsageError(str(err)) from None
        if hub_offline():
            raise UsageError("--push-to-hub needs the network, but HF_HUB_OFFLINE is set; unset it, or push later "
                             "with SIPruner.push_to_hub.")
    if options.activation_dir and options.activation_storage != "disk":
        logger.warning("--activation-dir is used only with --activation-storage disk; ignored.")
    _check_runtime(options)
    return config, options


def _check_runtime(options: RunOptions) -> None:
    from ..modeling.devices import check_runtime

    try:
        check_runtime(options)
    except ValueError as err:
        raise UsageError(cli_message(err)) from None
