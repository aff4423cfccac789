"""Streaming per-group channel features (method A, step 1).

One pass of data through the model: for every pruning group the representative activation
(``space.feature_hooks``; [N, C, ...] with C the group's width) is fed to an
``ops.GapAccumulator``, which keeps the global-average-pooled rows (up to a sample cap) and running
per-channel statistics. The result per group g:

- ``gap[g]``: F_g, float32 [C_g, B], the GAP value of every channel for each of B samples;
- ``mean / var / abs_mean / zero_frac / max``: float32 [C_g] each, over all N*H*W positions seen.

Where the space marks a group's feature module as pre-activation (the ReLU is applied functionally
after it, e.g. ``bn1`` inside a ResNet block), ReLU is applied before accumulation so the features
describe what the next layer actually receives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch

from gcnprune_fast import distributed, ops
from gcnprune_fast.data import iterate_inputs, split_batch
from gcnprune_fast.utils import model_device

__all__ = ["ChannelFeatures", "collect_features", "non_finite_activation_error"]

STAT_NAMES = ("mean", "var", "abs_mean", "zero_frac", "max")


@dataclass
class ChannelFeatures:
    """Per-group channel features; lists are indexed by group (``space.groups`` order)."""

    gap: List[torch.Tensor]        # [C_g, B] float32
    mean: List[torch.Tensor]       # [C_g]
    var: List[torch.Tensor]
    abs_mean: List[torch.Tensor]
    zero_frac: List[torch.Tensor]
    max: List[torch.Tensor]
    num_samples: int               # B

    def stats(self, g: int) -> torch.Tensor:
        """Activation statistics of group g stacked as float32 [C_g, 5] (STAT_NAMES order)."""
        return torch.stack([getattr(self, n)[g] for n in STAT_NAMES], dim=1)


def is_preactivation(group) -> bool:
    """Whether the group's representative activation still needs its ReLU: the space marks such
    groups with ``feature_activation == "pre-activation"`` (a functional ReLU follows the module)."""
    return getattr(group, "feature_activation", None) == "pre-activation"


@torch.no_grad()
def collect_features(space, loader, *, max_samples: int = 512, device=None,
                     progress: bool = False, loader_name: str = "loader") -> ChannelFeatures:
    """Stream up to ``max_samples`` images from ``loader`` through ``space.model`` (eval mode is
    the caller's job) and accumulate every group's GAP matrix and activation statistics.

    Raises:
        ValueError: empty loader, or a group whose activations contain NaN/inf (named).
        TypeError: a loader that does not yield (inputs, targets).
    """
    if int(max_samples) < 2:
        raise ValueError(f"max_samples must be >= 2, got {max_samples!r}")
    device = torch.device(device) if device is not None else model_device(space.model)
    accs = [ops.GapAccumulator(max_samples=max_samples) for _ in space.groups]
    relu = [is_preactivation(g) for g in space.groups]
    bad: List[int] = []

    def hook(g: int, act: torch.Tensor) -> None:
        if act.dim() < 2 or act.shape[1] != space.groups[g].size:
            raise RuntimeError(f"group {space.groups[g].name!r}: feature activation has shape "
                               f"{tuple(act.shape)}, expected [N, {space.groups[g].size}, ...]")
        act = act.detach()
        if relu[g]:
            act = torch.relu(act)
        if act.dim() == 2:  # a Linear feature: one "pixel" per channel
            act = act[:, :, None, None]
        elif act.dim() == 3:
            act = act[:, :, :, None]
        if not torch.isfinite(act).all():
            bad.append(g)
        accs[g].update(act.float())

    w = distributed.world()
    if w.distributed:  # each rank streams its shard; moments and rows are merged below
        seen, gap = _stream_sharded(space, loader, accs, hook, bad, max_samples, device,
                                    progress, loader_name, w)
    else:
        seen, gap = 0, None
        bar = _bar(progress, max_samples, "features")
        with space.feature_hooks(hook):
            for x, _ in iterate_inputs(loader, loader_name):
                x = x[: max_samples - seen]
                space.model(x.to(device))
                if bad:
                    raise non_finite_activation_error(space, bad[0])
                seen += x.shape[0]
                if bar is not None:
                    bar.update(x.shape[0])
                if seen >= max_samples:
                    break
        if bar is not None:
            bar.close()
    if seen < 2:
        raise ValueError(f"{loader_name} gave only {seen} sample(s); channel features need >= 2")
    results = [a.result() for a in accs]
    if gap is None:
        gap = [r.gap for r in results]
    return ChannelFeatures(
        gap=[g.t().contiguous().float().cpu() for g in gap],
        mean=[r.mean.float().cpu() for r in results],
        var=[r.var.float().cpu() for r in results],
        abs_mean=[r.abs_mean.float().cpu() for r in results],
        zero_frac=[r.zero_frac.float().cpu() for r in results],
        max=[r.max.float().cpu() for r in results],
        num_samples=int(gap[0].shape[0]) if gap else 0,
    )


def _stream_sharded(space, loader, accs, hook, bad: List[int], max_samples: int, device,
                    progress: bool, loader_name: str, w) -> Tuple[int, List[torch.Tensor]]:
    """The distributed pass of :func:`collect_features` (a collective; ``space.feature_hooks``
    must feed ``accs``): rank r forwards its batches r, r+N, ... of the loader. Each round the
    ranks exchange the sizes of their next batch, so every rank knows where its batch starts in
    the single-process order and truncates it at ``max_samples`` exactly as one process would.
    Afterwards the accumulators' moments are all-reduced (``GapAccumulator.all_reduce``) and the
    per-sample GAP rows are gathered and put back in that order. Returns (samples, gap rows per
    group [min(total, max_samples), C_g]) -- identical on every rank."""
    it = iter(distributed.shard(loader))
    spans: List[List[Tuple[int, int]]] = [[] for _ in range(w.size)]  # per rank: (start, rows)
    bar = _bar(progress and w.main, max_samples, "features")
    with space.feature_hooks(hook):
        base, local_rows = _sharded_rounds(space, it, accs, bad, max_samples, device, loader_name,
                                           w, spans, bar)
    if bar is not None:
        bar.close()
    for acc, grp in zip(accs, space.groups):
        acc.all_reduce(num_channels=grp.size)
    # per-sample rows: gathered as one [rows, sum C_g] tensor per rank, then put in order
    widths = [grp.size for grp in space.groups]
    local = torch.cat([acc.result().gap.to("cpu", torch.float64) for acc in accs], dim=1)
    counts = [sum(n for _, n in spans[r]) for r in range(w.size)]
    parts = distributed.all_gather_rows(local[:local_rows], counts)
    total = min(base, max_samples)
    rows = torch.empty(total, sum(widths), dtype=torch.float64)
    for r, part in enumerate(parts):
        pos = 0
        for start, n in spans[r]:
            rows[start:start + n] = part[pos:pos + n]
            pos += n
    return total, list(torch.split(rows.float(), widths, dim=1))


def _sharded_rounds(space, it, accs, bad, max_samples, device, loader_name, w, spans, bar):
    """The rounds of :func:`_stream_sharded`: returns (samples streamed by all ranks, rows
    forwarded by this rank); fills ``spans``."""
    base, local_rows = 0, 0
    while base < max_samples:
        batch = next(it, None)
        x = None if batch is None else split_batch(batch, loader_name)[0]
        sizes = distributed.all_gather_object(-1 if x is None else int(x.shape[0]))
        if all(n < 0 for n in sizes):
            if base == 0:
                raise ValueError(f"{loader_name} is empty: it yielded no batches")
            break
        starts = [base + sum(max(n, 0) for n in sizes[:r]) for r in range(w.size)]
        for r, (start, n) in enumerate(zip(starts, sizes)):
            keep = min(max(n, 0), max(max_samples - start, 0))
            if keep > 0:
                spans[r].append((start, keep))
        mine = min(max(sizes[w.rank], 0), max(max_samples - starts[w.rank], 0))
        if mine > 0:
            space.model(x[:mine].to(device))
            local_rows += mine
        # every rank raises on NaN/inf seen by any rank (none is left waiting in a collective)
        first_bad = distributed.all_reduce_numbers([bad[0] if bad else len(accs)], "min")[0]
        if first_bad < len(accs):
            raise non_finite_activation_error(space, int(first_bad))
        grown = min(base + sum(max(n, 0) for n in sizes), max_samples) - base
        base += grown
        if bar is not None:
            bar.update(grown)
    return base, local_rows


def non_finite_activation_error(space, g: int) -> ValueError:
    """The error for NaN/inf activations in group ``g`` (names the group and its feature module)."""
    grp = space.groups[g]
    return ValueError(f"non-finite (NaN/inf) activations in group {g} ({grp.name!r}, feature "
                      f"module {getattr(grp, 'feature_module', '?')!r}); check the model's weights "
                      f"and the input data")


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="img", leave=False)
