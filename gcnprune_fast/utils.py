"""Small helpers shared by several layers (one place each)."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["model_device", "format_duration"]


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


def format_duration(seconds: float) -> str:
    """A duration for a log line: ``"45 s"``, ``"3.9 min"``, ``"1.2 h"``."""
    seconds = max(float(seconds), 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
