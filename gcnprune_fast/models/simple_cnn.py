"""A small, fast demo CNN: 4 conv3x3-BN-ReLU blocks (32, 64, 128, 128 wide) with 2x2 max-pooling
after blocks 1-3, global average pooling and a linear head. About 0.24M params and 13M MACs at 32x32;
trains to high accuracy on the synthetic 32x32 dataset in about a minute on 2 CPU cores."""
import torch
import torch.nn as nn

from gcnprune_fast.models._init import init_weights

SIMPLE_CNN_WIDTHS = (32, 64, 128, 128)


class SimpleCNN(nn.Module):
    """Input ``[N, in_channels, H, W]`` (H, W >= 8), output ``[N, num_classes]``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths=SIMPLE_CNN_WIDTHS):
        super().__init__()
        layers = []
        c_in = in_channels
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def simple_cnn(num_classes: int = 10, in_channels: int = 3) -> SimpleCNN:
    """The demo CNN (widths 32-64-128-128)."""
    return SimpleCNN(num_classes=num_classes, in_channels=in_channels)
