"""One run per output folder: an exclusive lock next to `save_dir`, and the holder's pid and host beside it.

The lock (`.<name>.optimum-si.lock`, an OS file lock from the `filelock` package) lives next to the folder, not in
it, because the folder itself is replaced as a whole at the end of a save; for a `save_dir` that is a mount point
(swapped by its contents, see folders.py) it lives inside, as `.optimum-si.lock`, since the folder beside it may not
be writable. The OS drops the lock when its holder dies, even by SIGKILL, so a stale lock never blocks a rerun; the
owner file is only there to name the holder. Both files are removed when the run ends (the lock file only while it
is still the one held: a peer that opened it meanwhile sees it unlinked and takes a fresh one), so nothing is left
beside the output.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["output_lock", "FolderLockedError"]


class FolderLockedError(OSError):
    """Another optimum-si run is writing the same output folder (an OSError, like any other unwritable folder)."""


def _paths(save_dir: str) -> tuple[str, str]:
    target = os.path.realpath(save_dir)
    if os.path.isdir(target) and os.path.ismount(target):  # swapped by its contents: folders.in_place
        return os.path.join(target, ".optimum-si.lock"), os.path.join(target, ".optimum-si.owner")
    parent, name = os.path.split(target)
    lock = os.path.join(parent, f".{name}.optimum-si.lock")
    return lock, os.path.join(parent, f".{name}.optimum-si.owner")


def _still_held(lock: Any, path: str) -> bool:
    """Whether `lock` is held and `path` is still the file it locked (not one a peer made after an unlink)."""
    if not lock.is_locked:
        return False
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    try:
        return fd is None or os.path.samestat(os.fstat(fd), os.lstat(path))
    except OSError:
        return False


def _holder(owner_path: str) -> str:
    try:
        with open(owner_path, encoding="utf-8") as handle:
            owner = json.load(handle)
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}"
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return "holder unknown"


@contextlib.contextmanager
def output_lock(save_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive write lock of `save_dir` (its parent must exist); fail at once if another run holds it."""
    from filelock import FileLock, Timeout

    save_dir = os.fspath(save_dir)
    lock_path, owner_path = _paths(save_dir)
    lock = FileLock(lock_path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FolderLockedError(
            f"{save_dir} is being written by another optimum-si run ({_holder(owner_path)}); wait for it to finish "
            "or choose another save_dir."
        ) from None
    try:
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        with open(owner_path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(owner, handle)
        os.replace(owner_path + ".tmp", owner_path)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(owner_path)
        if _still_held(lock, lock_path):
            with contextlib.suppress(OSError):
                os.remove(lock_path)
        lock.release()
