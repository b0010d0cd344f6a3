"""Backbones of the four MGD networks, from timm (ResNets) and torchvision (MobileNet-v2), with the
library's module names (which the original's checkpoints also use). Each returns ``(low_level, high_level)``:
the stride-4 map the decoder refines with and the last map, dilated to the output stride.

The reference layouts (SPEC §4): resnet18 (deep stem 3-32-32-64) and resnet101 (deep stem 3-64-64-128)
dilate layer4's blocks by 2, 4(, 8), OS16; wrn50_2 (7x7 stem) likewise; mobilenetv2 ``features[0..17]``
dilates features 15, 16, 17 by 2, 4, 8 (features 14 keeps its stride), OS32. Other output strides dilate the
stage whose stride is removed and keep the multi-grid doubling on the last blocks (ResNet OS8: layer3 by 2,
layer4 by 4, 8, ...; MobileNet-v2 OS16: features 14-17 by 2, 2, 4, 8; OS8: 7-13 by 2, 14-17 by 4, 4, 8, 16).
"""
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
    """Turn ``block`` from striding into dilation, in place (the reference's rule): stride-2 convs get stride 1,
    3x3 convs dilation and padding ``dilation`` (so the block keeps the spatial size), 1x1 convs only lose their stride."""
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
    """timm ResNet without pooling/fc, its modules under their own names (``conv1.*``, ``layer1.*`` ...):
    x (B,3,H,W) -> (layer1 out (B, low_level_channels, H/4, W/4), layer4 out (B, high_level_channels, H/OS, W/OS))."""

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
    """torchvision MobileNet-v2 ``features[0..17]`` (no 1280 conv, no classifier): x -> (features[3] out
    (B, 24·w, H/4, W/4), features[17] out (B, 320·w, H/OS, W/OS))."""

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
    """PyTorch's default conv init for the deep stem, as the reference's: with torchvision's ImageNet files
    (a 7x7 stem) it stays random, and timm's fan_out Kaiming normal would be 0.75–2.5x the reference's std."""
    if isinstance(net.conv1, nn.Sequential):
        for m in net.conv1.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()


def build_backbone(arch: str, output_stride: int = 0, width_mult: float = 1.0) -> nn.Module:
    """Randomly initialised backbone of ``arch`` at ``output_stride`` (0: the arch's default) with ``arch``,
    ``low_level_channels``, ``high_level_channels``, ``output_stride`` and ``deep_stem``. ``width_mult`` scales
    every channel count for small demo networks (timm's 7x7 stem stays 64 wide); 1.0 is the reference layout."""
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
    backbone = ResNetBackbone(net, channels[0] * block.expansion, channels[3] * block.expansion, output_stride)
    backbone.arch = arch
    return backbone
