"""Small helpers shared by several layers (one place each)."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["model_device"]


def model_device(model: nn.Module, device=None) -> torch.device:
    """``device`` when given, else the device of the model's first parameter (or buffer), else
    the CPU."""
    if device is not None:
        return torch.device(device)
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
