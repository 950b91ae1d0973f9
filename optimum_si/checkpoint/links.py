"""Paths read from a checkpoint folder are resolved before they are trusted: a file that is a symbolic link (or lies
under a linked folder) is read only when it resolves inside the folder itself or, for a Hugging Face cache snapshot
(`models--org--name/snapshots/<rev>/`, whose files are all links to `../../blobs/<sha>`), inside that repository's
`blobs/` folder. Anything else (a shard linked to another model's file, a tokenizer linked to a file elsewhere) is
refused with both paths, before anything is read from it."""

from __future__ import annotations

import os

from .folders import inside

__all__ = ["trusted_roots", "resolved", "check_folder"]


def _within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def trusted_roots(folder: str) -> list[str]:
    """Where the files of `folder` may really live: the folder itself, and the repository's `blobs/` for a snapshot
    of the Hugging Face cache."""
    real = os.path.realpath(folder)
    roots = [real]
    snapshots = os.path.dirname(real)
    repo = os.path.dirname(snapshots)
    if os.path.basename(snapshots) == "snapshots" and os.path.basename(repo).startswith("models--"):
        roots.append(os.path.join(repo, "blobs"))
    return roots


def resolved(folder: str, name: str, what: str, roots: list[str] | None = None) -> str:
    """`folder/name` (lexically inside `folder`: see `folders.inside`), refused when it is a link that leads out of
    the folder (or, for a cache snapshot, out of its repository's blobs); returns the path to read."""
    path = inside(folder, name, what)
    real = os.path.realpath(path)
    if not any(_within(real, root) for root in (roots or trusted_roots(folder))):
        raise ValueError(
            f"{path} is a link to {real}, outside {os.path.realpath(folder)}; a checkpoint is read only from its own "
            "folder (or, for a Hugging Face cache snapshot, its repository's blobs/). Copy the file into the folder "
            "(cp -L) or point at the folder it belongs to."
        )
    return path


def check_folder(folder: str) -> None:
    """Refuse `folder` if any file or folder in it (not below it) is a link that leads out of it: what a model
    loader will read (weights, configs, tokenizer files)."""
    roots = trusted_roots(folder)
    for name in sorted(os.listdir(folder)):
        if os.path.islink(os.path.join(folder, name)):
            resolved(folder, name, "The checkpoint", roots)
