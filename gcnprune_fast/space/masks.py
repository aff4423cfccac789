"""Keep-masks over channel groups and the rules their kept counts follow.

Masks are a list of bool tensors, one per group in ``space.groups`` order, True = keep. A group
of size C keeps ``k`` channels with ``min_keep <= k <= C`` and ``k`` a multiple of ``round_to``
unless ``k == C``; ``min_keep`` is ``min_channels`` rounded up to ``round_to``, capped at C.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch

from gcnprune_fast.space.groups import ChannelGroup


def min_keep(size: int, min_channels: int, round_to: int) -> int:
    """Fewest channels a group of ``size`` channels may keep."""
    need = max(min_channels, 1)
    need = int(math.ceil(need / round_to) * round_to)
    return min(need, size)


def valid_count(size: int, count: int, min_channels: int, round_to: int) -> bool:
    """True when keeping ``count`` of ``size`` channels honours min_channels and round_to."""
    return (min_keep(size, min_channels, round_to) <= count <= size
            and (count == size or count % round_to == 0))


def full_masks(groups: Sequence[ChannelGroup]) -> List[torch.Tensor]:
    """All-True masks (keep everything), one bool tensor [size] per group."""
    return [torch.ones(g.size, dtype=torch.bool) for g in groups]


def validate_masks(masks, groups: Sequence[ChannelGroup], min_channels: int, round_to: int,
                   allow_float: bool = False, check_counts: bool = True) -> List[torch.Tensor]:
    """Check masks (list of [size] tensors, one per group) and return them as a list.

    bool tensors are required (float tensors in [0, 1] too when ``allow_float``). With
    ``check_counts``, each group's kept count must honour ``min_keep`` and ``round_to``.
    Raises TypeError (type/dtype) or ValueError (length, shape, counts) naming the group."""
    num_groups = len(groups)
    if isinstance(masks, torch.Tensor) or not isinstance(masks, (list, tuple)):
        raise TypeError(f"masks must be a list of {num_groups} tensors (one per group), "
                        f"got {type(masks).__name__}")
    if len(masks) != num_groups:
        raise ValueError(f"expected {num_groups} masks (one per group), got {len(masks)}")
    out = []
    for g, (m, grp) in enumerate(zip(masks, groups)):
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"mask {g} ({grp.name}) must be a tensor, got {type(m).__name__}")
        if m.dtype != torch.bool and not (allow_float and m.is_floating_point()):
            raise TypeError(f"mask {g} ({grp.name}) must be a bool tensor"
                            f"{' or float tensor' if allow_float else ''}, got dtype {m.dtype}")
        if m.dim() != 1 or m.shape[0] != grp.size:
            raise ValueError(f"mask {g} ({grp.name}) must have shape ({grp.size},), got "
                             f"{tuple(m.shape)}")
        if check_counts and m.dtype == torch.bool:
            k = int(m.sum())
            least = min_keep(grp.size, min_channels, round_to)
            if k == 0:
                raise ValueError(f"mask {g} ({grp.name}) keeps zero channels; every group must "
                                 f"keep at least {least}")
            if not valid_count(grp.size, k, min_channels, round_to):
                raise ValueError(
                    f"mask {g} ({grp.name}) keeps {k} of {grp.size} channels; counts must be "
                    f">= {least} (min_channels={min_channels}) and a multiple "
                    f"of round_to={round_to} (or the whole group); see round_masks()")
        out.append(m)
    return out


def round_masks(masks, groups: Sequence[ChannelGroup], min_channels: int, round_to: int,
                scores=None) -> List[torch.Tensor]:
    """Masks adjusted to honour ``min_channels`` and ``round_to`` by keeping *more* channels
    (never fewer): the pruned channels with the highest ``scores`` (list of [size] tensors;
    default: lowest index first) are restored until the count is valid."""
    masks = validate_masks(masks, groups, min_channels, round_to, check_counts=False)
    out = []
    for g, m in enumerate(masks):
        m = m.clone()
        k, size = int(m.sum()), groups[g].size
        target = max(k, min_keep(size, min_channels, round_to))
        if target % round_to:
            target = min(size, int(math.ceil(target / round_to) * round_to))
        if target > k:
            pruned = torch.nonzero(~m).flatten()
            if scores is not None:
                s = torch.as_tensor(scores[g], dtype=torch.float64).flatten()[pruned]
                pruned = pruned[torch.argsort(s, descending=True, stable=True)]
            m[pruned[: target - k]] = True
        out.append(m)
    return out
