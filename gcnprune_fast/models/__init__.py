"""Built-in models: CIFAR ResNet-20/32/56/110, VGG-16-BN, MobileNetV2 and a small demo CNN.

``get_model(name, num_classes=10, in_channels=3)`` builds one by name; ``MODEL_NAMES`` lists the
names. All models end in adaptive average pooling, so any input of at least 8x8 works (they are
designed for 32x32 CIFAR images; MNIST-style 1-channel inputs use ``in_channels=1``).
"""
from typing import Callable, Dict

import torch.nn as nn

from gcnprune_fast.models.cifar_resnet import CifarResNet, resnet20, resnet32, resnet56, resnet110
from gcnprune_fast.models.mobilenet_v2 import CifarMobileNetV2, mobilenet_v2
from gcnprune_fast.models.simple_cnn import SimpleCNN, simple_cnn
from gcnprune_fast.models.vgg import CifarVGG, vgg16_bn

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "vgg16_bn": vgg16_bn,
    "mobilenet_v2": mobilenet_v2,
    "simple_cnn": simple_cnn,
}

MODEL_NAMES = tuple(_BUILDERS)


def get_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a freshly initialised built-in model.

    Args:
        name: one of ``MODEL_NAMES``.
        num_classes: number of output logits (>= 1).
        in_channels: channels of the input images (3 for RGB, 1 for MNIST).

    Returns:
        an ``nn.Module`` mapping ``[N, in_channels, H, W]`` (H, W >= 8) to ``[N, num_classes]``.
    """
    if not isinstance(name, str) or name not in _BUILDERS:
        raise ValueError(f"unknown model name {name!r}; expected one of {list(MODEL_NAMES)}")
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    return _BUILDERS[name](num_classes=num_classes, in_channels=in_channels)


__all__ = [
    "MODEL_NAMES", "get_model", "CifarResNet", "CifarVGG", "CifarMobileNetV2", "SimpleCNN",
    "resnet20", "resnet32", "resnet56", "resnet110", "vgg16_bn", "mobilenet_v2", "simple_cnn",
]
