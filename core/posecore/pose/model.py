"""SimpleBaseline-style network: a ResNet backbone and a deconvolution head that outputs keypoint heatmaps."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from posecore.config import Key, Section


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34 block)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            _conv_bn(in_channels, out_channels, 3, stride),
            nn.ReLU(inplace=True),
            _conv_bn(out_channels, out_channels, 3, 1),
        )
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand to ``out_channels`` (4x the inner width), with a residual (ResNet-50 block)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        width = out_channels // 4
        self.residual = nn.Sequential(
            _conv_bn(in_channels, width, 1, 1),
            nn.ReLU(inplace=True),
            _conv_bn(width, width, 3, stride),
            nn.ReLU(inplace=True),
            _conv_bn(width, out_channels, 1, 1),
        )
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


_PRESETS = {
    "small": dict(
        block="basic", stem_channels=32, stem_stride=2, stage_channels=[32, 64, 128], stage_blocks=[1, 1, 1],
        deconv_channels=[64, 64],
    ),
    "resnet50": dict(
        block="bottleneck", stem_channels=64, stem_stride=4, stage_channels=[256, 512, 1024, 2048],
        stage_blocks=[3, 4, 6, 3], deconv_channels=[256, 256, 256],
    ),
}


class TopDownHeatmapNet(nn.Module):
    """Top-down pose network: image crops (N, 3, H, W) to keypoint heatmaps (N, K, h, w).

    A preset gives the architecture, and each list that is set replaces the preset's. "small" is the fast
    CPU default: a 3-stage ResNet-18-like backbone of widths 32-64-128 and two 64-channel deconvolutions,
    output stride 2 (a 48x64 input gives 24x32 heatmaps). "resnet50" is ResNet-50 with the SimpleBaseline
    head of three 256-channel deconvolutions, output stride 4, randomly initialised.

    The stem is a 3x3 stride-2 convolution ("small") or ResNet's 7x7 stride-2 convolution plus max-pooling
    ("resnet50"). Stages of residual blocks follow, the first at stride 1 and each later one halving the
    resolution; each 4x4 transposed convolution of the head doubles it again, and a 1x1 convolution gives the
    K heatmaps. ``output_stride`` is input size / heatmap size. The loss is the weighted mean squared error
    against the codec's ``heatmaps`` and ``weights`` (:func:`heatmap_loss`).
    """

    options = Section({
        "preset": Key(str, "small", "Backbone preset: `small` (fast on CPU) or `resnet50` (for GPUs).",
                      choices=tuple(_PRESETS)),
        "stage_channels": Key(list, None, "Channels of each backbone stage (overrides the preset).", item=int,
                              min=1),
        "stage_blocks": Key(list, None, "Residual blocks in each backbone stage (overrides the preset).", item=int,
                            min=1),
        "deconv_channels": Key(list, None, "Channels of each deconvolution layer of the head (overrides the "
                                           "preset).", item=int, min=1),
        "dropout": Key(float, 0.0, "Dropout before the head's final convolution.", min=0.0, max=0.99),
    }, "Top-down heatmap model: ResNet-style backbone and deconvolution head (SimpleBaseline).")

    def __init__(
        self,
        num_keypoints: int = 17,
        preset: str = "small",
        stage_channels: Sequence[int] | None = None,
        stage_blocks: Sequence[int] | None = None,
        deconv_channels: Sequence[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if preset not in _PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(_PRESETS)}")
        settings = dict(_PRESETS[preset])
        overrides = {"stage_channels": stage_channels, "stage_blocks": stage_blocks,
                     "deconv_channels": deconv_channels}
        settings.update({name: value for name, value in overrides.items() if value is not None})
        block, stem_channels, stem_stride = settings["block"], settings["stem_channels"], settings["stem_stride"]
        stage_channels, stage_blocks = settings["stage_channels"], settings["stage_blocks"]
        if len(stage_channels) != len(stage_blocks) or not stage_channels:
            raise ValueError(
                f"stage_channels {list(stage_channels)} and stage_blocks {list(stage_blocks)} "
                "must be non-empty and of the same length"
            )
        if stem_stride == 2:
            self.stem = nn.Sequential(_conv_bn(3, stem_channels, 3, 2), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                _conv_bn(3, stem_channels, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)
            )
        layers: list[nn.Module] = []
        channels = stem_channels
        for index, (out_channels, blocks) in enumerate(zip(stage_channels, stage_blocks)):
            for position in range(blocks):
                stride = 2 if index > 0 and position == 0 else 1
                layers.append(_BLOCKS[block](channels, out_channels, stride))
                channels = out_channels
        self.backbone = nn.Sequential(*layers)
        head: list[nn.Module] = []
        for out_channels in settings["deconv_channels"]:
            head += [
                nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            channels = out_channels
        if dropout > 0:
            head.append(nn.Dropout2d(dropout))
        self.head = nn.Sequential(*head)
        self.final = nn.Conv2d(channels, num_keypoints, 1)
        # Start from near-empty heatmaps, as SimpleBaseline does: a random start wastes early steps.
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)
        self.output_stride = stem_stride * 2 ** (len(stage_channels) - 1) / 2 ** len(settings["deconv_channels"])

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.final(self.head(self.backbone(self.stem(img))))

    def loss(self, output: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return heatmap_loss(output, batch["heatmaps"], batch["weights"])


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all heatmap pixels, each keypoint's error scaled by its weight (N, K)."""
    return ((pred - target) ** 2 * weights[:, :, None, None]).mean()


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return _conv_bn(in_channels, out_channels, 1, stride)
