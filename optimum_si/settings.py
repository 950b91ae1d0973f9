"""The environment variables optimum-si reads, each checked the same way: a value that is not what the variable takes is
one error naming the variable, what it got and what to set instead (never a bare `float()` error, and never a silent
fallback).

Imports nothing of the package and not torch: the command line checks them before it loads anything.
"""

from __future__ import annotations

import math
import os

__all__ = ["DIST_TIMEOUT_ENV", "NETWORK_TIMEOUT_ENV", "DATA_PARALLEL_ENV", "seconds", "dist_timeout",
           "network_timeout", "data_parallel"]

# How long a collective may wait for the other ranks (optimum_si.distributed).
DIST_TIMEOUT_ENV = "OPTIMUM_SI_DIST_TIMEOUT"
# How long each request to the Hugging Face Hub (or HF_ENDPOINT) may wait for an answer (optimum_si.network).
NETWORK_TIMEOUT_ENV = "OPTIMUM_SI_NETWORK_TIMEOUT"
# "0": every process prunes on its own even inside a process group (e.g. a training script that prunes per rank).
DATA_PARALLEL_ENV = "OPTIMUM_SI_DATA_PARALLEL"
# Collectives wait for the slowest rank; rank 0 writing a 70B checkpoint while the others wait at the final barrier
# is the longest legitimate wait, hence minutes rather than seconds.
_DEFAULT_DIST_TIMEOUT_S = 1800.0
# A reply of the Hub, or the next bytes of a download, never take this long on a working connection.
_DEFAULT_NETWORK_TIMEOUT_S = 30.0


def seconds(name: str, default: float) -> float:
    """The positive, finite number of seconds in $`name` (`default` when it is unset or empty)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={os.environ[name]!r} is not a number of seconds; set it to a positive number such as "
                         f"{default:g}, or unset it (default {default:g}).")
    return value


def dist_timeout() -> float:
    """Seconds any collective may wait for the other ranks ($OPTIMUM_SI_DIST_TIMEOUT, default 1800)."""
    return seconds(DIST_TIMEOUT_ENV, _DEFAULT_DIST_TIMEOUT_S)


def network_timeout() -> float:
    """Seconds each request to the Hub may wait for an answer ($OPTIMUM_SI_NETWORK_TIMEOUT, default 30)."""
    return seconds(NETWORK_TIMEOUT_ENV, _DEFAULT_NETWORK_TIMEOUT_S)


def data_parallel() -> bool:
    """Whether a run inside a process group of several ranks is data-parallel ($OPTIMUM_SI_DATA_PARALLEL: 0 turns it
    off; unset, 1: on)."""
    text = os.environ.get(DATA_PARALLEL_ENV, "").strip().lower()
    if text in ("", "1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"{DATA_PARALLEL_ENV}={os.environ[DATA_PARALLEL_ENV]!r} is neither on nor off; set it to 0 (each "
                     "process prunes alone) or 1, or unset it (default: on).")
