"""Upload a saved optimum-si checkpoint folder to the Hugging Face Hub.

Only reads the local folder: a failed push (auth, network, Hub-side error) raises `HubPushError` and leaves the
checkpoint exactly as it was, so the push can simply be retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .checkpoint.files import CONFIG_NAME

__all__ = ["push_to_hub", "check_repo_id", "HubPushError", "DEFAULT_TIMEOUT"]

logger = logging.getLogger(__name__)

# Seconds to wait for each reply of the Hub (connecting, each read, each write). huggingface_hub's shared HTTP client
# has no timeout for uploads, so without one a stalled endpoint blocks the push forever.
DEFAULT_TIMEOUT = 60.0
# Bookkeeping that optimum-si keeps in or beside a checkpoint folder (manifest, progress, lock and owner files, the
# staging/partial/old siblings) and leftovers of interrupted writes: never part of what is published.
IGNORE_PATTERNS = ["*.optimum-si-*", "*.optimum-si.lock", "*.optimum-si.owner", "*.tmp"]


class HubPushError(RuntimeError):
    """Pushing a checkpoint to the Hub failed; the message says which step failed and how to fix it."""


def check_repo_id(repo_id: Any, name: str = "repo_id") -> str:
    """`repo_id` if it is a valid Hub repo id ('name' or 'owner/name'); ValueError naming `name` otherwise."""
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str):
        raise ValueError(f"{name} must be a Hub repo id such as 'owner/name', got {repo_id!r}.")
    try:
        validate_repo_id(repo_id)
    except ValueError as err:
        raise ValueError(f"{name} must look like 'name' or 'owner/name', got {repo_id!r}: {err}") from None
    return repo_id


@contextlib.contextmanager
def _session_timeout(timeout: float | None) -> Iterator[None]:
    """Give huggingface_hub's shared HTTP client a timeout for the duration of the push (restored afterwards)."""
    from huggingface_hub.utils import get_session

    client = get_session()
    previous = client.timeout
    client.timeout = timeout
    try:
        yield
    finally:
        client.timeout = previous


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's write lock during the upload, so that no optimum-si run replaces the checkpoint half-way
    through it (the Hub would get a mix of two checkpoints). A folder whose parent is read-only cannot be written by
    a run either: it is pushed without the lock."""
    from .checkpoint.locking import FolderLockedError, output_lock

    lock, locked = output_lock(folder), False
    try:
        lock.__enter__()
        locked = True
    except FolderLockedError as err:
        raise HubPushError(f"Could not push {folder}: {err}") from None
    except OSError:
        pass
    try:
        yield
    finally:
        if locked:
            lock.__exit__(None, None, None)


def push_to_hub(
    save_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> str:
    """Create `repo_id` if needed (`exist_ok`) and upload every file of the checkpoint in `save_dir` (but optimum-si's
    own bookkeeping files, see `IGNORE_PATTERNS`).

    `endpoint` defaults to huggingface_hub's (https://huggingface.co, or `HF_ENDPOINT` as read when huggingface_hub
    was imported). `timeout` is the number of seconds to wait for each reply of the Hub (None: wait forever; the
    client retries some requests a few times). Returns the commit URL; with `create_pr=True` the pull request URL is
    logged.
    """
    try:  # huggingface_hub >= 2 bundles httpx2; 1.x uses httpx
        from httpx2 import TimeoutException, TransportError
    except ImportError:  # pragma: no cover
        from httpx import TimeoutException, TransportError
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not isinstance(save_dir, (str, os.PathLike)):
        raise ValueError(f"save_dir must be the path of a saved checkpoint folder, got {save_dir!r}.")
    folder = Path(save_dir)
    if not (folder / CONFIG_NAME).is_file():
        raise ValueError(
            f"{folder} is not a complete optimum-si checkpoint (no {CONFIG_NAME}). Save one first with "
            f"`SIPruner.save(model, save_dir)` or `optimum-si prune --output DIR`, and push that folder."
        )
    check_repo_id(repo_id)
    if endpoint is not None and (not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))):
        raise ValueError(f"endpoint must be an http(s) URL such as 'https://huggingface.co' or None, got {endpoint!r}.")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}.")

    from .network import offline
    from .version import __version__

    if offline():  # honoured at once, also when set after huggingface_hub was imported
        raise HubPushError(f"Could not create the repo {repo_id}: offline mode is on (HF_HUB_OFFLINE). Unset "
                           "HF_HUB_OFFLINE to push.")
    api = HfApi(endpoint=endpoint, library_name="optimum-si", library_version=__version__)
    step = f"create the repo {repo_id}"
    try:
        with _folder_lock(folder), _session_timeout(timeout):
            api.create_repo(repo_id, private=private, exist_ok=True, token=token)
            step = f"upload {folder} to {repo_id}"
            info = api.upload_folder(
                folder_path=folder,
                repo_id=repo_id,
                commit_message=commit_message or "Upload optimum-si checkpoint",
                create_pr=create_pr,
                token=token,
                ignore_patterns=IGNORE_PATTERNS,
            )
        if not getattr(info, "commit_url", None):
            raise ValueError(f"no commit URL in the reply ({info!r})")
    except OfflineModeIsEnabled as err:
        raise HubPushError(f"Could not {step}: offline mode is on. Unset HF_HUB_OFFLINE to push.") from err
    except HfHubHTTPError as err:
        status = err.response.status_code if getattr(err, "response", None) is not None else None
        if status in (401, 403):
            raise HubPushError(
                f"Could not {step}: the Hub at {api.endpoint} refused the credentials (HTTP {status}). Log in with "
                f"`huggingface-cli login` (or `hf auth login`) or pass `token=` a token with write access to "
                f"{repo_id}."
            ) from err
        raise HubPushError(f"Could not {step}: the Hub at {api.endpoint} answered HTTP {status}: {err}") from err
    except TimeoutException as err:
        raise HubPushError(
            f"Could not {step}: the Hub endpoint {api.endpoint} did not answer within {timeout:g} s "
            f"({type(err).__name__}). Retry later, or pass a longer `timeout=`."
        ) from err
    except TransportError as err:
        raise HubPushError(
            f"Could not {step}: could not reach the Hub endpoint {api.endpoint} ({type(err).__name__}: {err}). "
            f"Check the network connection, proxy settings and the `endpoint` / HF_ENDPOINT setting."
        ) from err
    except (json.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        # A 200 reply that is not the Hub's JSON: a proxy, a captive portal or a wrong `endpoint` answered.
        what = "a reply that is not JSON" if isinstance(err, json.JSONDecodeError) else "an unexpected reply"
        raise HubPushError(
            f"Could not {step}: the endpoint {api.endpoint} sent {what} ({type(err).__name__}: {err}); check that "
            "`endpoint` / HF_ENDPOINT points to a Hugging Face Hub."
        ) from err

    if info.pr_url:
        logger.info("Opened pull request %s", info.pr_url)
    logger.info("Pushed %s to %s: %s", folder, repo_id, info.commit_url)
    return str(info.commit_url)
