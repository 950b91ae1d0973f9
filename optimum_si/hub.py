"""Upload a saved optimum-si checkpoint folder to the Hugging Face Hub.

Only reads the local folder: a failed push (auth, network, Hub-side error) raises `HubPushError` and leaves the
checkpoint exactly as it was, so the push can simply be retried.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .config import CONFIG_NAME

try:  # huggingface_hub >= 2 bundles httpx2; 1.x uses httpx
    from httpx2 import TransportError
except ImportError:  # pragma: no cover
    from httpx import TransportError

__all__ = ["push_to_hub", "HubPushError"]

logger = logging.getLogger(__name__)


class HubPushError(RuntimeError):
    """Pushing a checkpoint to the Hub failed; the message says which step failed and how to fix it."""


def push_to_hub(
    save_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
) -> str:
    """Create `repo_id` if needed (`exist_ok`) and upload every file of the checkpoint in `save_dir`.

    `endpoint` defaults to huggingface_hub's (https://huggingface.co, or `HF_ENDPOINT` as read when huggingface_hub
    was imported). Returns the commit URL; with `create_pr=True` the pull request URL is logged.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.utils import validate_repo_id

    folder = Path(save_dir)
    if not (folder / CONFIG_NAME).is_file():
        raise ValueError(
            f"{folder} is not a complete optimum-si checkpoint (no {CONFIG_NAME}). Save one first with "
            f"`SIPruner.save(model, save_dir)` or `optimum-si prune --output DIR`, and push that folder."
        )
    try:
        validate_repo_id(repo_id)
    except ValueError as err:
        raise ValueError(f"repo_id must look like 'name' or 'owner/name', got {repo_id!r}: {err}") from None

    from . import __version__

    api = HfApi(endpoint=endpoint, library_name="optimum-si", library_version=__version__)
    step = f"create the repo {repo_id}"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        step = f"upload {folder} to {repo_id}"
        info = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            commit_message=commit_message or "Upload optimum-si checkpoint",
            create_pr=create_pr,
            token=token,
        )
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
    except TransportError as err:
        raise HubPushError(
            f"Could not {step}: could not reach the Hub endpoint {api.endpoint} ({type(err).__name__}: {err}). "
            f"Check the network connection, proxy settings and the `endpoint` / HF_ENDPOINT setting."
        ) from err

    if info.pr_url:
        logger.info("Opened pull request %s", info.pr_url)
    logger.info("Pushed %s to %s: %s", folder, repo_id, info.commit_url)
    return str(info.commit_url)
