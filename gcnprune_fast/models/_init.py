"""The weight initialisation shared by the built-in models."""
from typing import Optional

import torch.nn as nn


def init_weights(model: nn.Module, linear_std: Optional[float] = None) -> None:
    """He (fan_out, ReLU) init for every Conv2d; Linear layers get N(0, linear_std) weights and
    zero bias when ``linear_std`` is given, else keep PyTorch's default. BatchNorm keeps its
    default (weight 1, bias 0)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)
