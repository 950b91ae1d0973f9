"""Data-parallel pruning on `torch.distributed`: the process-group primitives the walker and SI use.

Contract (docs/distributed.md): under `torchrun` (or `accelerate launch`) every rank calls the same public API with
the same full calibration set. Each rank keeps a contiguous share of the calibration batches, accumulates the
unnormalised statistics of its share (sums of x^2 and of x x^T, and token counts: `optimum_si.observers.stats.InputStats`),
and the sums are all-reduced, so every rank holds the statistics of every token and takes the same decisions.
Without a process group, or with one process, `detect()` returns None and nothing changes.

Failure model: a rank that raises publishes its error in the process group's key-value store before it re-raises;
every collective here waits by polling (never an unbounded blocking wait), so the other ranks see the error within
a fraction of a second, acknowledge it and raise it too. A rank that stops answering without raising (killed, hung)
makes the others raise after `timeout()` seconds.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch

from ..settings import DIST_TIMEOUT_ENV, data_parallel, dist_timeout

__all__ = ["DataParallel", "DistributedError", "activate", "active", "agree", "calibration_batches", "detect",
           "entry_point", "is_main_process", "quiet", "reduce_op", "shard_range", "timeout"]

logger = logging.getLogger(__name__)

_TIMEOUT_ENV = DIST_TIMEOUT_ENV
# The backend's own timeout is set this much longer than ours, so that a hung rank is reported by our wait (which
# names the setting) rather than by the backend's raw message.
_BACKEND_GRACE_S = 60.0
_ERROR_POLL_S = 0.2  # how often a waiting rank looks for another rank's published error
_ACK_WAIT_S = 10.0  # how long a failing rank waits for the others to acknowledge its error before it exits

_ACTIVE: DataParallel | None = None
_RUNS = 0  # runs activated in this process; every rank counts the same, so it names a run's keys in the store


class DistributedError(RuntimeError):
    """Another rank failed (its message is included), or a collective timed out."""

    def __init__(self, message: str, from_peer: bool = False) -> None:
        super().__init__(message)
        self.from_peer = from_peer


def timeout() -> float:
    """Seconds any collective may wait for the other ranks ($OPTIMUM_SI_DIST_TIMEOUT, default 1800; anything but a
    positive number is refused, naming the variable)."""
    return dist_timeout()


def shard_range(count: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s contiguous share of `count` items: shares differ by at most one, earlier ranks take
    the extra ones. Contiguous (not strided) so that a global index is `start + local index`."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def active() -> DataParallel | None:
    """The data-parallel context of the run in progress in this process (None outside a data-parallel run)."""
    return _ACTIVE


def detect() -> DataParallel | None:
    """The data-parallel context for the default process group, or None for a single process.

    A group already initialised (by the user or `accelerate`) is used as it is. Under `torchrun` without one (the
    launcher only sets RANK, WORLD_SIZE, MASTER_ADDR...), the default group is initialised here: NCCL when CUDA is
    available (each rank on cuda:LOCAL_RANK), gloo otherwise, with `timeout()`. $OPTIMUM_SI_DATA_PARALLEL=0 turns
    data parallelism off (each process then runs alone)."""
    import torch.distributed as dist

    if not dist.is_available() or not data_parallel():
        return None
    timeout()  # a bad $OPTIMUM_SI_DIST_TIMEOUT is refused before any rank waits on it
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
            return None
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=timedelta(seconds=timeout() + _BACKEND_GRACE_S))
        atexit.register(_destroy)  # a group this library made is this library's to close
    if dist.get_world_size() <= 1:
        return None
    return DataParallel()


def is_main_process() -> bool:
    """False only on ranks other than 0 of an initialised process group (for what only one process should print)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class DataParallel:
    """The ranks of the default process group, seen by one of them: sum-reductions, broadcasts and barriers that
    wait with a timeout and stop on another rank's error; which share of the calibration batches this rank owns."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.backend = str(dist.get_backend())
        # The key-value store that rendezvous made (torchrun's agent hosts it, so it outlives a failed rank). Private
        # in torch; without it errors still stop every rank, at the timeout instead of at once.
        try:
            self._store = dist.distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - any failure only loses the fast error path
            self._store = None
        self._prefix = "optimum_si/run0"
        # This rank's share of the calibration batches: set by `shard`, read by SI (global validation windows).
        self.batch_offset, self.batch_count, self.batch_total = 0, 0, 0
        # Payload bytes of the collectives this rank took part in (a ring all-reduce puts about 2 (W-1)/W times that
        # on each rank's link); the benchmark reports it per block.
        self.bytes_communicated = 0
        self._announced = False  # streaming: whether rank 0 has sent the resume point yet

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---------------------------------------------------------------------------------------------- sharding
    def shard(self, batches: Sequence[Any]) -> list[Any]:
        """This rank's contiguous share of `batches` (every rank passes the same full list)."""
        if len(batches) < self.world_size:
            raise ValueError(
                f"{len(batches)} calibration batches cannot be shared by {self.world_size} processes: each needs at "
                "least one. Raise num_samples (or lower batch_size), or start fewer processes."
            )
        start, stop = shard_range(len(batches), self.world_size, self.rank)
        self.batch_offset, self.batch_count, self.batch_total = start, stop - start, len(batches)
        return list(batches[start:stop])

    def local_indices(self, global_indices: Sequence[int]) -> list[int]:
        """The local positions, in this rank's share, of the given global batch indices that it owns."""
        start, stop = self.batch_offset, self.batch_offset + self.batch_count
        return [i - start for i in global_indices if start <= i < stop]

    def check_same(self, what: str, payload: bytes) -> None:
        """Raise on every rank unless all ranks hold the same `payload` (e.g. the calibration token ids)."""
        digest = int.from_bytes(hashlib.sha256(payload).digest()[:7], "little")  # 56 bits: exact in int64
        bounds = torch.tensor([digest, -digest], dtype=torch.int64)
        self._collective("all_reduce", bounds, op="max")
        if int(bounds[0]) != -int(bounds[1]):
            raise ValueError(f"The ranks were given different {what}; every process must pass the same model, recipe "
                             "and full calibration dataset (the library splits it).")

    def check_agreement(self, fields: dict[str, Any]) -> None:
        """Raise on every rank, naming each field the ranks disagree on and which rank holds what, unless all ranks
        hold the same value of every field (compared by digest: one small all-reduce, and only on a disagreement are
        the differing values themselves exchanged)."""
        names = sorted(fields)
        row = torch.tensor([_digest(names)] + [_digest(fields[name]) for name in names], dtype=torch.int64)
        kinds = torch.zeros(self.world_size, dtype=torch.int64)  # first the names: a run of another kind differs
        kinds[self.rank] = row[0]
        self._collective("all_reduce", kinds)
        if len(set(kinds.tolist())) > 1:
            differing = [("what the run is", [_shown(names) for names in self._gather_objects(names)])]
        else:
            table = torch.zeros(self.world_size, len(row), dtype=torch.int64)
            table[self.rank] = row
            self._collective("all_reduce", table)
            columns = [i for i in range(1, len(row)) if len(set(table[:, i].tolist())) > 1]
            if not columns:
                return
            values = self._gather_objects({names[i - 1]: _shown(fields[names[i - 1]]) for i in columns})
            differing = [(names[i - 1], [v[names[i - 1]] for v in values]) for i in columns]
        parts = []
        for name, per_rank in differing[:3]:
            groups: dict[str, list[int]] = {}
            for rank, value in enumerate(per_rank):
                groups.setdefault(str(value), []).append(rank)
            held_by = "; ".join(f"rank{'s' if len(r) > 1 else ''} {', '.join(map(str, r))}: {v}" for v, r in groups.items())
            parts.append(f"{name} ({held_by})")
        more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
        raise ValueError(f"The {self.world_size} ranks disagree on {', '.join(parts)}{more}; start every process with "
                         "the same model, recipe, calibration data and output folder (the library splits the "
                         "calibration windows between them).")

    def _gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (small control messages only)."""
        return [self.broadcast_object(obj if rank == self.rank else None, src=rank) for rank in range(self.world_size)]

    # ---------------------------------------------------------------------------------------------- collectives
    def all_reduce_sum_(self, tensor: torch.Tensor) -> None:
        """In-place sum over ranks: the `reduce_stats` op of the walker (`InputStats.reduce_` calls it)."""
        self._collective("all_reduce", tensor)

    def sum_values(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over ranks of a few Python numbers (losses and their counts), in float64."""
        tensor = torch.tensor(list(values), dtype=torch.float64)
        self._collective("all_reduce", tensor)
        return tensor.tolist()

    def max_int(self, value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.int64)
        self._collective("all_reduce", tensor, op="max")
        return int(tensor.item())

    def barrier(self) -> None:
        self._collective("all_reduce", torch.zeros(1))

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """Rank `src`'s `obj` on every rank (pickled; for small control messages)."""
        sending = self.rank == src
        data = pickle.dumps(obj) if sending else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        self._collective("broadcast", size, src=src)
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8) if sending else \
            torch.empty(int(size.item()), dtype=torch.uint8)
        if buffer.numel():
            self._collective("broadcast", buffer, src=src)
        return obj if sending else pickle.loads(buffer.numpy().tobytes())

    # ---------------------------------------------------------------------------------------------- rank 0 leads
    # A streaming run's output folder belongs to rank 0. It broadcasts exactly two messages: what to compute (the
    # resume point; None when nothing is left) and, once the folder is complete, its release. The other ranks wait
    # for each in turn, so they never run ahead of the folder or leave before it is published.
    def announce(self, state: Any) -> None:
        self.broadcast_object(state)
        self._announced = True

    def release_followers(self) -> None:
        if not self._announced:
            self.broadcast_object(None)
        self._announced = False
        self.broadcast_object(True)

    def await_leader(self) -> Any:
        return self.broadcast_object()

    def await_release(self) -> None:
        self.broadcast_object()

    def average_gradients(self, params: Sequence[torch.Tensor], participated: bool, finite: bool = True) -> None:
        """Replace each parameter's gradient by the mean over the ranks that computed one this step (a rank whose
        share is used up contributes nothing); one collective per step. Raises FloatingPointError on every rank if
        any rank's loss was not finite, so that all ranks take the same path."""
        if not params:
            return
        device = params[0].device
        use = participated and finite
        grads = [p.grad.reshape(-1) if use and p.grad is not None else torch.zeros(p.numel(), device=device)
                 for p in params]
        flat = torch.cat([*grads, torch.tensor([float(use), float(participated and not finite)], device=device)])
        flat = flat.float()
        self._collective("all_reduce", flat)
        if flat[-1] > 0:
            raise FloatingPointError("non-finite induction loss on a rank")
        count = float(flat[-2])
        flat = flat[:-2] / max(count, 1.0)
        offset = 0
        for p in params:
            grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
            p.grad = grad.clone()

    def broadcast_(self, tensor: torch.Tensor, src: int) -> None:
        """In-place broadcast of `tensor` from rank `src` (same shape and dtype on every rank)."""
        self._collective("broadcast", tensor, src=src)

    def reduce_sum_(self, tensor: torch.Tensor, dst: int) -> None:
        """Sum of `tensor` over ranks, into rank `dst`'s copy (the others' copies are left undefined)."""
        self._collective("reduce", tensor, src=dst)

    def reduce_statistics_but_hessians_(self, tensor: torch.Tensor) -> None:
        """The walker's `reduce_stats` for weight-updating methods: token counts and sums of x^2 are all-reduced;
        an X X^T sum (the only 2-D statistic) stays this rank's partial sum, marked so, for `OwnerSolve` to reduce
        it to the one rank that solves with it (half the traffic of an all-reduce, and no rank but the owner needs
        it)."""
        if tensor.dim() == 2:
            tensor._optimum_si_partial = True  # type: ignore[attr-defined]  # read by OwnerSolve
            return
        self._collective("all_reduce", tensor)

    def _collective(self, kind: str, tensor: torch.Tensor, op: str = "sum", src: int = 0) -> None:
        import torch.distributed as dist

        target = self._comm_device(tensor)
        work_tensor = tensor if tensor.device == target else tensor.to(target)
        reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
        if kind == "all_reduce":
            work = dist.all_reduce(work_tensor, op=reduce_op, async_op=True)
        elif kind == "reduce":
            work = dist.reduce(work_tensor, dst=src, op=reduce_op, async_op=True)
        else:
            work = dist.broadcast(work_tensor, src=src, async_op=True)
        self.bytes_communicated += work_tensor.numel() * work_tensor.element_size()
        self._wait(work, kind)
        if work_tensor is not tensor:
            tensor.copy_(work_tensor)

    def _comm_device(self, tensor: torch.Tensor) -> torch.device:
        """Where the backend can reduce `tensor`: gloo reduces CPU tensors, NCCL CUDA ones (a mixed backend such as
        "cpu:gloo,cuda:nccl" takes both)."""
        if tensor.device.type == "cuda" and "nccl" in self.backend:
            return tensor.device
        if tensor.device.type == "cpu" and "gloo" in self.backend:
            return tensor.device
        if "nccl" in self.backend:
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _wait(self, work: Any, what: str) -> None:
        """Wait for `work` with a timeout, raising as soon as another rank has published an error."""
        started = last_check = time.monotonic()
        pause = 1e-5
        limit = timeout()
        while not work.is_completed():
            now = time.monotonic()
            if now - last_check >= _ERROR_POLL_S:
                last_check = now
                self._raise_peer_error()
                if now - started > limit:
                    raise DistributedError(
                        f"rank {self.rank}: no answer from the other ranks after {limit:g} s in {what} (a rank was "
                        f"killed or hangs; ${_TIMEOUT_ENV} sets the limit)")
            time.sleep(pause)
            # Tiny collectives finish in microseconds; the 2 ms cap bounds the latency added to SI's per-step
            # all-reduce, and a long wait (rank 0 writing the checkpoint) costs only a wake-up every 2 ms.
            pause = min(pause * 2, 0.002)
        try:
            work.wait()
        except Exception as err:  # noqa: BLE001 - the backend's own timeout, or a connection a dead rank broke
            self._raise_peer_error()
            text = " ".join(str(err).split())
            if "timed out" in text.lower() or "timeout" in text.lower():
                raise DistributedError(
                    f"rank {self.rank}: no answer from the other ranks after {time.monotonic() - started:.0f} s in "
                    f"{what} (a rank was killed or hangs; ${_TIMEOUT_ENV} sets the limit)") from err
            raise DistributedError(
                f"rank {self.rank}: the connection to the other ranks broke in {what} (a rank was killed or crashed: "
                f"{text[:200]})") from err

    # ---------------------------------------------------------------------------------------------- errors
    def _raise_peer_error(self) -> None:
        store = self._store
        if store is None or not store.check([f"{self._prefix}/error"]):
            return
        message = store.get(f"{self._prefix}/error").decode()
        store.add(f"{self._prefix}/acks", 1)
        raise DistributedError(f"{message} (stopped on rank {self.rank} too)", from_peer=True)

    def publish_error(self, error: BaseException) -> None:
        """Tell the other ranks that this one failed, and give them a moment to raise the same error."""
        store = self._store
        if store is None:
            return
        try:
            if store.add(f"{self._prefix}/failures", 1) == 1:  # the first failure is the cause; later ones follow
                store.set(f"{self._prefix}/error", f"rank {self.rank} failed: {type(error).__name__}: {error}")
            deadline = time.monotonic() + _ACK_WAIT_S
            while time.monotonic() < deadline:
                acks = store.add(f"{self._prefix}/acks", 0) + store.add(f"{self._prefix}/failures", 0)
                if acks >= self.world_size:
                    break
                time.sleep(0.05)
        except Exception:  # noqa: BLE001 - the store may be gone with a dead rank 0; the timeout still applies
            logger.debug("could not publish the error to the other ranks", exc_info=True)


@contextlib.contextmanager
def activate(group: DataParallel) -> Iterator[DataParallel]:
    """Make `group` the active data-parallel context for one run: logs below ERROR are silenced on ranks other
    than 0 (one log, not N), and an error on this rank is published so that every rank stops with it."""
    global _ACTIVE, _RUNS
    _RUNS += 1
    group._prefix = f"optimum_si/run{_RUNS}"
    package_logger = logging.getLogger("optimum_si")
    level = package_logger.level
    if not group.is_main:
        package_logger.setLevel(logging.ERROR)
    _ACTIVE = group
    try:
        yield group
    except BaseException as error:
        if not (isinstance(error, DistributedError) and error.from_peer):
            group.publish_error(error)
        raise
    finally:
        _ACTIVE = None
        package_logger.setLevel(level)


def entry_point(function: Callable) -> Callable:
    """Decorator of the public verbs (`SIPruner.prune`, `save`, `induce`): the call runs as one data-parallel run
    when a process group of several ranks exists (`detect`), and as before otherwise. Nested calls join the run."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _ACTIVE is not None:
            return function(*args, **kwargs)
        group = detect()
        if group is None:
            return function(*args, **kwargs)
        with activate(group):
            return function(*args, **kwargs)

    return wrapper


# ------------------------------------------------------------------------------------------ what the run asks
# The walker and the pruner call these whether or not a run is data-parallel; each is the identity for one process.

def calibration_batches(ids: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The calibration batches this rank pushes through the blocks: all of them for one process, else this rank's
    contiguous share, after checking that every rank was given the same token ids."""
    batches = list(ids.split(batch_size))
    group = _ACTIVE
    if group is None:
        return batches
    group.check_same("calibration token ids", f"{tuple(ids.shape)}".encode() + ids.cpu().long().numpy().tobytes())
    return group.shard(batches)


def agree(fields: dict[str, Any]) -> None:
    """Raise on every rank, naming the fields and the ranks, unless every rank of the active data-parallel run holds
    the same value of each field (the run fingerprint: recipe, calibration, source, world layout, output); nothing
    for one process."""
    if _ACTIVE is not None:
        _ACTIVE.check_agreement(fields)


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, default=repr).encode()


def _digest(value: Any) -> int:
    return int.from_bytes(hashlib.sha256(_canonical(value)).digest()[:7], "little")  # 56 bits: exact in int64


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=repr) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def reduce_op() -> Callable[[torch.Tensor], None] | None:
    """The walker's `reduce_stats`: an in-place sum over ranks, or None for one process."""
    return _ACTIVE.all_reduce_sum_ if _ACTIVE is not None else None


def quiet(options: Any) -> Any:
    """The run options (`optimum_si.RunOptions`) with progress bars only on rank 0."""
    if _ACTIVE is not None and not _ACTIVE.is_main and options.show_progress:
        return options.replace(show_progress=False)
    return options
