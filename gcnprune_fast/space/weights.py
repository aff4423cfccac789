"""Per-group weight statistics of the user's model: producer filters and BN scales, rows in group
channel order."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from gcnprune_fast.space._dependency import RawGroup

_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def producer_weights(model: nn.Module, raw: RawGroup) -> List[torch.Tensor]:
    """The group's producers' weights as [C, D_l] matrices, rows in group channel order."""
    modules = dict(model.named_modules())
    mats = []
    for d in raw.dims:
        if not (d.name and "out" in d.roles and d.kind in ("conv", "linear", "depthwise")):
            continue
        w = modules[d.name].weight.detach().cpu()
        if isinstance(modules[d.name], _CONV_TRANSPOSE):
            w = w.transpose(0, 1)
        w = w.reshape(w.shape[0], -1)
        rows = torch.zeros(raw.size, w.shape[1], dtype=w.dtype)
        # tied channels (RawGroup.root_classes): a group channel's filters summed
        rows.index_add_(0, torch.from_numpy(d.root), w[torch.from_numpy(d.local)].to(rows.device))
        mats.append(rows)
    return mats


def weight_stats(model: nn.Module, raws: Sequence[RawGroup]) -> List[Dict[str, Optional[torch.Tensor]]]:
    """Per group: 'l1' and 'l2' ([C] float32: the producing layers' filter L1 / L2 norms, summed
    over producers) and 'bn_gamma' ([C] |gamma| averaged over the group's BNs, or None)."""
    modules = dict(model.named_modules())
    stats = []
    for raw in raws:
        mats = producer_weights(model, raw)
        l1 = sum(m.abs().sum(1) for m in mats).float()
        l2 = sum(m.norm(dim=1) for m in mats).float()
        gam, n = torch.zeros(raw.size), 0
        for d in raw.dims:
            if d.kind == "bn" and d.name and getattr(modules[d.name], "weight", None) is not None:
                gam.index_add_(0, torch.from_numpy(d.root), modules[d.name].weight.detach().abs(
                ).float().cpu()[torch.from_numpy(d.local)])
                n += 1
        stats.append({"l1": l1, "l2": l2, "bn_gamma": gam / n if n else None})
    return stats


def filter_matrix(model: nn.Module, raw: RawGroup) -> torch.Tensor:
    """[C, D] the group's producing layers' filters (flattened), concatenated."""
    return torch.cat(producer_weights(model, raw), dim=1).float()
