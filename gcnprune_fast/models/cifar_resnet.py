"""ResNet for CIFAR (He et al. 2016, section 4.2): 3 stages of n basic blocks, widths 16-32-64.

Depth = 6n + 2: ResNet-20 (n=3), -32 (n=5), -56 (n=9), -110 (n=18).

Shortcut choice: the paper's CIFAR models use option A (zero-padded identity, no parameters) when
the width doubles. We use option B instead (a 1x1 strided conv + BN projection) for the three
downsampling shortcuts. Reason: with option A the padded zero channels tie the block output to a
fixed channel layout that is not a plain conv/BN dimension, so every stage's residual channels could
not be pruned cleanly (surgery would need a custom pad op). With option B every channel dimension
is produced by a conv followed by BN, so every dimension, including the residual streams, is
prunable with ordinary slicing. The cost is 2 small projections (~0.01M params for ResNet-20).

ReLUs are separate (not in-place) modules so that hooks can read post-activation features.
"""
from typing import List

import torch
import torch.nn as nn

from gcnprune_fast.models._init import init_weights


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, + shortcut, ReLU. Output: [N, planes, H/stride, W/stride]."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet: conv3x3(16)-BN-ReLU, stages of ``num_blocks`` BasicBlocks (16, 32, 64 wide,
    strides 1, 2, 2), global average pooling, ``Linear(64, num_classes)``.

    Input ``[N, in_channels, H, W]`` (32x32 for CIFAR, H, W >= 8); output ``[N, num_classes]``.
    """

    def __init__(self, num_blocks: List[int], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights(self)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(self.avgpool(out), 1)
        return self.fc(out)


def _resnet(n: int, num_classes: int, in_channels: int) -> CifarResNet:
    return CifarResNet([n, n, n], num_classes=num_classes, in_channels=in_channels)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 for CIFAR (0.27M params, 41M MACs at 32x32)."""
    return _resnet(3, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 for CIFAR."""
    return _resnet(5, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 for CIFAR (0.86M params, 127M MACs at 32x32)."""
    return _resnet(9, num_classes, in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-110 for CIFAR."""
    return _resnet(18, num_classes, in_channels)
