"""U-Net with a ResNet-18-style encoder: the 2D Models Genesis / Semantic Genesis backbone.

The decoder upsamples with transposed convs (kernel 2, stride 2, channels kept) like the 3D U-Net, so both decoders are
the same dimension-generic module and a 2D level costs no more than its two convs suggest.
"""

from __future__ import annotations

import torch
from torch import nn

from .unet3d import UNetDecoder, check_input


class BasicBlock(nn.Module):
    """ResNet basic block: two conv 3 + batch norm, identity (or conv 1 + batch norm) shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output, spatial size divided by the stride."""
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class ResNetEncoder2D(nn.Module):
    """ResNet-18 without its classifier: stem (conv 7 stride 2, max-pool 3 stride 2) and four stages of two blocks."""

    divisor = 32

    def __init__(self, base_width: int = 64, in_channels: int = 1):
        super().__init__()
        w = base_width
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
        )
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = [w, w, 2 * w, 4 * w, 8 * w]
        self.stages = nn.ModuleList(
            nn.Sequential(
                BasicBlock(widths[i], widths[i + 1], 1 if i == 0 else 2), BasicBlock(widths[i + 1], widths[i + 1])
            )
            for i in range(4)
        )
        self.skip_channels = widths[:4]
        self.out_channels = 8 * w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(bottleneck (N, 8w, H/32, W/32), [stem (1/2), stage 1 (1/4), stage 2 (1/8), stage 3 (1/16)] features)."""
        check_input(x, 2, self.in_channels, self.divisor)
        x = self.stem(x)
        skips = [x]
        x = self.pool(x)
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips.pop(), skips


class Decoder2D(UNetDecoder):
    """Five x2 levels back to full size: skips of stage 3, 2, 1 and the stem, then one level without skip."""

    def __init__(self, base_width: int = 64, out_channels: int = 1, activation: str | None = "sigmoid"):
        w = base_width
        # The last level runs at full resolution, where half the channels keep the cost of large images down.
        levels = [(4 * w, 4 * w), (2 * w, 2 * w), (w, w), (w, w), (0, max(w // 2, 1))]
        super().__init__(2, 8 * w, levels, out_channels, activation)


class UNet2D(nn.Module):
    """U-Net with a ResNet-18-style encoder on (N, C, H, W) inputs, sizes divisible by 32."""

    def __init__(
        self, base_width: int = 64, in_channels: int = 1, out_channels: int = 1, activation: str | None = "sigmoid"
    ):
        super().__init__()
        self.encoder = ResNetEncoder2D(base_width, in_channels)
        self.decoder = Decoder2D(base_width, out_channels, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output (N, out_channels, H, W): probabilities with "sigmoid", logits with None."""
        return self.decoder(*self.encoder(x))
