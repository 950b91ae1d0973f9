"""Data-parallel pruning on `torch.distributed`: the process-group primitives the walk and SI use (reductions,
broadcasts and barriers that time out and stop on another rank's error), and owner-rank solves of weight-updating
methods. Each is the identity for one process. Imports: `settings` only (docs/distributed.md).
"""

from __future__ import annotations

from .group import (
    DataParallel,
    DistributedError,
    activate,
    active,
    agree,
    calibration_batches,
    detect,
    entry_point,
    is_main_process,
    quiet,
    reduce_op,
    shard_range,
    timeout,
)
from .owner_solve import OwnerSolve, assign_owners, data_parallel

__all__ = ["DataParallel", "DistributedError", "OwnerSolve", "activate", "active", "agree", "assign_owners",
           "calibration_batches", "data_parallel", "detect", "entry_point", "is_main_process", "quiet", "reduce_op",
           "shard_range", "timeout"]
