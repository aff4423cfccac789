"""torch.distributed plumbing: every multi-process detail of the library lives here.

The library runs data-parallel with PyTorch's own engine (``torch.distributed``; launched by
``torchrun``, NCCL on GPUs, gloo on CPUs). When no process group is initialized, or it holds one
process, every helper below is the identity or a no-op, so single-process code paths run
unchanged (bit-identical results). When one is (``torchrun ... -m gcnprune_fast prune``: the
command line joins it with :func:`init_from_env`; or the caller's own ``init_process_group``
before calling ``prune()``), the stages call these helpers and become collective: every rank
must call them, in the same order.

Conventions (why a run on N processes gives the result of a run on one):

- **Sharding is by batch.** Every rank draws the loader's order from the same seeded generator,
  and rank r of N handles batches r, r+N, r+2N, ... of that order (:func:`shard`). A sharded
  pass therefore covers exactly the batches a single process would, in the same composition:
  features, BatchNorm re-estimation and evaluation all-reduce their partial sums to the
  single-process values, and a DDP step over N per-rank batches of B equals a single-process step
  over the N*B samples of the same global batch. A ``DataLoader`` is rebuilt with a strided batch
  sampler (rank r loads only its own batches); a loader whose sampler is a ``DistributedSampler``
  is taken as already sharded by the user; any other loader (``TensorBatchLoader``, lists) is
  iterated on every rank and each keeps its own batches (cheap for in-memory tensors).
- **Searches split the masks, not the decisions.** The masks of one update are scored round-robin
  across the ranks (:func:`map_split`) and the results all-gathered in order; every rank then
  applies the same update from the same values. Random draws come from generators seeded
  identically on every rank. A search whose next candidates depend on the last reward (a DDPG
  episode after the warm-up) scores its one candidate on rank 0 (``map_split`` of one item) and
  every rank applies the same update from that value.
- **Training a search model (PruningNet) is data-parallel**: each rank takes its shard of the
  loader (``shard(even=True)``), draws the same sub-network from the same generator, and the
  gradients are averaged over the ranks (:func:`average_gradients`) before every rank takes the
  same optimizer step: one step on a global batch of N loader batches.
- **Rank 0 writes** checkpoints and outputs (:func:`is_main`, atomic replace); every rank reads
  them on resume, so ``checkpoint_dir`` / ``--out`` must be on a filesystem all nodes see.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional, Sequence

import torch
import torch.distributed as dist

__all__ = ["World", "world", "active", "is_distributed", "is_main", "backend_for", "comm_device",
           "init_from_env", "shutdown", "log_world", "all_reduce", "all_reduce_numbers",
           "all_reduce_checked", "all_gather_object", "broadcast_object", "all_gather_rows",
           "barrier", "map_split", "average_", "average_gradients", "inner_loader",
           "shard", "is_sharded", "global_batch_index", "broadcast_if_different",
           "atomic_save", "atomic_write_text", "under_torchrun", "failure_hint"]

logger = logging.getLogger("gcnprune_fast")


@dataclass(frozen=True)
class World:
    """Facts about the process group: this process's ``rank`` of ``size``, its ``local_rank``
    on its node, and the ``backend`` (None when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World()
"""The world of a process without a process group."""


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> World:
    """The current :class:`World` (:data:`SINGLE` without an initialized process group)."""
    if not _initialized():
        return SINGLE
    rank, size = dist.get_rank(), dist.get_world_size()
    local = os.environ.get("LOCAL_RANK")
    if local is None:
        per_node = torch.cuda.device_count() if dist.get_backend() == "nccl" else size
        local = rank % max(per_node, 1)
    return World(rank=rank, size=size, local_rank=int(local), backend=str(dist.get_backend()))


def active(enabled: Optional[bool] = None) -> World:
    """The world a collective stage runs in: :func:`world` when ``enabled`` is None (auto) or
    True, :data:`SINGLE` when ``enabled`` is False (a rank working on its own)."""
    return SINGLE if enabled is False else world()


def is_distributed() -> bool:
    """True when a process group of more than one process is initialized."""
    return _initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """True on rank 0, and in a process without a process group: the one that writes files,
    logs and shows progress."""
    return not _initialized() or dist.get_rank() == 0


def backend_for(device) -> str:
    """``"nccl"`` for a CUDA device, ``"gloo"`` otherwise (CPU)."""
    return "nccl" if device is not None and torch.device(device).type == "cuda" else "gloo"


def comm_device() -> torch.device:
    """Where collective tensors live: the current CUDA device for NCCL, the CPU for gloo."""
    if _initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# joining and leaving


def under_torchrun() -> bool:
    """True in a worker started by torchrun (torch elastic sets ``TORCHELASTIC_RESTART_COUNT``)."""
    return "TORCHELASTIC_RESTART_COUNT" in os.environ


_LOGGED: set = set()


def log_world() -> None:
    """Log one line (rank 0, logger ``gcnprune_fast``, INFO) with the world size and backend,
    once per process group."""
    w = world()
    if not w.distributed:
        return
    key = (w.size, w.backend, id(dist.group.WORLD))
    if key in _LOGGED:
        return
    _LOGGED.add(key)
    if w.main:
        logger.info("distributed: world size %d, backend %s", w.size, w.backend)


def init_from_env(device=None) -> Optional[str]:
    """Join the process group that torchrun describes in the environment (``WORLD_SIZE`` > 1,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``), with NCCL when ``device`` is a
    CUDA device and gloo otherwise, and log the world in one line.

    Returns the device this rank works on: ``cuda:LOCAL_RANK`` for ``"cuda"`` without an index
    (one GPU per process), else ``device`` unchanged. Without torchrun (``WORLD_SIZE`` unset or
    1) nothing is initialized and ``device`` is returned. ``GCNPRUNE_DIST_TIMEOUT`` (seconds,
    default 1800) bounds how long a collective waits for a rank that stopped answering.
    """
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 and not _initialized():
        return device
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(dev)!r} but no CUDA GPU is available")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        device = str(dev)
    if not _initialized():
        timeout = datetime.timedelta(
            seconds=float(os.environ.get("GCNPRUNE_DIST_TIMEOUT", "1800")))
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        store = _attempt_store(timeout)
        if store is not None:
            kwargs.update(store=store, rank=int(os.environ["RANK"]), world_size=size)
        dist.init_process_group(backend_for(dev), timeout=timeout, **kwargs)
    log_world()
    return device


def _attempt_store(timeout: datetime.timedelta):
    """Under torchrun: the rendezvous store with a prefix per restart attempt, or None (plain
    ``env://``). torchrun's static rendezvous (``--master-addr/--master-port``) keeps one store
    across ``--max-restarts`` restarts, so a restarted group could read the dead ranks' addresses
    (``Gloo connectFullMesh failed ... Connection refused``); the prefix keeps attempts apart."""
    if not under_torchrun() or "MASTER_ADDR" not in os.environ:
        return None
    try:
        from torch.distributed.rendezvous import _create_c10d_store
    except ImportError:  # a torch without the helper: plain env://
        return None
    store = _create_c10d_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                               int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), timeout)
    return dist.PrefixStore(f"gcnprune/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)


def shutdown(wait: bool = False) -> None:
    """Leave the process group (when one is initialized). ``wait``: first wait for every rank
    (a barrier), so that no rank tears its connections down while another still uses them; only
    on success (after a failure the others may never arrive)."""
    if _initialized():
        if wait and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def failure_hint(exc: BaseException) -> Optional[str]:
    """A one-line explanation when ``exc`` comes from a collective that lost a rank, else None."""
    if not _initialized():
        return None
    text = str(exc)
    lost = (isinstance(exc, getattr(dist, "DistBackendError", ())) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                            "NCCL", "Gloo", "gloo", "timed out", "Timed out")))
    if not lost:
        return None
    return (f"rank {dist.get_rank()} of {dist.get_world_size()} lost contact with another rank "
            f"(it died, was killed or stopped answering); the job stops here. Rerun the same "
            f"command with --resume (torchrun --max-restarts N does it by itself) to continue from "
            f"the last checkpoint")


# ----------------------------------------------------------------------------------------------
# collectives (identity without a process group)


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """A reduced copy of ``t`` (``op``: sum, max or min), on ``t``'s device and dtype; ``t``
    itself when not distributed."""
    if not is_distributed():
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    buf = t.detach().to(comm_device(), copy=True)
    dist.all_reduce(buf, op=ops[op])
    return buf.to(t.device)


def all_reduce_numbers(values: Sequence[float], op: str = "sum") -> List[float]:
    """``values`` reduced over the ranks, as float64 (integer counts below 2**53 stay exact)."""
    if not is_distributed():
        return [float(v) for v in values]
    return all_reduce(torch.tensor([float(v) for v in values], dtype=torch.float64), op).tolist()


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank; ``obj`` when not distributed."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_rows(t: torch.Tensor, counts: Sequence[int]) -> List[torch.Tensor]:
    """Every rank's ``t`` ([counts[r], ...], same trailing shape and dtype on every rank) in rank
    order, gathered as tensors (padded to the longest, then cut): no pickling of large data."""
    if not is_distributed():
        return [t]
    longest = max(int(c) for c in counts)
    dev = comm_device()
    buf = torch.zeros((longest,) + tuple(t.shape[1:]), dtype=t.dtype, device=dev)
    buf[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(buf) for _ in counts]
    dist.all_gather(parts, buf)
    return [p[: int(c)].to(t.device) for p, c in zip(parts, counts)]


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def map_split(fn: Callable[[Any], Any], items: Sequence[Any], *,
              enabled: Optional[bool] = None) -> List[Any]:
    """``[fn(x) for x in items]`` with the items split across the ranks: rank r computes items
    r, r+N, r+2N, ... and the results (picklable) are all-gathered, so every rank returns the whole
    list in order. Without a process group it is exactly the list comprehension (same calls, same
    order). An exception on one rank is raised on every rank (no rank is left waiting)."""
    w = active(enabled)
    if not w.distributed:
        return [fn(x) for x in items]
    mine, error = {}, None
    try:
        for i in range(w.rank, len(items), w.size):
            mine[i] = fn(items[i])
    except Exception as e:  # raised below, on every rank
        error = e
    parts = all_gather_object((mine, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    for rank, (_, message) in enumerate(parts):
        if message is not None:
            raise RuntimeError(f"rank {rank} failed while scoring: {message}")
    out: List[Any] = [None] * len(items)
    for part, _ in parts:
        for i, v in part.items():
            out[i] = v
    return out


def average_(tensors: Sequence[torch.Tensor]) -> None:
    """Replace every floating-point tensor of ``tensors`` (in place) by its mean over the ranks:
    one all-reduce per dtype of the flattened tensors, then a division by the world size. Integer
    tensors are left alone. A no-op when not distributed."""
    if not is_distributed():
        return
    size = dist.get_world_size()
    by_dtype: dict = {}
    for t in tensors:
        if t.is_floating_point():
            by_dtype.setdefault(t.dtype, []).append(t)
    dev = comm_device()
    for dtype in sorted(by_dtype, key=str):  # the same order on every rank
        group = by_dtype[dtype]
        flat = torch.cat([t.detach().reshape(-1).to(dev) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(size)
        offset = 0
        for t in group:
            n = t.numel()
            with torch.no_grad():
                t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


def average_gradients(parameters: Iterable[torch.Tensor], *values: float) -> List[float]:
    """Average the ``.grad`` of ``parameters`` over the ranks, in place (parameters without a
    gradient are skipped: the set with one must be the same on every rank, as it is when every
    rank runs the same sub-network), and return ``values`` (e.g. the loss) averaged the same way
    (float64). Data-parallel training: N ranks with per-rank batches of B that each take a
    mean-reduced loss get the gradient of one process on the N*B samples. Without a process group
    the gradients are untouched and ``values`` come back as floats."""
    if not is_distributed():
        return [float(v) for v in values]
    grads = [p.grad for p in parameters if p.grad is not None]
    extra = torch.tensor([float(v) for v in values], dtype=torch.float64)
    average_(grads + [extra])
    return extra.tolist()


def inner_loader(loader):
    """The loader a :func:`shard` view iterates in full (on every rank), else ``loader`` itself:
    where its own ``generator`` is (a rebuilt DataLoader keeps the generator)."""
    return loader.loader if isinstance(loader, _StridedIterable) else loader


def broadcast_if_different(*tensors: torch.Tensor) -> tuple:
    """``tensors`` when they are identical on every rank (compared by a digest); otherwise rank
    0's copies, broadcast to all with one logged warning (a loader whose order differs per rank,
    e.g. one sharded by the user). Keeps the search's reward set identical on every rank."""
    if not is_distributed():
        return tensors
    import hashlib

    h = hashlib.sha1()
    for t in tensors:
        c = t.detach().contiguous().cpu()
        h.update(str((tuple(c.shape), str(c.dtype))).encode())
        h.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    digests = all_gather_object(h.hexdigest())
    if len(set(digests)) == 1:
        return tensors
    if is_main():
        logger.warning("distributed: the ranks read different reward sets from the loader; using "
                       "rank 0's on every rank")
    return tuple(broadcast_object([t.detach().cpu() for t in tensors]))


# ----------------------------------------------------------------------------------------------
# data sharding


def is_sharded(loader) -> bool:
    """True for a loader already sharded per rank: a DataLoader whose sampler (or batch sampler's
    sampler) is a ``DistributedSampler``, or one returned by :func:`shard`."""
    from torch.utils.data.distributed import DistributedSampler

    if isinstance(loader, (_StridedIterable,)) or getattr(loader, "_gcnprune_sharded", False):
        return True
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    return (isinstance(sampler, DistributedSampler) or isinstance(batch_sampler, _StridedBatchSampler)
            or isinstance(getattr(batch_sampler, "sampler", None), DistributedSampler))


def global_batch_index(local_index: int, w: Optional[World] = None) -> int:
    """The index in the unsharded order of this rank's ``local_index``-th batch."""
    w = world() if w is None else w
    return int(local_index) * w.size + w.rank


def shard(loader, *, even: bool = False, enabled: Optional[bool] = None):
    """This rank's share of ``loader``: its batches ``rank, rank + N, ...`` (see the module
    docstring). ``even=True`` gives every rank the same number of batches, ``len(loader) // N``
    (the last ``len(loader) % N`` are dropped): what lock-step DDP training needs. Returns
    ``loader`` itself when not distributed or already sharded (:func:`is_sharded`)."""
    w = active(enabled)
    if not w.distributed or is_sharded(loader):
        return loader
    from torch.utils.data import DataLoader, IterableDataset

    if (type(loader) is DataLoader and loader.batch_sampler is not None
            and not isinstance(loader.dataset, IterableDataset)):
        kw = dict(num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                  pin_memory=loader.pin_memory, timeout=loader.timeout,
                  worker_init_fn=loader.worker_init_fn,
                  multiprocessing_context=loader.multiprocessing_context,
                  generator=loader.generator, prefetch_factor=loader.prefetch_factor,
                  persistent_workers=loader.persistent_workers,
                  pin_memory_device=loader.pin_memory_device)
        if hasattr(loader, "in_order"):
            kw["in_order"] = loader.in_order
        return DataLoader(loader.dataset,
                          batch_sampler=_StridedBatchSampler(loader.batch_sampler, w.rank, w.size,
                                                             even), **kw)
    return _StridedIterable(loader, w.rank, w.size, even)


def _shard_len(total: int, rank: int, size: int, even: bool) -> int:
    return total // size if even else max(0, (total - rank + size - 1) // size)


class _StridedBatchSampler:
    """Batches ``rank, rank + size, ...`` of a batch sampler (index lists only: the DataLoader
    loads just this rank's batches)."""

    def __init__(self, inner, rank: int, size: int, even: bool):
        self.inner, self.rank, self.size, self.even = inner, rank, size, even

    def __iter__(self):
        limit = len(self.inner) // self.size * self.size if self.even else None
        for i, batch in enumerate(self.inner):
            if limit is not None and i >= limit:
                break
            if i % self.size == self.rank:
                yield batch

    def __len__(self) -> int:
        return _shard_len(len(self.inner), self.rank, self.size, self.even)


class _StridedIterable:
    """Iterates ``loader`` and yields its batches ``rank, rank + size, ...`` (every rank reads
    the whole loader, so random draws made while loading stay in step across ranks)."""

    def __init__(self, loader: Iterable, rank: int, size: int, even: bool):
        self.loader, self.rank, self.size, self.even = loader, rank, size, even

    def __iter__(self):
        limit = len(self.loader) // self.size * self.size if self.even else None
        for i, batch in enumerate(self.loader):
            if limit is not None and i >= limit:
                break
            if i % self.size == self.rank:
                yield batch

    def __len__(self) -> int:
        return _shard_len(len(self.loader), self.rank, self.size, self.even)


# ----------------------------------------------------------------------------------------------
# files: rank 0 writes, atomically


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file and an atomic rename (a crash leaves
    the old file); only rank 0 writes."""
    if not is_main():
        return
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically; only rank 0 writes."""
    if not is_main():
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def all_reduce_checked(values: Sequence[float], error: Optional[BaseException],
                       what: str = "a collective stage") -> List[float]:
    """:func:`all_reduce_numbers` of ``values`` that also tells every rank whether one of them
    failed before the reduction: the failing rank re-raises ``error``, the others raise a
    RuntimeError naming it, so no rank is left waiting in a later collective."""
    if not is_distributed():
        if error is not None:
            raise error
        return [float(v) for v in values]
    out = all_reduce_numbers(list(values) + [0.0 if error is None else 1.0])
    if out[-1]:
        rank = dist.get_rank()
        first = all_reduce_numbers([rank if error is not None else dist.get_world_size()], "min")[0]
        if error is not None:
            raise error
        raise RuntimeError(f"{what} failed on rank {int(first)} (its error is in its log)")
    return out[:-1]
