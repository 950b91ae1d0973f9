"""Every request optimum-si makes to the Hugging Face Hub (or the endpoint HF_ENDPOINT names) runs inside `hub_access`:

- offline mode (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, HF_DATASETS_OFFLINE for datasets) is honoured at once: the
  libraries are told for the duration of the call, even when the variable was set after they were imported, so
  nothing is sent, waited for or retried;
- otherwise the endpoint is asked once, with `settings.network_timeout()` seconds to answer and no retry: an endpoint
  that is down, or accepts connections and never answers, costs one wait instead of the libraries' retries of every
  file. The call then runs in offline mode, so files already in the caches still serve; if they do not suffice it
  fails with `NetworkError`;
- every request of the call waits at most `network_timeout()` seconds for each answer (huggingface_hub's shared
  client has no timeout of its own), and a failure to reach the endpoint becomes one `NetworkError` naming it and the
  fixes.

Imports nothing of the package but `settings`, and not torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from .settings import NETWORK_TIMEOUT_ENV, network_timeout

__all__ = ["NetworkError", "hub_access", "endpoint", "offline", "is_network_failure"]

logger = logging.getLogger(__name__)

_TRUE = ("1", "ON", "YES", "TRUE")
# Exception classes (by name, in the HTTP libraries the Hub clients use) that mean "no answer in time" or "could not
# reach the other end", as opposed to an answer that says no (HTTP 404, 401...).
_TIMEOUTS = {"TimeoutException", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "Timeout",
             "TimeoutError", "ServerTimeoutError", "timeout"}
_UNREACHABLE = {"TransportError", "NetworkError", "ConnectError", "ReadError", "WriteError", "ProxyError",
                "RemoteProtocolError", "ConnectionError", "ClientConnectionError", "NewConnectionError",
                "MaxRetryError", "gaierror"}
_HTTP_MODULES = ("httpx", "httpcore", "requests", "urllib3", "aiohttp", "socket", "builtins", "ssl")


class NetworkError(ConnectionError):
    """The Hub endpoint could not be reached, or did not answer in time. Not a mistake in the input: the command line
    exits with status 1. The message names the endpoint and the fixes."""


def endpoint() -> str:
    """The Hub endpoint huggingface_hub talks to (https://huggingface.co, or HF_ENDPOINT)."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def _true(value: str | None) -> bool:
    return (value or "").strip().upper() in _TRUE


def offline(datasets: bool = False) -> bool:
    """Whether offline mode is on: for huggingface_hub (and transformers), or with `datasets=True` for the `datasets`
    library (HF_DATASETS_OFFLINE, when set, decides there). Read from the environment now and from the libraries'
    own settings."""
    if datasets:
        config = sys.modules.get("datasets.config")
        if config is not None and getattr(config, "HF_HUB_OFFLINE", False):
            return True
        if os.environ.get("HF_DATASETS_OFFLINE") is not None:
            return _true(os.environ["HF_DATASETS_OFFLINE"])
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and getattr(constants, "HF_HUB_OFFLINE", False):
        return True
    # huggingface_hub's rule: HF_HUB_OFFLINE when set, else TRANSFORMERS_OFFLINE.
    return _true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))


def is_network_failure(error: BaseException) -> str | None:
    """"timeout" or "unreachable" when `error` (or an error it was raised from) is a failure to get an answer from
    the other end; None for anything else (an HTTP error status is an answer)."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 16:
        if isinstance(current, NetworkError):
            return "unreachable"
        for kind in type(current).__mro__:
            module = kind.__module__.split(".")[0]
            if module in _HTTP_MODULES or module.startswith("httpx") or module.startswith("httpcore"):
                if kind.__name__ in _TIMEOUTS:
                    return "timeout"
                if kind.__name__ in _UNREACHABLE and not _is_offline_refusal(current):
                    return "unreachable"
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _is_offline_refusal(error: BaseException) -> bool:
    # huggingface_hub's OfflineModeIsEnabled is a ConnectionError, but nothing was tried.
    return type(error).__name__ == "OfflineModeIsEnabled"


def _fix() -> str:
    return (f"check the connection or set HF_ENDPOINT to a reachable Hub, set HF_HUB_OFFLINE=1 to use only what is "
            f"already cached, or pass a local folder or file (${NETWORK_TIMEOUT_ENV} sets how long to wait)")


def _failure(what: str, url: str, kind: str | None, error: BaseException, limit: float) -> NetworkError:
    if kind == "timeout":
        reason = f"{url} did not answer within {limit:g} s"
    else:
        detail = " ".join(str(error).split())[:160] or type(error).__name__
        reason = f"{url} could not be reached ({type(error).__name__}: {detail})"
    return NetworkError(f"Could not {what}: {reason}; {_fix()}.")


@contextlib.contextmanager
def _libraries_offline() -> Iterator[None]:
    """huggingface_hub's, transformers' (through huggingface_hub) and datasets' offline switches on, for the block:
    they read these module settings at each call."""
    from huggingface_hub import constants

    saved: list[tuple[Any, str, Any]] = [(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)]
    config = sys.modules.get("datasets.config")
    if config is not None:
        saved += [(config, name, getattr(config, name)) for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
                  if hasattr(config, name)]
    try:
        for module, name, _value in saved:
            setattr(module, name, True)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


@contextlib.contextmanager
def _request_timeout(limit: float) -> Iterator[None]:
    """Each request of huggingface_hub's shared HTTP client (datasets uses it too) waits at most `limit` seconds for
    each answer, for the block; the client's own setting is restored afterwards."""
    from huggingface_hub.utils import get_session

    client = get_session()
    previous = client.timeout
    client.timeout = limit
    try:
        yield
    finally:
        client.timeout = previous


def _probe(url: str, limit: float) -> BaseException | None:
    """Ask `url` once (no retry); None when anything answered (any HTTP status is an answer)."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(url, timeout=limit, follow_redirects=False)
    except Exception as err:  # noqa: BLE001 - classified below; anything else means it answered somehow
        if is_network_failure(err):
            return err
        logger.debug("probing %s: %s", url, err)
    return None


@contextlib.contextmanager
def hub_access(what: str, datasets: bool = False) -> Iterator[None]:
    """Run the Hub calls of the block (`what` says what they do, e.g. "download the dataset 'c4'") with offline mode
    honoured at once, one probe of the endpoint, a timeout on every request and failures to reach it raised as
    `NetworkError` (see the module's docstring). Errors that are answers (not found, refused credentials) pass
    through unchanged, and so does everything raised in offline mode."""
    limit = network_timeout()
    if offline(datasets):
        with _libraries_offline():
            yield
        return
    url = endpoint()
    down = _probe(url, limit)
    if down is not None:
        kind = is_network_failure(down)
        try:
            with _libraries_offline():
                yield
        except Exception as err:
            raise _failure(what, url, kind, down, limit) from err
        logger.warning("%s did not answer (%s); used the local cache to %s.", url, type(down).__name__, what)
        return
    try:
        with _request_timeout(limit):
            yield
    except NetworkError:
        raise
    except Exception as err:
        kind = is_network_failure(err)
        if kind is None:
            raise
        raise _failure(what, url, kind, err, limit) from err
