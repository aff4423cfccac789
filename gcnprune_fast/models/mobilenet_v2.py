"""MobileNetV2 (Sandler et al. 2018), CIFAR variant.

Same inverted-residual stages as the ImageNet model (t, c, n, s): (1,16,1,1), (6,24,2,1),
(6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1), then a 1x1 conv to 1280, global
average pooling and a linear classifier. For 32x32 inputs the stem conv has stride 1 and the second
stage (24 channels) stride 1 instead of 2 (as in the widely used CIFAR port), so the total stride is
8 and the last feature map is 4x4.
"""
import torch
import torch.nn as nn

from gcnprune_fast.models._init import init_weights

# (expansion t, out channels c, repeats n, first stride s)
CIFAR_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1)]


def _conv_bn_relu6(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t == 1), 3x3 depthwise, 1x1 linear projection; identity residual
    when stride is 1 and the width is unchanged. Output ``[N, c_out, H/stride, W/stride]``."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = c_in * expand_ratio
        self.use_residual = stride == 1 and c_in == c_out
        layers = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(c_in, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for CIFAR. Input ``[N, in_channels, H, W]`` (H, W >= 8), output
    ``[N, num_classes]``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                 cfg=CIFAR_CFG, last_channels: int = 1280):
        super().__init__()
        c_in = int(32 * width_mult)
        layers = [_conv_bn_relu6(in_channels, c_in, 3, stride=1)]
        for t, c, n, s in cfg:
            c_out = int(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        self.last_channels = int(last_channels * max(1.0, width_mult))
        layers.append(_conv_bn_relu6(c_in, self.last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(self.last_channels, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(self.dropout(x))


def mobilenet_v2(num_classes: int = 10, in_channels: int = 3) -> CifarMobileNetV2:
    """MobileNetV2 (width 1.0) for CIFAR (2.2M params, 93M MACs at 32x32)."""
    return CifarMobileNetV2(num_classes=num_classes, in_channels=in_channels)
