"""What a pruning method gets to work with, and what it gives back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from gcnprune_fast.methods.allocation import Budget


@dataclass
class SearchContext:
    """Inputs shared by every method.

    space: the PruningSpace over an eval-mode copy of the user's model (on ``device``).
    budget: absolute cost limits. loader / val_loader: the user's data (``(x, y)`` batches).
    allocation: "global" | "uniform" (baselines). round_to: width granularity.
    options: method-specific keyword options (validated by the method).
    """

    space: Any
    budget: Budget
    loader: Any
    device: torch.device
    seed: int = 0
    val_loader: Any = None
    allocation: str = "global"
    round_to: int = 1
    progress: bool = False
    checkpoint_dir: Optional[str] = None
    resume: bool = False
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodResult:
    """Keep-masks (bool [C_g] per group) plus method facts for the report (e.g. ``episodes``,
    ``reward_curve``)."""

    masks: List[torch.Tensor]
    info: Dict[str, Any] = field(default_factory=dict)
