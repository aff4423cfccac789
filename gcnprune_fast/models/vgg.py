"""VGG-16 with batch norm, CIFAR variant: 13 conv3x3-BN-ReLU layers, 5 max-pools, a linear head.

Widths 64,64,M,128,128,M,256x3,M,512x3,M,512x3,M (M = 2x2 max-pool). After the convs comes adaptive
average pooling to 1x1 (so inputs other than 32x32 work; at 32x32 the map is already 1x1) and
``Linear(512, num_classes)``, as in the common CIFAR VGG (e.g. the network-slimming code).
"""
import torch
import torch.nn as nn

from gcnprune_fast.models._init import init_weights

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class CifarVGG(nn.Module):
    """VGG with BN for CIFAR. Input ``[N, in_channels, H, W]`` (H, W >= 8; pools that would shrink
    the map below 1x1 are skipped by ceil mode), output ``[N, num_classes]``."""

    def __init__(self, cfg=VGG16_CFG, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers = []
        c_in = in_channels
        for v in cfg:
            if v == "M":
                # ceil_mode keeps a 1x1 map at 1x1, so inputs down to 8x8 work.
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1, bias=False), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    """VGG-16-BN for CIFAR (14.7M params, 314M MACs at 32x32)."""
    return CifarVGG(VGG16_CFG, num_classes=num_classes, in_channels=in_channels)
