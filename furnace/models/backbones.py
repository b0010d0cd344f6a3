"""Backbones of the four MGD networks, built from timm (ResNet family) and torchvision (MobileNet-v2).

Each backbone keeps the module names of the library layout it comes from (``conv1.0``, ``layer4.2.conv2``,
``features.17.conv.1.0``...), which are also the names in the original project's checkpoints, and returns
``(low_level, high_level)``: the stride-4 map the decoder refines with, and the last map, dilated to the
requested output stride.

The default layouts are the reference's (SPEC §4):

========== ============================== ======================================= ==== ============
arch       blocks                         dilation                                OS   low / high
========== ============================== ======================================= ==== ============
resnet18   BasicBlock [2,2,2,2], deep     layer4 blocks 2, 4                      16   64 / 512
           stem 3->32->32->64
mobilenetv2 torchvision features[0..17]   features 15, 16, 17 -> 2, 4, 8          32   24 / 320
                                          (features 14 keeps stride 2)
resnet101  Bottleneck [3,4,23,3], deep    layer4 blocks 2, 4, 8                   16   256 / 2048
           stem 3->64->64->128
wrn50_2    Bottleneck [3,4,6,3], width    layer4 blocks 2, 4, 8                   16   256 / 2048
           x2, 7x7 stem
========== ============================== ======================================= ==== ============

Other output strides (the config allows 8, 16, 32 for every arch) follow the same rule — the stage whose
stride is removed is dilated, and the multi-grid doubling stays on the last blocks:

- ResNets: OS32 no dilation; OS8 layer3 all blocks 2 and layer4 blocks 4, 8(, 16).
- MobileNet-v2: OS16 features 14 -> 2 (its stride-2 depthwise conv becomes stride 1) and 15, 16, 17 ->
  2, 4, 8 (the paper's multi-grid kept on the last three blocks, now at stride 16); OS8 additionally
  features 7..13 -> 2, then 14 -> 4 and 15, 16, 17 -> 4, 8, 16.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn as nn
import torchvision
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..config import ARCHS, DEFAULT_OUTPUT_STRIDE  # resnet18 | mobilenetv2 | resnet101 | wrn50_2

# decoder low-level reduction width at head_channels=256 (SPEC §4)
DECODER_REDUCE = {"resnet18": 48, "mobilenetv2": 24, "resnet101": 48, "wrn50_2": 48}

_RESNETS = {
    # block, blocks per stage, timm kwargs of the stem / bottleneck width
    "resnet18": (BasicBlock, (2, 2, 2, 2), dict(stem_type="deep", stem_width=32)),
    "resnet101": (Bottleneck, (3, 4, 23, 3), dict(stem_type="deep", stem_width=64)),
    "wrn50_2": (Bottleneck, (3, 4, 6, 3), dict(stem_type="", base_width=128)),
}
_RESNET_CHANNELS = (64, 128, 256, 512)


def default_output_stride(arch: str) -> int:
    """The reference's output stride of ``arch``: 32 for mobilenetv2, 16 for the ResNets."""
    check_arch(arch)
    return DEFAULT_OUTPUT_STRIDE[arch]


def check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")


def dilate_block(block: nn.Module, dilation: int) -> None:
    """Turn ``block`` from striding into dilation ``dilation``, in place (the reference's rule).

    Every stride-2 conv in it gets stride 1 and every 3x3 conv gets dilation and padding ``dilation``;
    1x1 convs (downsample, pointwise) only lose their stride. Spatial size in = size out of the block
    afterwards, for any input size, because a 3x3 conv with padding = dilation preserves size.
    """
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            if m.stride == (2, 2):
                m.stride = (1, 1)
            if m.kernel_size == (3, 3):
                m.dilation = (dilation, dilation)
                m.padding = (dilation, dilation)
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and m.stride not in (1, (1, 1)):
            # timm variants with pooled shortcuts are not used here; refuse rather than mis-stride
            raise ValueError(f"cannot dilate a block with a strided pooling layer: {m}")


def _scaled(channels: int, width_mult: float) -> int:
    # never below 8 so BN statistics and the smallest demo nets stay meaningful
    return channels if width_mult == 1.0 else max(8, int(round(channels * width_mult)))


def _resnet_dilations(output_stride: int, blocks: Sequence[int]) -> Dict[str, Sequence[int]]:
    n3, n4 = blocks[2], blocks[3]
    if output_stride == 32:
        return {}
    if output_stride == 16:
        return {"layer4": [2 * 2**i for i in range(n4)]}
    if output_stride == 8:
        return {"layer3": [2] * n3, "layer4": [4 * 2**i for i in range(n4)]}
    raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


def _mobilenetv2_dilations(output_stride: int) -> Dict[int, int]:
    if output_stride == 32:
        return {15: 2, 16: 4, 17: 8}
    if output_stride == 16:
        return {14: 2, 15: 2, 16: 4, 17: 8}
    if output_stride == 8:
        return {**{i: 2 for i in range(7, 14)}, 14: 4, 15: 4, 16: 8, 17: 16}
    raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


class ResNetBackbone(nn.Module):
    """timm ResNet without pooling/fc: ``forward(x) -> (layer1 out, layer4 out)``.

    x (B,3,H,W) -> low (B, low_level_channels, ceil(H/4), ceil(W/4)),
    high (B, high_level_channels, ceil(H/OS), ceil(W/OS)) (each stride-2 step rounds up).
    The timm modules are re-registered under their own names, so the state dict reads
    ``conv1.*, bn1.*, layer1.* .. layer4.*`` exactly as timm/torchvision (and the reference) name them.
    """

    def __init__(self, net: ResNet, low_level_channels: int, high_level_channels: int, output_stride: int):
        super().__init__()
        self.conv1, self.bn1, self.act1, self.maxpool = net.conv1, net.bn1, net.act1, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.low_level_channels = low_level_channels
        self.high_level_channels = high_level_channels
        self.output_stride = output_stride

    @property
    def deep_stem(self) -> bool:
        return isinstance(self.conv1, nn.Sequential)

    def forward(self, x: torch.Tensor):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        high = self.layer4(self.layer3(self.layer2(low)))
        return low, high


class MobileNetV2Backbone(nn.Module):
    """torchvision MobileNet-v2 ``features[0..17]`` (no final 1280 conv, no classifier).

    ``forward(x) -> (features[3] out, features[17] out)``: low (B, 24·w, ceil(H/4), ceil(W/4)),
    high (B, 320·w, ceil(H/OS), ceil(W/OS)).
    """

    LOW_LEVEL_INDEX = 3

    def __init__(self, features: nn.Sequential, output_stride: int):
        super().__init__()
        self.features = features
        self.low_level_channels = features[self.LOW_LEVEL_INDEX].out_channels
        self.high_level_channels = features[-1].out_channels
        self.output_stride = output_stride
        self.deep_stem = False

    def forward(self, x: torch.Tensor):
        low = None
        for i, block in enumerate(self.features):
            x = block(x)
            if i == self.LOW_LEVEL_INDEX:
                low = x
        return low, x


def _default_init_deep_stem(net: ResNet) -> None:
    """Give the deep stem's convs PyTorch's default conv init, as the reference's stem had.

    torchvision's ImageNet files have a 7x7 stem, so with them the deep stem (``conv1.0/3/6``) stays
    random; the reference left it at ``nn.Conv2d``'s own init (Kaiming uniform, a=√5: U(±1/√fan_in)),
    where timm initialises every conv with fan_out Kaiming normal (0.75–2.5× the reference's std here).
    """
    if isinstance(net.conv1, nn.Sequential):
        for m in net.conv1.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()


def build_backbone(arch: str, output_stride: int = 0, width_mult: float = 1.0) -> nn.Module:
    """Randomly initialised backbone of ``arch`` at ``output_stride`` (0 = the arch's default).

    ``width_mult`` scales every channel count (timm ``channels=`` and ``stem_width``; torchvision
    ``MobileNetV2(width_mult=...)``) for small demo networks; 1.0 is exactly the reference layout.
    timm's plain 7x7 stem (wrn50_2) is always 64 channels wide, whatever ``width_mult``.
    The returned module has ``arch``, ``low_level_channels``, ``high_level_channels``, ``output_stride``,
    ``deep_stem`` and returns ``(low_level, high_level)``.
    """
    check_arch(arch)
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    output_stride = output_stride or default_output_stride(arch)
    if arch == "mobilenetv2":
        net = torchvision.models.MobileNetV2(width_mult=width_mult)
        features = nn.Sequential(*list(net.features)[:18])
        for index, dilation in _mobilenetv2_dilations(output_stride).items():
            dilate_block(features[index], dilation)
        backbone = MobileNetV2Backbone(features, output_stride)
        backbone.arch = arch
        return backbone

    block, blocks, kwargs = _RESNETS[arch]
    kwargs = dict(kwargs)
    if "stem_width" in kwargs:
        kwargs["stem_width"] = _scaled(kwargs["stem_width"], width_mult)
    channels = tuple(_scaled(c, width_mult) for c in _RESNET_CHANNELS)
    # built at stride 32, then dilated per block: timm's own output_stride gives every block of a stage
    # the same dilation, while the reference uses multi-grid (2, 4, 8) across layer4's blocks
    net = ResNet(block=block, layers=blocks, channels=channels, num_classes=0, global_pool="", **kwargs)
    _default_init_deep_stem(net)
    for stage, dilations in _resnet_dilations(output_stride, blocks).items():
        for b, d in zip(getattr(net, stage), dilations):
            dilate_block(b, d)
    backbone = ResNetBackbone(
        net,
        low_level_channels=channels[0] * block.expansion,
        high_level_channels=channels[3] * block.expansion,
        output_stride=output_stride,
    )
    backbone.arch = arch
    return backbone
