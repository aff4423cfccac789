"""What a pruning method gets to work with, and what it gives back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from gcnprune_fast.methods.allocation import Budget
from gcnprune_fast.space.reconstruct import RECONSTRUCT_IMAGES


@dataclass
class SearchContext:
    """Inputs shared by every method.

    space: the PruningSpace over an eval-mode copy of the user's model (on ``device``); its
        ``round_to`` / ``min_channels`` fix which widths are legal.
    budget: absolute cost limits. loader / val_loader: the user's data (``(x, y)`` batches);
        ``val_loader`` is selection data the search does not train on, or None (``prune`` passes
        None when the only data is the search loader).
    options: the method's options (an instance of its registered options dataclass; a dict of
        overrides is parsed by :func:`~gcnprune_fast.methods.run_method`).
    checkpoint_dir / resume: where a resumable method keeps its checkpoint, and whether to
        continue from it.
    reconstruct / reconstruct_images: ``prune()``'s least-squares refit of the result
        (``gcnprune_fast.space.reconstruct``; None = off); a method that builds candidates to
        choose among (re-ranking) builds them the same way.
    """

    space: Any
    budget: Budget
    loader: Any
    device: torch.device
    seed: int = 0
    val_loader: Any = None
    progress: bool = False
    checkpoint_dir: Optional[str] = None
    resume: bool = False
    options: Any = field(default_factory=dict)
    reconstruct: Optional[str] = None
    reconstruct_images: int = RECONSTRUCT_IMAGES


@dataclass
class MethodResult:
    """Keep-masks (bool [C_g] per group) plus method facts for the report (e.g. ``episodes``,
    ``reward_curve``)."""

    masks: List[torch.Tensor]
    info: Dict[str, Any] = field(default_factory=dict)
