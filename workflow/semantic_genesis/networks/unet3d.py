"""Models Genesis U-Net 3D, and the dimension-generic building blocks it shares with the 2D U-Net."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = ("sigmoid", None)


def layers(dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module], type[nn.Module]]:
    """(Conv, BatchNorm, MaxPool, ConvTranspose) classes for 2D or 3D inputs."""
    if dims == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ConvTranspose2d
    if dims == 3:
        return nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.ConvTranspose3d
    raise ValueError(f"dims must be 2 or 3, not {dims}")


def conv_bn_relu(dims: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv 3 (padding 1) + batch norm + ReLU."""
    conv, norm, _, _ = layers(dims)
    # No conv bias: the batch norm that follows subtracts it again.
    return nn.Sequential(
        conv(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels), nn.ReLU(inplace=True)
    )


def double_conv(dims: int, in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """Two (conv 3 + batch norm + ReLU) blocks: in -> mid -> out channels."""
    return nn.Sequential(conv_bn_relu(dims, in_channels, mid_channels), conv_bn_relu(dims, mid_channels, out_channels))


def check_input(x: torch.Tensor, dims: int, in_channels: int, divisor: int) -> None:
    """Raise a ValueError naming the shape unless x is (N, in_channels, *spatial), each spatial size divisible."""
    layout = "(N, C, D, H, W)" if dims == 3 else "(N, C, H, W)"
    if x.ndim != dims + 2 or x.shape[1] != in_channels:
        raise ValueError(f"expected a {layout} tensor with C = {in_channels}, got shape {tuple(x.shape)}")
    if any(size % divisor for size in x.shape[2:]):
        raise ValueError(f"spatial size {tuple(x.shape[2:])} of input {tuple(x.shape)} is not divisible by {divisor}")


class UpBlock(nn.Module):
    """Transposed conv 2 (stride 2, channels kept), concatenation of the skip, two conv blocks."""

    def __init__(self, dims: int, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        up = layers(dims)[3]
        self.up = up(in_channels, in_channels, 2, stride=2)
        self.convs = double_conv(dims, in_channels + skip_channels, out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """Upsampled features, twice the spatial size of x."""
        x = self.up(x)
        return self.convs(x if skip is None else torch.cat([x, skip], 1))


class UNetDecoder(nn.Module):
    """U-Net decoder: one UpBlock per level, then a conv 1 to out_channels and the selected activation."""

    def __init__(
        self,
        dims: int,
        in_channels: int,
        levels: Sequence[tuple[int, int]],
        out_channels: int = 1,
        activation: str | None = "sigmoid",
    ):
        """levels: (skip channels, output channels) per level, deepest first; levels without skip (0) come last."""
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        self.activation = activation
        self.skip_channels = [skip for skip, _ in reversed(levels) if skip]
        widths = [in_channels] + [width for _, width in levels]
        self.blocks = nn.ModuleList(UpBlock(dims, widths[i], skip, widths[i + 1]) for i, (skip, _) in enumerate(levels))
        self.out = layers(dims)[0](widths[-1], out_channels, 1)

    def forward(self, bottleneck: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Output map at input resolution; skips as the encoder returns them (shallowest first)."""
        if len(skips) != len(self.skip_channels):
            raise ValueError(f"expected {len(self.skip_channels)} skip feature maps, got {len(skips)}")
        deepest_first = list(reversed(skips)) + [None] * (len(self.blocks) - len(skips))
        x = bottleneck
        for block, skip in zip(self.blocks, deepest_first):
            x = block(x, skip)
        x = self.out(x)
        return torch.sigmoid(x) if self.activation == "sigmoid" else x


class Encoder3D(nn.Module):
    """Models Genesis encoder: three (double conv + max-pool 2) levels, then a double-conv bottleneck at 1/8 size."""

    divisor = 8

    def __init__(self, base_width: int = 32, in_channels: int = 1):
        super().__init__()
        w = base_width
        self.in_channels = in_channels
        # Level i: w*2**i -> w*2**i -> w*2**(i+1) channels (the first reads the input); level 3 is the bottleneck.
        self.down = nn.ModuleList(
            double_conv(3, in_channels if i == 0 else w * 2**i, w * 2**i, w * 2 ** (i + 1)) for i in range(3)
        )
        self.bottleneck = double_conv(3, 8 * w, 8 * w, 16 * w)
        self.pool = nn.MaxPool3d(2)
        self.skip_channels = [2 * w, 4 * w, 8 * w]
        self.out_channels = 16 * w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(bottleneck (N, 16w, D/8, H/8, W/8), pre-pool features of levels 1-3, shallowest first)."""
        check_input(x, 3, self.in_channels, self.divisor)
        skips = []
        for level in self.down:
            x = level(x)
            skips.append(x)
            x = self.pool(x)
        return self.bottleneck(x), skips


class Decoder3D(UNetDecoder):
    """Models Genesis decoder: 24w -> 8w -> 8w, 12w -> 4w -> 4w, 6w -> 2w -> 2w, then conv 1 and activation."""

    def __init__(self, base_width: int = 32, out_channels: int = 1, activation: str | None = "sigmoid"):
        w = base_width
        super().__init__(3, 16 * w, [(8 * w, 8 * w), (4 * w, 4 * w), (2 * w, 2 * w)], out_channels, activation)


class UNet3D(nn.Module):
    """Models Genesis U-Net 3D (19.07 M parameters at base_width 32) on (N, C, D, H, W) inputs, sizes divisible by 8."""

    def __init__(
        self, base_width: int = 32, in_channels: int = 1, out_channels: int = 1, activation: str | None = "sigmoid"
    ):
        super().__init__()
        self.encoder = Encoder3D(base_width, in_channels)
        self.decoder = Decoder3D(base_width, out_channels, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output (N, out_channels, D, H, W): probabilities with "sigmoid", logits with None."""
        return self.decoder(*self.encoder(x))
