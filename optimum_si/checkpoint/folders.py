"""Output folders that only look complete when they are, lose nothing that optimum-si did not write, and are
replaced as a whole.

A checkpoint is built in a staging sibling of `save_dir` (`.<name>.optimum-si-staging` for `save()`,
`.<name>.optimum-si-partial` for a streaming run, which keeps it across restarts) and swapped in at the end: the old
folder is renamed to `.<name>.optimum-si-old`, the staging folder to `<name>`, then the old one is deleted. A kill
between the two renames leaves the old checkpoint under that known name, and `recover()` (run by every writer, under
the folder lock) puts it back; at no instant does `save_dir` hold a mix of two checkpoints.

Each checkpoint lists its own files in `.optimum-si-manifest.json`. Everything else found in `save_dir` (the user's
files, e.g. an adapter) is hard-linked into the new folder before the swap, so it survives untouched; a user file
with the name of a checkpoint file is never replaced: the save is refused instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any

from .files import MANIFEST_NAME, PLOT_FILES, PROGRESS_NAME

__all__ = ["MANIFEST_NAME", "Existing", "resolve", "sibling", "inside", "check_target", "check_replace", "recover",
           "describe", "write_manifest", "read_manifest", "check_clashes", "publish", "sync_file", "sync_dir"]

logger = logging.getLogger(__name__)

# What a checkpoint written by optimum-si before manifests existed is made of (see `describe`).
_LEGACY_NAMES = {"config.json", "generation_config.json", "si_config.json", "si_report.json", "README.md",
                 "model.safetensors", "model.safetensors.index.json", PROGRESS_NAME,
                 "sparsity_per_layer.png", "importance_histograms.png", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                 "added_tokens.json"}
_LEGACY_PATTERN = re.compile(r"(model-\d{5}-of-\d{5}|part-\d{5})\.safetensors(\.tmp)?")


def sync_file(path: str) -> None:
    """Flush `path`'s data to the disk, so that a power loss after a later rename cannot leave it renamed but empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(folder: str) -> None:
    """Make the renames and new names in `folder` durable (a no-op where the filesystem cannot sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve(save_dir: str | os.PathLike) -> str:
    """The real path of an output folder (a symlinked `save_dir` is replaced where it really lives)."""
    return os.path.realpath(os.fspath(save_dir))


def sibling(target: str, kind: str) -> str:
    parent, name = os.path.split(target)
    return os.path.join(parent, f".{name}.optimum-si-{kind}")


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def inside(folder: str, name: Any, what: str) -> str:
    """`folder/name`, refusing a `name` (read from an index or progress file) that could point outside `folder`."""
    norm = os.path.normpath(name) if isinstance(name, str) and name else ""
    if not norm or os.path.isabs(norm) or norm == "." or norm.split(os.sep)[0] == os.pardir or "\\" in norm:
        raise ValueError(f"{what} names the file {name!r}, which is not inside {folder}; the file is corrupted or was "
                         "tampered with, so nothing was read from it.")
    return os.path.join(folder, norm)


def check_target(target: str, source: str | None = None, scratch: str | None = None) -> None:
    """Refuse an output folder that the final swap could not replace safely: a file, the folder the process runs
    in (or one above it), or a folder that is, contains or lies inside the source checkpoint; and a `scratch` folder
    (activations on disk) inside the source, the output folder or the run's hidden siblings of it."""
    if os.path.exists(target) and not os.path.isdir(target):
        raise NotADirectoryError(f"save_dir {target} is a file; choose a folder.")
    if _within(os.getcwd(), target):
        raise ValueError(f"save_dir {target} contains the current working directory, and a save replaces the folder as "
                         "a whole; choose another save_dir.")
    if source is not None:
        src = os.path.realpath(source)
        if _within(src, target) or _within(target, src):
            raise ValueError(f"save_dir {target} is, contains or lies inside the source checkpoint {src}, which must "
                             "never be modified; choose a save_dir outside it.")
    if scratch is not None:
        where = os.path.realpath(scratch)
        for folder, what in ((os.path.realpath(source) if source else None, "the source checkpoint"),
                             (target, "save_dir"), *((sibling(target, k), "save_dir's work folder")
                                                     for k in ("partial", "staging", "old"))):
            if folder is not None and _within(where, folder):
                raise ValueError(f"activation_dir {where} lies inside {what} ({folder}); its files would be written "
                                 "there. Choose an activation_dir outside it.")


def recover(target: str) -> None:
    """Undo what a killed writer left (call under the folder lock): put back an old checkpoint caught between the two
    renames of a swap, delete one left after it, and drop a `save()` staging folder."""
    old = sibling(target, "old")
    if os.path.isdir(old):
        if os.path.lexists(target):
            shutil.rmtree(old)
        else:
            logger.warning("Restoring %s from %s (an earlier save was interrupted while swapping folders).", target, old)
            os.rename(old, target)
    shutil.rmtree(sibling(target, "staging"), ignore_errors=True)


@dataclass
class Existing:
    """What `save_dir` holds: the files of a previous optimum-si checkpoint (`own`), and everything else."""

    own: set[str] = field(default_factory=set)
    foreign: list[str] = field(default_factory=list)
    complete: bool = False
    fingerprint: dict[str, Any] | None = None  # of the streaming run that wrote it


def read_manifest(folder: str) -> dict[str, Any] | None:
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        if not isinstance(manifest.get("files"), list) or not all(isinstance(n, str) for n in manifest["files"]):
            raise ValueError("no list of files")
    except (ValueError, AttributeError, RecursionError) as err:  # JSON and UTF-8 errors are ValueErrors
        raise ValueError(f"{path} is corrupted ({err}); pass overwrite=True to start over, or choose another "
                         "save_dir.") from err
    return manifest


def describe(target: str) -> Existing:
    if not os.path.isdir(target):
        return Existing()
    names = set(os.listdir(target))
    try:
        manifest = read_manifest(target)
    except ValueError as err:  # never a stuck folder: tell its files apart by their names, as without a manifest
        logger.warning("%s Telling optimum-si's files from the others by their names instead.", err)
        manifest = None
    if manifest is not None:
        # A progress file next to a manifest is a stale one of the run that wrote it (never the user's), and charts
        # are optimum-si's even when drawn later (`optimum-si report DIR --plots`).
        own = ({os.path.normpath(n) for n in manifest["files"]} & names) | {MANIFEST_NAME} \
            | ({PROGRESS_NAME, *PLOT_FILES} & names)
        return Existing(own, sorted(names - own), True, manifest.get("fingerprint"))
    if PROGRESS_NAME not in names and not {"si_config.json", "si_report.json"} <= names:
        # Not written by optimum-si (a recipe alone, e.g. from SIConfig.save_pretrained, does not make a folder a
        # checkpoint of ours): every file is the user's.
        own = {MANIFEST_NAME} & names  # a damaged manifest is still ours: never kept as the user's file
        return Existing(own, sorted(names - own))
    # Written by an optimum-si without manifests (or with a damaged one): its files are the ones a checkpoint is
    # made of.
    own = {n for n in names if n in _LEGACY_NAMES or n in PLOT_FILES or _LEGACY_PATTERN.fullmatch(n)}
    own |= {MANIFEST_NAME} & names
    complete = "si_config.json" in names and PROGRESS_NAME not in names
    return Existing(own, sorted(names - own), complete)


def check_replace(save_dir: str | os.PathLike, existing: Existing, overwrite: bool) -> None:
    """The rule of every writer that is not resuming its own run: a folder that holds an optimum-si checkpoint (or an
    unfinished run) is replaced only with `overwrite`."""
    if existing.own and not overwrite:
        what = "a pruned checkpoint" if existing.complete else "an unfinished pruning run"
        raise FileExistsError(f"{os.fspath(save_dir)} already holds {what}; pass overwrite=True to replace it, or "
                              "choose another save_dir.")


def write_manifest(folder: str, fingerprint: dict[str, Any] | None = None) -> None:
    """List the checkpoint's files (every file of `folder` but the progress file and leftovers of interrupted
    writes, which are removed), written last: a folder with a manifest is a finished checkpoint. Every file it lists
    is on the disk before the manifest is (fsync), so a power loss cannot leave a manifest naming empty files."""
    files = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".tmp"):
            os.remove(os.path.join(folder, name))
        elif name not in (MANIFEST_NAME, PROGRESS_NAME):
            files.append(name)
    for name in files:
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            for root, _dirs, names in os.walk(path):
                for each in names:
                    if not os.path.islink(os.path.join(root, each)):
                        sync_file(os.path.join(root, each))
                sync_dir(root)
        elif not os.path.islink(path):
            sync_file(path)
    path = os.path.join(folder, MANIFEST_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump({"files": files, "fingerprint": fingerprint}, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".tmp", path)
    sync_dir(folder)


def check_clashes(target: str, existing: Existing, names) -> None:
    """Refuse to write, under a name that one of the user's files in `target` already has, a checkpoint file."""
    clashes = sorted(set(names) & set(existing.foreign))
    if clashes:
        raise FileExistsError(
            f"{target} holds {clashes[0]}, which optimum-si did not write; move it away or choose another save_dir "
            "(a save only replaces files that an earlier save wrote)."
        )


def _link(src: str, dst: str) -> None:
    """A hard link (no copy, the file itself is never touched); a copy where the filesystem has no hard links."""
    if os.path.lexists(dst):
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        else:
            os.remove(dst)
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    elif os.path.isdir(src):
        shutil.copytree(src, dst, symlinks=True, copy_function=_link)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def publish(staging: str, target: str, existing: Existing) -> None:
    """Swap the finished checkpoint in `staging` (its manifest already written) in as `target`, keeping the user's
    files of the old folder."""
    check_clashes(target, existing, (read_manifest(staging) or {"files": []})["files"])
    for name in existing.foreign:
        _link(os.path.join(target, name), os.path.join(staging, name))
    sync_dir(staging)
    old = sibling(target, "old")
    if os.path.lexists(target):
        os.rename(target, old)
    os.rename(staging, target)
    sync_dir(os.path.dirname(target))  # the new checkpoint's name is on the disk before the old one is deleted
    shutil.rmtree(old, ignore_errors=True)
