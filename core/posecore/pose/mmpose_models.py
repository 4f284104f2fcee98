"""MMPose's top-down networks, with MMPose's parameter names: SimpleBaseline (ResNet), HRNet and RTMPose.

``TopdownPoseEstimator`` is MMPose's model of that name with a ``ResNet``, ``HRNet`` or ``CSPNeXt`` backbone and
a ``HeatmapHead`` or ``RTMCCHead`` (:mod:`posecore.pose.rtmpose`); its ``state_dict`` keys and shapes are
MMPose's (``backbone.*``, ``head.*``), so the ``state_dict`` of an MMPose checkpoint loads into it as it is
(``model.init_weights`` or ``load_from``), and the same weights give the same outputs. Without pretrained weights,
each part starts as MMPose initialises it.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from posecore.config import Key, Section, Variants, validate
from posecore.errors import ConfigError
from posecore.pose.rtmpose import CSPNeXt, RTMCCHead

_INIT_FROM = Key(str, None, "Pretrained weights for the backbone alone, as MMPose's `init_cfg = dict(type="
                            "'Pretrained', checkpoint=...)`: a file, an http(s) URL or an MMEngine name such as "
                            "`torchvision://resnet50` (see `posecore.checkpoint.init_from`); keys that do not fit "
                            "are reported. Unset: MMPose's random initialisation.")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a residual (ResNet-18/34, HRNet's branches)."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 to a quarter of ``out_channels``, 3x3 (with the stride, "pytorch" style), 1x1 back, and a residual."""

    expansion = 4

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        width = out_channels // self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


_RESNET_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
                  101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}


class ResNet(nn.Module):
    """MMPose's ``ResNet`` as its top-down configs use it (torchvision's layout and names): a 7x7 stride-2
    convolution and max-pooling, then four stages of residual blocks, the last three halving the resolution.
    ``forward`` gives the last stage's features (output stride 32, ``out_channels`` channels)."""

    options = Section({
        "depth": Key(int, 50, "ResNet depth (MMPose's `depth`).", choices=tuple(_RESNET_DEPTHS)),
    }, "MMPose's `ResNet` (torchvision's layout): output stride 32, 2048 channels from depth 50 on, else 512.")

    def __init__(self, depth: int = 50) -> None:
        super().__init__()
        block, counts = _RESNET_DEPTHS[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = 64
        for index, count in enumerate(counts):
            out_channels = 64 * 2 ** index * block.expansion
            layer = [block(channels, out_channels, 2 if index else 1)]
            layer += [block(out_channels, out_channels) for _ in range(count - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*layer))
            channels = out_channels
        self.out_channels = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (BasicBlock, Bottleneck)):
                # MMPose's zero_init_residual: each block starts as the identity.
                nn.init.zeros_((module.bn3 if isinstance(module, Bottleneck) else module.bn2).weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


_BLOCKS = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}
_STAGES = ("stage1", "stage2", "stage3", "stage4")


def _hrnet_arch(width: int) -> dict[str, dict[str, Any]]:
    """The published HRNet-W<width> (MMPose's ``extra``): a bottleneck stage, then 2, 3, 4 branches of basic blocks
    whose channels double from ``width``."""
    stage1 = dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=[4], num_channels=[64])
    return {"stage1": stage1, **{
        f"stage{branches}": dict(num_modules=modules, num_branches=branches, block="BASIC", num_blocks=[4] * branches,
                                 num_channels=[width * 2 ** i for i in range(branches)])
        for branches, modules in ((2, 1), (3, 4), (4, 3))}}


_HRNET_ARCHS = {f"w{width}": _hrnet_arch(width) for width in (18, 32, 48)}


class HRModule(nn.Module):
    """One multi-resolution module: a sequence of blocks per branch, then every output branch sums all branches,
    brought to its resolution and channels (1x1 convolution and nearest upsampling from lower resolutions,
    3x3 stride-2 convolutions from higher ones). ``multiscale``: output all branches, else only the first."""

    def __init__(self, block: type[nn.Module], num_blocks: Sequence[int], channels: Sequence[int],
                 multiscale: bool) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*[block(width, width) for _ in range(count)])
                                      for count, width in zip(num_blocks, channels))
        self.fuse_layers = None
        if len(channels) > 1:
            self.fuse_layers = nn.ModuleList(nn.ModuleList(_fuse(channels, j, i) for j in range(len(channels)))
                                             for i in range(len(channels) if multiscale else 1))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [branch(part) for branch, part in zip(self.branches, x)]
        if self.fuse_layers is None:
            return x
        out = []
        for i, fuse in enumerate(self.fuse_layers):
            total = x[0] if i == 0 else fuse[0](x[0])
            for j in range(1, len(x)):
                total = total + (x[j] if i == j else fuse[j](x[j]))
            out.append(self.relu(total))
        return out


def _fuse(channels: Sequence[int], source: int, target: int) -> nn.Module | None:
    """Branch ``source`` brought to branch ``target`` (None: the same branch)."""
    if source == target:
        return None
    if source > target:
        return nn.Sequential(nn.Conv2d(channels[source], channels[target], 1, bias=False),
                             nn.BatchNorm2d(channels[target]), nn.Upsample(scale_factor=2 ** (source - target)))
    steps = []
    for step in range(target - source):
        last = step == target - source - 1
        width = channels[target] if last else channels[source]
        layers = [nn.Conv2d(channels[source], width, 3, 2, 1, bias=False), nn.BatchNorm2d(width)]
        steps.append(nn.Sequential(*layers) if last else nn.Sequential(*layers, nn.ReLU(inplace=True)))
    return nn.Sequential(*steps)


def _transition(before: Sequence[int], after: Sequence[int]) -> nn.ModuleList:
    """From one stage's branches to the next's: a 3x3 convolution where a branch changes width (None where it
    keeps it), and 3x3 stride-2 convolutions from the lowest-resolution branch for each new one."""
    layers: list[nn.Module | None] = []
    for i, width in enumerate(after):
        if i < len(before):
            layers.append(None if width == before[i] else _conv_bn_relu(before[i], width, 1))
        else:
            steps = i + 1 - len(before)
            layers.append(nn.Sequential(*[_conv_bn_relu(before[-1], width if k == steps - 1 else before[-1], 2)
                                          for k in range(steps)]))
    return nn.ModuleList(layers)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


_STAGE_OPTIONS = Section({
    "num_modules": Key(int, None, "Multi-resolution modules in the stage.", min=1),
    "num_branches": Key(int, None, "Parallel branches (resolutions); stage 1 has one.", min=1),
    "block": Key(str, None, "Residual block of the branches.", choices=tuple(_BLOCKS)),
    "num_blocks": Key(list, None, "Blocks of each branch, one per branch.", item=int, min=1),
    "num_channels": Key(list, None, "Width of each branch (times 4 for `BOTTLENECK`), one per branch.", item=int,
                        min=1),
}, "Each key set replaces the `arch`'s.")


class HRNet(nn.Module):
    """MMPose's ``HRNet``: two 3x3 stride-2 convolutions, a bottleneck stage, then stages of parallel branches at
    1/4, 1/8, 1/16 and 1/32 of the input resolution that exchange information in every module. ``forward`` gives
    the highest-resolution branch (output stride 4, ``out_channels`` channels)."""

    options = Section({
        "arch": Key(str, "w32", "A published HRNet: `w18`, `w32` or `w48` (branch widths 18/32/48 doubling per "
                                "branch; 1, 1, 4 and 3 modules in the four stages, 4 blocks per branch), as "
                                "MMPose's `extra` of `td-hm_hrnet-w32`/`-w48` sets them. `extra` changes it.",
                    choices=tuple(_HRNET_ARCHS)),
        "extra": Section({stage: _STAGE_OPTIONS for stage in _STAGES},
                         "MMPose's `extra`: the structure of each stage (`[model.backbone.extra.stage4]` ...); "
                         "each key set replaces the `arch`'s."),
    }, "MMPose's `HRNet`: output stride 4, the first branch's width (32 for `w32`). The head needs no "
       "deconvolutions: `[model.head] deconv_out_channels = []`.")

    def __init__(self, arch: str = "w32", extra: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__()
        settings = {stage: {**_HRNET_ARCHS[arch][stage], **(extra or {}).get(stage, {})} for stage in _STAGES}
        for stage, stage_settings in settings.items():
            _check_stage(stage, stage_settings)
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        first = settings["stage1"]
        block = _BLOCKS[first["block"]]
        width = first["num_channels"][0] * block.expansion
        self.layer1 = nn.Sequential(*[block(64 if i == 0 else width, width) for i in range(first["num_blocks"][0])])
        channels = [width]
        for index in (2, 3, 4):
            stage = settings[f"stage{index}"]
            block = _BLOCKS[stage["block"]]
            after = [n * block.expansion for n in stage["num_channels"]]
            self.add_module(f"transition{index - 1}", _transition(channels, after))
            modules = stage["num_modules"]
            self.add_module(f"stage{index}", nn.Sequential(*[
                HRModule(block, stage["num_blocks"], after, multiscale=index < 4 or m < modules - 1)
                for m in range(modules)]))
            channels = after
        self.out_channels = channels[0]
        _normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        branches = [self.layer1(x)]
        for transition, stage in ((self.transition1, self.stage2), (self.transition2, self.stage3),
                                  (self.transition3, self.stage4)):
            # As MMPose does: a branch that a transition changes (or creates) starts from the last branch.
            branches = stage([branches[i] if layer is None else layer(branches[-1])
                              for i, layer in enumerate(transition)])
        return branches[0]


def _check_stage(stage: str, settings: Mapping[str, Any]) -> None:
    branches = settings["num_branches"]
    if len(settings["num_blocks"]) != branches or len(settings["num_channels"]) != branches:
        raise ConfigError(f"model.backbone.extra.{stage}: num_branches is {branches} but num_blocks has "
                          f"{len(settings['num_blocks'])} items and num_channels {len(settings['num_channels'])}; "
                          f"give one per branch")
    if stage == "stage1" and branches != 1:
        raise ConfigError(f"model.backbone.extra.stage1.num_branches is {branches}; stage 1 has one branch")


class KeypointMSELoss(nn.Module):
    """MMPose's ``KeypointMSELoss``: the mean squared error over all heatmap pixels, times ``loss_weight``."""

    options = Section({
        "use_target_weight": Key(bool, True, "Scale each keypoint's error by its target weight (0 for keypoints "
                                             "without a label); false: every keypoint counts. (MMPose 1.x's "
                                             "HeatmapHead applies the weights whatever this says; its configs all "
                                             "set true.)"),
        "skip_empty_channel": Key(bool, False, "Leave out the heatmaps whose target is all zeros."),
        "loss_weight": Key(float, 1.0, "Factor on the loss.", min=0),
    }, "MMPose's `KeypointMSELoss`.")

    def __init__(self, use_target_weight: bool = True, skip_empty_channel: bool = False,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.use_target_weight = use_target_weight
        self.skip_empty_channel = skip_empty_channel
        self.loss_weight = loss_weight

    def forward(self, output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The loss of heatmaps ``output`` against ``target`` (N, K, h, w) with keypoint ``weights`` (N, K)."""
        error = (output - target) ** 2
        if self.use_target_weight:
            error = error * weights[:, :, None, None]
        if self.skip_empty_channel:
            error = error * (target != 0).flatten(2).any(dim=2)[:, :, None, None]
        return error.mean() * self.loss_weight


class HeatmapHead(nn.Module):
    """MMPose's ``HeatmapHead`` (SimpleBaseline's): transposed convolutions that each double the resolution,
    optional convolutions, then a convolution to one heatmap per keypoint; each of the first two kinds is followed
    by BatchNorm and ReLU."""

    options = Section({
        "deconv_out_channels": Key(list, [256, 256, 256], "Channels of each stride-2 transposed convolution "
                                                          "(`[]`: none, as for HRNet).", item=int, min=1),
        "deconv_kernel_sizes": Key(list, [4, 4, 4], "Kernel of each transposed convolution: 2, 3 or 4 (read only "
                                                    "when there are any).", item=int, min=2, max=4),
        "conv_out_channels": Key(list, [], "Channels of each convolution after them.", item=int, min=1),
        "conv_kernel_sizes": Key(list, [], "Kernel of each of those convolutions (odd: same size out).", item=int,
                                 min=1),
        "final_layer": Section({
            "kernel_size": Key(int, 1, "Kernel of the final convolution.", min=1),
            "padding": Key(int, 0, "Its padding (`kernel_size = 3` needs 1 to keep the heatmap size).", min=0),
        }, "MMPose's `final_layer`: the convolution to the heatmaps, one per keypoint (MMPose's `out_channels`)."),
        "loss": Variants({"KeypointMSELoss": KeypointMSELoss.options}, "KeypointMSELoss", "MMPose's head `loss`."),
    }, "MMPose's `HeatmapHead`; its `in_channels` are the backbone's.")

    def __init__(self, in_channels: int, out_channels: int, deconv_out_channels: Sequence[int],
                 deconv_kernel_sizes: Sequence[int], conv_out_channels: Sequence[int], conv_kernel_sizes: Sequence[int],
                 final_layer: Mapping[str, int], loss: Mapping[str, Any]) -> None:
        super().__init__()
        for kind, kernels in (("deconv", deconv_kernel_sizes), ("conv", conv_kernel_sizes)):
            widths = deconv_out_channels if kind == "deconv" else conv_out_channels
            if widths and len(kernels) != len(widths):
                raise ConfigError(f"model.head.{kind}_kernel_sizes {list(kernels)} needs one kernel size for each of "
                                  f"model.head.{kind}_out_channels {list(widths)}")
        self.deconv_layers: nn.Module = nn.Identity()
        if deconv_out_channels:
            layers: list[nn.Module] = []
            for width, kernel in zip(deconv_out_channels, deconv_kernel_sizes):
                # MMPose's paddings: each kernel exactly doubles the size.
                padding, output_padding = {4: (1, 0), 3: (1, 1), 2: (0, 0)}[kernel]
                layers += [nn.ConvTranspose2d(in_channels, width, kernel, 2, padding, output_padding, bias=False),
                           nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                in_channels = width
            self.deconv_layers = nn.Sequential(*layers)
        self.conv_layers: nn.Module = nn.Identity()
        if conv_out_channels:
            layers = []
            for width, kernel in zip(conv_out_channels, conv_kernel_sizes):
                layers += [nn.Conv2d(in_channels, width, kernel, 1, (kernel - 1) // 2), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                in_channels = width
            self.conv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(in_channels, out_channels, final_layer["kernel_size"],
                                     padding=final_layer["padding"])
        self.loss_module = KeypointMSELoss(**{k: v for k, v in loss.items() if k != "type"})
        _normal_init(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.conv_layers(self.deconv_layers(features)))

    def loss(self, output: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss of heatmaps ``output`` against the codec's ``heatmaps`` and ``weights`` in ``batch``."""
        return self.loss_module(output, batch["heatmaps"], batch["weights"])


def _normal_init(module: nn.Module) -> None:
    """MMPose's initialisation of HRNet and the head: convolution weights N(0, 0.001), biases 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, std=0.001)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


_BACKBONES: dict[str, type[nn.Module]] = {"ResNet": ResNet, "HRNet": HRNet, "CSPNeXt": CSPNeXt}
_HEADS: dict[str, type[nn.Module]] = {"HeatmapHead": HeatmapHead, "RTMCCHead": RTMCCHead}


class TopdownPoseEstimator(nn.Module):
    """MMPose's top-down model: ``backbone`` (``ResNet``, ``HRNet`` or ``CSPNeXt``) and ``head`` (``HeatmapHead``
    or ``RTMCCHead``), with MMPose's parameter names, crops (N, 3, H, W) to the head's output: heatmaps
    (N, K, h, w), or RTMCCHead's (x logits (N, K, W * ratio), y logits (N, K, H * ratio)).

    The defaults are SimpleBaseline ResNet-50 (MMPose's ``td-hm_res50_8xb64-210e_coco-256x192``: output stride
    4, a [192, 256] input gives [48, 64] heatmaps); HRNet-W32 is ``backbone = {type = "HRNet", arch = "w32"}`` with
    ``head.deconv_out_channels = []`` (output stride 4 too); RTMPose is a ``CSPNeXt`` backbone with an
    ``RTMCCHead``. ``backbone`` and ``head`` are the validated ``[model.backbone]`` and ``[model.head]`` tables;
    from Python, give the keys that differ from the defaults. ``loss`` is the head's.
    """

    options = Section({
        "backbone": Variants({name: Section({**cls.options.keys, "init_from": _INIT_FROM}, cls.options.help)
                              for name, cls in _BACKBONES.items()}, "ResNet",
                             "The backbone, as MMPose's `backbone` (its type names and options)."),
        "head": Variants({name: cls.options for name, cls in _HEADS.items()}, "HeatmapHead",
                         "The head, as MMPose's `head` (its type names and options); `in_channels` and "
                         "`out_channels` are the backbone's and the number of keypoints."),
    }, "MMPose's top-down model (SimpleBaseline, HRNet, RTMPose): its parameter names, so MMPose checkpoints load.")

    def __init__(self, num_keypoints: int = 17, backbone: Mapping[str, Any] | None = None,
                 head: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        settings = validate({"backbone": dict(backbone or {}), "head": dict(head or {})}, self.options.keys,
                            lambda key: "TopdownPoseEstimator options", "model.")
        backbone_settings = settings["backbone"]
        self.pretrained = backbone_settings.pop("init_from", None)
        self.backbone = _BACKBONES[backbone_settings.pop("type")](**backbone_settings)
        head_settings = settings["head"]
        self.head = _HEADS[head_settings.pop("type")](self.backbone.out_channels, num_keypoints, **head_settings)

    def load_pretrained(self, log: logging.Logger) -> None:
        """``backbone.init_from``: the backbone's pretrained weights (a run that starts from scratch calls it)."""
        if self.pretrained is not None:
            from posecore.checkpoint import init_from

            init_from(self.backbone, self.pretrained, log)

    def forward(self, crops: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(crops))

    def loss(self, output: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
             batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.head.loss(output, batch)
