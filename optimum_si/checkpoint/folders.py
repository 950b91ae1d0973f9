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

A `save_dir` that cannot be renamed (a mount point such as a container volume: rename fails with EBUSY, or the new
folder is on another filesystem: EXDEV) is swapped by its contents instead (`_swap_contents`): the new checkpoint is
built (or moved, or copied) into `save_dir/.optimum-si-incoming` (a mount point builds it in `save_dir/.optimum-si-
staging` or `-partial` from the start), a journal (`.optimum-si-swap.json`) names the old checkpoint's files and the
new ones, the old ones are moved into `save_dir/.optimum-si-old` (the manifest first, so the folder stops looking
complete), the new ones moved in (the manifest last), and only then is `.optimum-si-old` deleted. The user's files
never move. After a kill, `recover()` rolls a journaled swap forward.

`recover()` never deletes an old checkpoint unless the folder that replaces it is complete (its manifest lists files
that are all there); anything in it that optimum-si did not write is moved back, never deleted.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any

from .files import MANIFEST_NAME, PLOT_FILES, PROGRESS_NAME

__all__ = ["MANIFEST_NAME", "Existing", "resolve", "sibling", "work_folder", "in_place", "inside", "check_target",
           "check_replace", "recover", "describe", "write_manifest", "read_manifest", "check_clashes", "publish",
           "sync_file", "sync_dir", "write_json_durably", "WORK_NAMES"]

logger = logging.getLogger(__name__)

# What a checkpoint written by optimum-si before manifests existed is made of (see `describe`).
_LEGACY_NAMES = {"config.json", "generation_config.json", "si_config.json", "si_report.json", "README.md",
                 "model.safetensors", "model.safetensors.index.json", PROGRESS_NAME,
                 "sparsity_per_layer.png", "importance_histograms.png", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                 "added_tokens.json"}
_LEGACY_PATTERN = re.compile(r"(model-\d{5}-of-\d{5}|part-\d{5})\.safetensors(\.tmp)?")
# What a run keeps inside a `save_dir` it cannot rename (see the module docstring): never part of a checkpoint, never
# the user's.
_INCOMING, _OLD, _JOURNAL = ".optimum-si-incoming", ".optimum-si-old", ".optimum-si-swap.json"
WORK_NAMES = (".optimum-si-staging", ".optimum-si-partial", _INCOMING, _OLD, _JOURNAL, ".optimum-si.lock",
              ".optimum-si.owner")
# Errors of renaming a folder that say "not this folder" rather than "not allowed": a mount point, a folder in use,
# another filesystem.
_CANNOT_RENAME = (errno.EBUSY, errno.EXDEV)


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


def in_place(target: str) -> bool:
    """Whether `target` is swapped by its contents: a mount point (a container volume), which cannot be renamed."""
    return os.path.isdir(target) and os.path.ismount(target)


def work_folder(target: str, kind: str) -> str:
    """Where a run builds the checkpoint for `target` ("staging" for save(), "partial" for streaming): a hidden
    sibling, or inside `target` when it is a mount point (the files are then on its filesystem, and the swap is a
    rename of each). An unfinished one already there is used wherever it is."""
    inner = os.path.join(target, f".optimum-si-{kind}")
    outer = sibling(target, kind)
    if os.path.isdir(inner) and not os.path.isdir(outer):
        return inner
    return inner if in_place(target) and not os.path.isdir(outer) else outer


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
    if _within(os.getcwd(), target) and not in_place(target):
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
                                                     for k in ("partial", "staging", "old", "incoming"))):
            if folder is not None and _within(where, folder):
                raise ValueError(f"activation_dir {where} lies inside {what} ({folder}); its files would be written "
                                 "there. Choose an activation_dir outside it.")


def recover(target: str) -> None:
    """Undo or finish what a killed writer left (call under the folder lock): finish a journaled swap of contents;
    put back an old checkpoint caught between the two renames of a folder swap; drop the old checkpoint left after a
    swap once the new one is complete; drop a `save()` staging folder and an unjournaled copy."""
    if os.path.isfile(os.path.join(target, _JOURNAL)):
        _roll_forward(target)
    elif os.path.isdir(target):
        shutil.rmtree(os.path.join(target, _INCOMING), ignore_errors=True)  # a copy cut short: the swap had not begun
        shutil.rmtree(os.path.join(target, ".optimum-si-staging"), ignore_errors=True)
    old = sibling(target, "old")
    if os.path.isdir(old):
        if not os.path.lexists(target):
            logger.warning("Restoring %s from %s (an earlier save was interrupted while swapping folders).", target, old)
            os.rename(old, target)
        elif _complete(target):
            _move_back(old, target, keep=set(describe(old).own))  # the user's files already hard-linked across
            shutil.rmtree(old)
        else:
            # Made anew after a kill between the two renames (e.g. by the user's os.makedirs): the old checkpoint goes
            # back into it, and what is in it now stays.
            logger.warning("Restoring %s from %s (an earlier save was interrupted while swapping folders; files "
                           "added to %s since are kept).", target, old, target)
            _move_back(old, target, keep=set())
            _remove_if_empty(old, target)
    shutil.rmtree(sibling(target, "staging"), ignore_errors=True)


def _complete(folder: str) -> bool:
    """Whether `folder` holds a finished checkpoint: a readable manifest whose every file is there."""
    try:
        manifest = read_manifest(folder)
    except ValueError:
        return False
    return manifest is not None and all(os.path.lexists(os.path.join(folder, os.path.normpath(name)))
                                        for name in manifest["files"])


def _move_back(source: str, target: str, keep: set[str]) -> None:
    """Move every entry of `source` but `keep` into `target` where `target` has none of that name."""
    for name in sorted(os.listdir(source)):
        if name not in keep and not os.path.lexists(os.path.join(target, name)):
            os.rename(os.path.join(source, name), os.path.join(target, name))
    sync_dir(target)


def _remove_if_empty(old: str, target: str) -> None:
    left = os.listdir(old)
    if left:
        logger.warning("%s still holds %s, whose names are taken in %s; nothing was deleted: move them yourself.",
                       old, ", ".join(sorted(left)[:5]), target)
    else:
        os.rmdir(old)


@dataclass
class Existing:
    """What `save_dir` holds: the files of a previous optimum-si checkpoint (`own`), and everything else."""

    own: set[str] = field(default_factory=set)
    foreign: list[str] = field(default_factory=list)
    complete: bool = False
    fingerprint: dict[str, Any] | None = None  # of the streaming run that wrote it
    # How its manifest was found: "ok", "missing" (a checkpoint of ours without one) or "damaged (<why>)".
    manifest: str = "ok"
    version: str | None = None  # the optimum-si version its si_config.json names, when it has no usable manifest


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
    names = set(os.listdir(target)) - set(WORK_NAMES)
    state = "ok"
    try:
        manifest = read_manifest(target)
    except ValueError as err:  # never a stuck folder: tell its files apart by their names, as without a manifest
        logger.warning("%s Telling optimum-si's files from the others by their names instead.", err)
        manifest = None
        state = f"damaged ({err.__cause__ or err})"
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
    return Existing(own, sorted(names - own), complete, manifest=state if state != "ok" else "missing",
                    version=_recipe_version(target))


def _recipe_version(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, "si_config.json"), encoding="utf-8") as handle:
            version = json.load(handle)["meta"]["optimum_si"]
        return version if isinstance(version, str) else None
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def umask() -> int:
    """The process's file-mode creation mask (read without changing it where /proc tells it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(path: str, mask: int) -> None:
    """Give a file we wrote the mode any new file gets (0666 less the umask), as `open()` does: some writers
    (safetensors) create their files private (0600), which keeps other users and containers from reading a model."""
    os.chmod(path, 0o666 & ~mask)


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
    gets the mode the umask gives new files, and is on the disk before the manifest is (fsync), so a power loss
    cannot leave a manifest naming empty files."""
    mask = umask()
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
                        _honour_umask(os.path.join(root, each), mask)
                        sync_file(os.path.join(root, each))
                sync_dir(root)
        elif not os.path.islink(path):
            _honour_umask(path, mask)
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
    files of the old folder: the folder itself when it can be renamed, else its contents (`_swap_contents`)."""
    check_clashes(target, existing, (read_manifest(staging) or {"files": []})["files"])
    if _within(staging, target):  # built inside a save_dir that cannot be renamed
        _swap_contents(staging, target, existing)
        return
    for name in existing.foreign:
        _link(os.path.join(target, name), os.path.join(staging, name))
    sync_dir(staging)
    old = sibling(target, "old")
    if os.path.lexists(target):
        try:
            os.rename(target, old)
        except OSError as err:
            if err.errno not in _CANNOT_RENAME:
                raise
            logger.info("%s cannot be renamed (%s); swapping its contents instead.", target, err.strerror)
            for name in existing.foreign:  # the user's files stay where they are
                _remove(os.path.join(staging, name))
            _swap_contents(staging, target, existing)
            return
    os.rename(staging, target)
    sync_dir(os.path.dirname(target))  # the new checkpoint's name is on the disk before the old one is deleted
    shutil.rmtree(old, ignore_errors=True)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _swap_contents(staging: str, target: str, existing: Existing) -> None:
    """Replace the checkpoint files in `target` by those of `staging` without renaming `target` (see the module
    docstring): `staging` is brought into `target` (renamed, or copied across filesystems), the journal is written,
    and `_roll_forward` moves the files."""
    incoming = staging if _within(staging, target) else os.path.join(target, _INCOMING)
    if incoming != staging:
        shutil.rmtree(incoming, ignore_errors=True)  # an earlier copy cut short
        try:
            os.rename(staging, incoming)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            shutil.copytree(staging, incoming, symlinks=True)
            _sync_tree(incoming)
    new = sorted(os.listdir(incoming), key=lambda n: (n == MANIFEST_NAME, n))  # the manifest moves in last
    journal = {"incoming": os.path.basename(incoming), "old": sorted(existing.own), "new": new, "phase": "out"}
    _write_journal(target, journal)
    if os.path.isdir(staging) and incoming != staging:
        shutil.rmtree(staging)  # the copy is complete and journaled
    _roll_forward(target)


def write_json_durably(folder: str, name: str, data: Any) -> None:
    """Write `folder/name` as JSON through a temporary file and a rename, both on the disk before this returns: a
    reader sees the old file or the new one, never half of one, even after a power loss."""
    path = os.path.join(folder, name)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".tmp", path)
    sync_dir(folder)


def _write_journal(target: str, journal: dict[str, Any]) -> None:
    write_json_durably(target, _JOURNAL, journal)


def _roll_forward(target: str) -> None:
    """Finish a journaled swap of contents: old checkpoint files out (its manifest first), new ones in (the manifest
    last), then the old ones deleted, once the new checkpoint is complete. Every step can be repeated."""
    path = os.path.join(target, _JOURNAL)
    try:
        with open(path, encoding="utf-8") as handle:
            journal = json.load(handle)
        incoming = inside(target, journal["incoming"], _JOURNAL)
        old_names = [os.path.normpath(inside(target, n, _JOURNAL)) for n in journal["old"]]
        new_names = [os.path.normpath(inside(target, n, _JOURNAL)) for n in journal["new"]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise ValueError(f"{path} (the journal of an interrupted save) is corrupted ({err}); move it and "
                         f"{os.path.join(target, _OLD)} aside and check the folder by hand.") from err
    old = os.path.join(target, _OLD)
    if journal.get("phase") == "out":
        os.makedirs(old, exist_ok=True)
        for name in sorted(old_names, key=lambda p: os.path.basename(p) != MANIFEST_NAME):
            if os.path.lexists(name) and not os.path.lexists(os.path.join(old, os.path.basename(name))):
                os.rename(name, os.path.join(old, os.path.basename(name)))
        sync_dir(target)
        journal["phase"] = "in"
        _write_journal(target, journal)
    for name in new_names:
        moving = os.path.join(incoming, os.path.basename(name))
        if os.path.lexists(moving):
            if os.path.isdir(name) and not os.path.islink(name):
                shutil.rmtree(name)
            os.replace(moving, name)
    sync_dir(target)
    if not _complete(target):
        raise ValueError(f"The swap into {target} could not be finished (files of the new checkpoint are missing); "
                         f"the old checkpoint's files wait in {old}. Check the folder by hand.")
    if os.path.isdir(old):
        _move_back(old, target, keep={os.path.basename(n) for n in old_names})  # never the user's: kept
        shutil.rmtree(old)
    shutil.rmtree(incoming, ignore_errors=True)
    os.remove(path)
    sync_dir(target)


def _sync_tree(folder: str) -> None:
    for root, _dirs, names in os.walk(folder):
        for name in names:
            if not os.path.islink(os.path.join(root, name)):
                sync_file(os.path.join(root, name))
        sync_dir(root)
