"""RTMPose's network with MMPose 1.3.2's parameter names: the ``CSPNeXt`` backbone, the ``RTMCCHead`` SimCC head
(a large-kernel convolution, a fully connected layer and a gated attention unit, then one 1-D classifier for x
and one for y) and its ``KLDiscretLoss``.

``TopdownPoseEstimator`` (:mod:`posecore.pose.mmpose_models`) puts them together as MMPose's
``rtmpose-{t,s,m,l}_8xb256-420e_coco-256x192``: the same ``state_dict`` keys, shapes and order, so MMPose's
checkpoints load as they are and the same weights give the same outputs.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from posecore.config import Key, Section, Variants
from posecore.errors import ConfigError

Norm = Callable[[int], nn.Module]

# Each stage: input and output channels (before widen_factor), blocks (before deepen_factor), whether the blocks
# add their input, whether the stage ends its downsampling with spatial pyramid pooling.
_CSPNEXT_ARCHS = {
    "P5": ((64, 128, 3, True, False), (128, 256, 6, True, False), (256, 512, 6, True, False),
           (512, 1024, 3, False, True)),
    "P6": ((64, 128, 3, True, False), (128, 256, 6, True, False), (256, 512, 6, True, False),
           (512, 768, 3, True, False), (768, 1024, 3, False, True)),
}


class ConvModule(nn.Module):
    """MMCV's ``ConvModule`` as CSPNeXt uses it: a convolution without bias ("same" padding), BatchNorm, SiLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: Norm, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                              bias=False)
        self.bn = norm(out_channels)
        self.activate = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    """A depthwise convolution (one filter per channel) then a 1x1 one, each with BatchNorm and SiLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: Norm, stride: int = 1) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(in_channels, in_channels, kernel_size, norm, stride, groups=in_channels)
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


def _defaults(section: Section) -> dict[str, Any]:
    """The default of each key of ``section`` (for construction from Python with some keys left out)."""
    return {name: key.default for name, key in section.keys.items()}


def _conv(use_depthwise: bool) -> type[nn.Module]:
    return DepthwiseSeparableConvModule if use_depthwise else ConvModule


class CSPNeXtBlock(nn.Module):
    """A 3x3 convolution, then a 5x5 depthwise-separable one, optionally added to the input."""

    def __init__(self, channels: int, add_identity: bool, use_depthwise: bool, norm: Norm) -> None:
        super().__init__()
        self.conv1 = _conv(use_depthwise)(channels, channels, 3, norm)
        self.conv2 = DepthwiseSeparableConvModule(channels, channels, 5, norm)
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class ChannelAttention(nn.Module):
    """Each channel scaled by a hard sigmoid of a 1x1 convolution of the channels' means."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1)
        self.act = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.act(self.fc(self.global_avgpool(x)))


class CSPLayer(nn.Module):
    """Cross-stage partial layer: a 1x1 branch through the blocks and a 1x1 shortcut, concatenated, optionally
    weighted by channel attention, and merged by a 1x1 convolution."""

    def __init__(self, channels: int, expand_ratio: float, num_blocks: int, add_identity: bool,
                 use_depthwise: bool, channel_attention: bool, norm: Norm) -> None:
        super().__init__()
        mid_channels = int(channels * expand_ratio)
        self.main_conv = ConvModule(channels, mid_channels, 1, norm)
        self.short_conv = ConvModule(channels, mid_channels, 1, norm)
        self.final_conv = ConvModule(2 * mid_channels, channels, 1, norm)
        self.blocks = nn.Sequential(*[CSPNeXtBlock(mid_channels, add_identity, use_depthwise, norm)
                                      for _ in range(num_blocks)])
        self.attention = ChannelAttention(2 * mid_channels) if channel_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat((self.blocks(self.main_conv(x)), self.short_conv(x)), dim=1)
        if self.attention is not None:
            out = self.attention(out)
        return self.final_conv(out)


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling: a 1x1 convolution to half the channels, concatenated with its max-pooled copies
    (stride 1, one per kernel size), and a 1x1 convolution back."""

    def __init__(self, channels: int, kernel_sizes: Sequence[int], norm: Norm) -> None:
        super().__init__()
        mid_channels = channels // 2
        self.conv1 = ConvModule(channels, mid_channels, 1, norm)
        self.poolings = nn.ModuleList(nn.MaxPool2d(size, 1, size // 2) for size in kernel_sizes)
        self.conv2 = ConvModule(mid_channels * (len(kernel_sizes) + 1), channels, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x, *(pooling(x) for pooling in self.poolings)], dim=1))


class CSPNeXt(nn.Module):
    """MMPose's (and MMDetection's) ``CSPNeXt``, RTMDet's and RTMPose's backbone: a stem of three 3x3
    convolutions (the first with stride 2), then stages that each halve the resolution with a 3x3 stride-2
    convolution (the last adds spatial pyramid pooling) and apply a CSP layer of CSPNeXt blocks. ``forward``
    gives the last stage named in ``out_indices`` (MMPose's heads take the last feature map given), with
    ``out_channels`` channels; the stages after it are built (their weights are in MMPose's checkpoints) but
    not run."""

    options = Section({
        "arch": Key(str, "P5", "`P5`: four stages (output stride 32); `P6`: five (stride 64).",
                    choices=tuple(_CSPNEXT_ARCHS)),
        "deepen_factor": Key(float, 1.0, "Blocks per stage: round(3, 6, 6, 3 times this), at least 1 (RTMPose "
                                         "t/s/m/l: 0.167/0.33/0.67/1).", min=0),
        "widen_factor": Key(float, 1.0, "Channels: int(64, 128, 256, 512, 1024 times this) (RTMPose t/s/m/l: "
                                        "0.375/0.5/0.75/1).", min=0),
        "expand_ratio": Key(float, 0.5, "Channels of each CSP layer's two branches, as a fraction of its "
                                        "output's.", min=0),
        "out_indices": Key(list, [2, 3, 4], "Stages whose features MMPose outputs (0: the stem); the head takes "
                                            "the last (RTMPose: `[4]`).", item=int, min=0),
        "use_depthwise": Key(bool, False, "Depthwise-separable convolutions for the downsampling and the blocks' "
                                          "first convolution."),
        "spp_kernel_sizes": Key(list, [5, 9, 13], "Max-pooling kernels (odd) of the last stage's spatial "
                                                  "pyramid pooling.", item=int, min=1),
        "channel_attention": Key(bool, True, "Channel attention in each CSP layer."),
        "norm_cfg": Section({
            "momentum": Key(float, 0.03, "BatchNorm momentum (PyTorch's meaning).", min=0, max=1),
            "eps": Key(float, 0.001, "BatchNorm epsilon.", min=0),
        }, "MMPose's `norm_cfg`, whose layer type `model.norm` sets. MMPose's configs replace the whole "
           "dict: the RTMPose configs' `dict(type='SyncBN')` means PyTorch's `momentum = 0.1`, `eps = 1e-5`."),
    }, "MMPose's `CSPNeXt` (RTMPose's backbone; activation SiLU, as MMPose's `act_cfg`): the last stage of "
       "`out_indices` goes to the head, at output stride 2 ** that index.")

    def __init__(self, arch: str = "P5", deepen_factor: float = 1.0, widen_factor: float = 1.0,
                 expand_ratio: float = 0.5, out_indices: Sequence[int] = (2, 3, 4), use_depthwise: bool = False,
                 spp_kernel_sizes: Sequence[int] = (5, 9, 13), channel_attention: bool = True,
                 norm_cfg: Mapping[str, float] | None = None) -> None:
        super().__init__()
        stages = _CSPNEXT_ARCHS[arch]
        if not out_indices or max(out_indices) > len(stages):
            raise ConfigError(f"model.backbone.out_indices {list(out_indices)}: give indices from 0 (the stem) to "
                              f"{len(stages)} (arch {arch} has {len(stages)} stages)")
        if any(size % 2 == 0 for size in spp_kernel_sizes):
            raise ConfigError(f"model.backbone.spp_kernel_sizes {list(spp_kernel_sizes)}: give odd kernel sizes "
                              f"(the pooled maps must keep their size)")
        if int(stages[0][0] * widen_factor // 2) < 1 or int(stages[0][1] * widen_factor * expand_ratio) < 1:
            raise ConfigError(f"model.backbone.widen_factor {widen_factor} with expand_ratio {expand_ratio} leaves "
                              f"layers without channels; raise them")
        norm = partial(nn.BatchNorm2d, **{**_defaults(self.options.keys["norm_cfg"]), **(norm_cfg or {})})
        stem_channels = int(stages[0][0] * widen_factor)
        self.stem = nn.Sequential(ConvModule(3, stem_channels // 2, 3, norm, stride=2),
                                  ConvModule(stem_channels // 2, stem_channels // 2, 3, norm),
                                  ConvModule(stem_channels // 2, stem_channels, 3, norm))
        conv = _conv(use_depthwise)
        widths = [stem_channels]
        for index, (in_channels, out_channels, num_blocks, add_identity, use_spp) in enumerate(stages, 1):
            in_channels, out_channels = int(in_channels * widen_factor), int(out_channels * widen_factor)
            layers = [conv(in_channels, out_channels, 3, norm, stride=2)]
            if use_spp:
                layers.append(SPPBottleneck(out_channels, spp_kernel_sizes, norm))
            layers.append(CSPLayer(out_channels, expand_ratio, max(round(num_blocks * deepen_factor), 1),
                                   add_identity, use_depthwise, channel_attention, norm))
            self.add_module(f"stage{index}", nn.Sequential(*layers))
            widths.append(out_channels)
        self.last_stage = max(out_indices)
        self.out_channels = widths[self.last_stage]
        # MMPose's init_cfg: PyTorch's default convolution weights (Kaiming uniform, a = sqrt(5)), zero biases.
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for index in range(1, self.last_stage + 1):
            x = getattr(self, f"stage{index}")(x)
        return x


class KLDiscretLoss(nn.Module):
    """MMPose's ``KLDiscretLoss`` (SimCC): for x and for y, each keypoint's KL divergence from the target
    distribution to the softmax of ``beta`` times the logits, averaged over the bins, times the keypoint's weight,
    summed over keypoints and samples; the x and y sums added and divided by the number of keypoints."""

    options = Section({
        "beta": Key(float, 1.0, "Temperature: the logits are multiplied by it before the softmax (RTMPose: 10).",
                    min=0),
        "label_softmax": Key(bool, False, "Take the softmax of `label_beta` times the targets as the target "
                                          "distribution (RTMPose: true); false: the targets as they are."),
        "label_beta": Key(float, 10.0, "Temperature of the targets' softmax.", min=0),
        "use_target_weight": Key(bool, True, "Scale each keypoint's loss by its target weight (0 for keypoints "
                                             "without a label)."),
        "mask": Key(list, None, "Keypoint indices whose loss is multiplied by `mask_weight` (unset: none).",
                    item=int, min=0),
        "mask_weight": Key(float, 1.0, "Factor on the loss of the `mask` keypoints.", min=0),
    }, "MMPose's `KLDiscretLoss` (it has no `loss_weight`).")

    def __init__(self, beta: float = 1.0, label_softmax: bool = False, label_beta: float = 10.0,
                 use_target_weight: bool = True, mask: Sequence[int] | None = None, mask_weight: float = 1.0) -> None:
        super().__init__()
        self.beta = beta
        self.label_softmax = label_softmax
        self.label_beta = label_beta
        self.use_target_weight = use_target_weight
        self.mask = list(mask) if mask is not None else None
        self.mask_weight = mask_weight

    def forward(self, output: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                weights: torch.Tensor) -> torch.Tensor:
        """The loss of the logits ``output`` = (x (N, K, Wx), y (N, K, Wy)) against ``target`` (the same shapes)
        with keypoint ``weights`` (N, K)."""
        keypoints = output[0].shape[1]
        loss = output[0].new_zeros(())
        for logits, labels in zip(output, target):
            log_probs = F.log_softmax(logits * self.beta, dim=-1)
            if self.label_softmax:
                labels = F.softmax(labels * self.label_beta, dim=-1)
            per_keypoint = F.kl_div(log_probs, labels, reduction="none").mean(dim=-1)
            if self.use_target_weight:
                per_keypoint = per_keypoint * weights
            if self.mask is not None:
                per_keypoint[:, self.mask] = per_keypoint[:, self.mask] * self.mask_weight
            loss = loss + per_keypoint.sum()
        return loss / keypoints


class ScaleNorm(nn.Module):
    """Scale norm: ``x / max(|x| / sqrt(dim), eps) * g`` over the last dimension, ``g`` a learnt scalar."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class Scale(nn.Module):
    """Multiplication by a learnt vector (initially ones)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class DropPath(nn.Module):
    """Stochastic depth: in training, a whole sample's input is zeroed with probability ``rate`` (the rest
    scaled by 1 / (1 - rate))."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1 - self.rate
        kept = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor()
        return x / keep * kept


def rotary_embedding(x: torch.Tensor, dim: int) -> torch.Tensor:
    """MMPose's rotary position embedding of ``x`` along dimension ``dim`` (positions 0, 1, ...), its
    frequencies 10000 ** (i / half) for i < half = x.shape[-1] // 2, as MMPose 1.3.2 computes them."""
    positions = torch.arange(x.shape[dim], dtype=torch.int, device=x.device)
    positions = positions.reshape(-1, *([1] * (x.ndim - dim - 2)))
    half = x.shape[-1] // 2
    frequencies = 10000 ** (torch.arange(half, dtype=torch.int, device=x.device) / float(half))
    angles = positions[..., None] * frequencies
    first, second = torch.chunk(x, 2, dim=-1)
    return torch.cat([first * angles.cos() - second * angles.sin(), second * angles.cos() + first * angles.sin()],
                     dim=-1)


class RTMCCBlock(nn.Module):
    """MMPose's ``RTMCCBlock``, a gated attention unit over the keypoint tokens (self-attention): scale norm, a
    linear layer to u, v (``e`` = expansion_factor x dims each) and a shared base (``s``) with SiLU or ReLU; q
    and k are per-dimension affine maps of the base, the attention squared ReLU of q k^T / sqrt(s); the output
    ``o(u * (attention v))`` is added to the scaled input."""

    def __init__(self, num_tokens: int, dims: int, s: int, expansion_factor: int, dropout_rate: float,
                 drop_path: float, act_fn: str, use_rel_bias: bool, pos_enc: bool) -> None:
        super().__init__()
        self.s = s
        self.e = int(dims * expansion_factor)
        self.use_rel_bias = use_rel_bias
        self.pos_enc = pos_enc
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if use_rel_bias:
            self.w = nn.Parameter(torch.rand(2 * num_tokens - 1))
        self.o = nn.Linear(self.e, dims, bias=False)
        self.uv = nn.Linear(dims, 2 * self.e + s, bias=False)
        self.gamma = nn.Parameter(torch.rand(2, s))
        self.beta = nn.Parameter(torch.rand(2, s))
        self.ln = ScaleNorm(dims)
        self.act_fn = nn.SiLU(inplace=True) if act_fn == "SiLU" else nn.ReLU(inplace=True)
        self.res_scale = Scale(dims)
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()

    def relative_bias(self, tokens: int) -> torch.Tensor:
        """(1, tokens, tokens): entry (i, j) is ``w[j - i + tokens - 1]``."""
        bias = F.pad(self.w[:2 * tokens - 1], [0, tokens]).repeat(tokens)
        bias = bias[:-tokens].reshape(1, tokens, 3 * tokens - 2)
        middle = (2 * tokens - 1) // 2
        return bias[..., middle:-middle]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v, base = torch.split(self.act_fn(self.uv(self.ln(x))), [self.e, self.e, self.s], dim=2)
        base = base.unsqueeze(2) * self.gamma + self.beta
        if self.pos_enc:
            base = rotary_embedding(base, dim=1)
        q, k = torch.unbind(base, dim=2)
        scores = torch.bmm(q, k.transpose(1, 2))
        if self.use_rel_bias:
            scores = scores + self.relative_bias(q.shape[1])
        attention = self.dropout(torch.square(F.relu(scores / math.sqrt(self.s))))
        return self.res_scale(x) + self.drop_path(self.o(u * torch.bmm(attention, v)))


class RTMCCHead(nn.Module):
    """MMPose's ``RTMCCHead`` (RTMPose): a convolution to one map per keypoint, each map flattened, scale-normed
    and mapped to ``hidden_dims`` by a linear layer, a gated attention unit across the keypoints, then linear
    classifiers over the ``input_size * simcc_split_ratio`` x and y bins. ``forward`` gives ``(pred_x, pred_y)``,
    (N, K, W * ratio) and (N, K, H * ratio) logits."""

    options = Section({
        "input_size": Key(list, None, "The network input [width, height] (the codec's `input_size`).", item=int,
                          min=1, length=2, required=True),
        "in_featuremap_size": Key(list, None, "The backbone's output [width, height] for that input (RTMPose: "
                                              "`input_size` / 32).", item=int, min=1, length=2, required=True),
        "simcc_split_ratio": Key(float, 2.0, "Bins per input pixel (the codec's).", min=0),
        "final_layer_kernel_size": Key(int, 1, "Kernel of the convolution to the keypoint maps (odd; RTMPose: 7).",
                                       min=1),
        "gau_cfg": Section({
            "hidden_dims": Key(int, 256, "Width of each keypoint's token.", min=1),
            "s": Key(int, 128, "Width of the attention's queries and keys.", min=1),
            "expansion_factor": Key(int, 2, "Width of u and v, as a multiple of `hidden_dims`.", min=1),
            "dropout_rate": Key(float, 0.0, "Dropout on the attention weights in training.", min=0, max=1),
            "drop_path": Key(float, 0.0, "Stochastic-depth rate of the unit's update in training (below 1).",
                             min=0, max=1),
            "act_fn": Key(str, "ReLU", "Activation of u, v and the base (RTMPose: `SiLU`).",
                          choices=("ReLU", "SiLU")),
            "use_rel_bias": Key(bool, False, "Add a learnt bias for each keypoint offset to the attention "
                                             "scores."),
            "pos_enc": Key(bool, False, "Rotary position embedding of queries and keys by keypoint index."),
        }, "MMPose's `gau_cfg`: the gated attention unit (RTMPose sets `act_fn = \"SiLU\"`, the rest as here)."),
        "loss": Variants({"KLDiscretLoss": KLDiscretLoss.options}, "KLDiscretLoss",
                         "MMPose's head `loss` (RTMPose: `beta = 10.0`, `label_softmax = true`)."),
    }, "MMPose's `RTMCCHead` (SimCC): outputs (x logits, y logits); its `in_channels` are the backbone's. RTMPose "
       "configs: `final_layer_kernel_size = 7`, `gau_cfg.act_fn = \"SiLU\"`, `loss.beta = 10.0`, "
       "`loss.label_softmax = true`.")

    def __init__(self, in_channels: int, out_channels: int, input_size: Sequence[int],
                 in_featuremap_size: Sequence[int], simcc_split_ratio: float = 2.0, final_layer_kernel_size: int = 1,
                 gau_cfg: Mapping[str, Any] | None = None, loss: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        gau = {**_defaults(self.options.keys["gau_cfg"]), **(gau_cfg or {})}
        loss_options = {k: v for k, v in (loss or {}).items() if k != "type"}
        width, height = (int(size * simcc_split_ratio) for size in input_size)
        if width < 1 or height < 1:
            raise ConfigError(f"model.head.simcc_split_ratio {simcc_split_ratio} gives no bins for input_size "
                              f"{list(input_size)}; raise it")
        if gau["drop_path"] >= 1:
            raise ConfigError(f"model.head.gau_cfg.drop_path is {gau['drop_path']}; it must be below 1")
        if any(index >= out_channels for index in loss_options.get("mask") or ()):
            raise ConfigError(f"model.head.loss.mask {loss_options['mask']}: give keypoint indices below "
                              f"{out_channels}")
        self.in_featuremap_size = tuple(in_featuremap_size)
        tokens = in_featuremap_size[0] * in_featuremap_size[1]
        self.final_layer = nn.Conv2d(in_channels, out_channels, final_layer_kernel_size,
                                     padding=final_layer_kernel_size // 2)
        self.mlp = nn.Sequential(ScaleNorm(tokens), nn.Linear(tokens, gau["hidden_dims"], bias=False))
        self.gau = RTMCCBlock(out_channels, gau["hidden_dims"], gau["s"], gau["expansion_factor"],
                              gau["dropout_rate"], gau["drop_path"], gau["act_fn"], gau["use_rel_bias"],
                              gau["pos_enc"])
        self.cls_x = nn.Linear(gau["hidden_dims"], width, bias=False)
        self.cls_y = nn.Linear(gau["hidden_dims"], height, bias=False)
        self.loss_module = KLDiscretLoss(**loss_options)
        # MMPose's default init_cfg of the head: convolutions N(0, 0.001), linear layers N(0, 0.01), biases 0.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, std=0.001 if isinstance(module, nn.Conv2d) else 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(features.shape[-1:-3:-1]) != self.in_featuremap_size:
            raise ConfigError(f"model.head.in_featuremap_size is {list(self.in_featuremap_size)} but the backbone "
                              f"gives [{features.shape[-1]}, {features.shape[-2]}] (width, height); set that")
        tokens = self.gau(self.mlp(torch.flatten(self.final_layer(features), 2)))
        return self.cls_x(tokens), self.cls_y(tokens)

    def loss(self, output: Sequence[torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss of ``output`` against the SimCC codec's ``keypoint_x_labels``, ``keypoint_y_labels`` and
        ``keypoint_weights`` in ``batch``."""
        return self.loss_module(output, (batch["keypoint_x_labels"], batch["keypoint_y_labels"]),
                                batch["keypoint_weights"])
