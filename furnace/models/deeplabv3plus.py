"""DeepLabv3+ head (ASPP + decoder) and the segmentor that joins it to a backbone (SPEC §4).

Module names follow the original project's checkpoints: ``head.aspp.{map_convs.0-3, map_bn,
global_pooling_conv, global_pooling_bn, red_conv, pool_red_conv, red_bn}``, ``head.reduce.{0,1}``,
``head.last_conv.{0,1,3,4}``, ``classifier``. Convs before a BN carry no bias.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import DECODER_REDUCE, build_backbone, default_output_stride

BN_EPS = 1e-5
BN_MOMENTUM = 0.1
LEAKY_SLOPE = 0.01
# The OS16 rates; the reference kept them at every output stride.
ASPP_RATES = (6, 12, 18)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv(cin: int, cout: int, kernel: int = 1, dilation: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=bias)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with an *added* image-pooling branch.

    ``forward(x)``: x (B, in_channels, h, w) -> (B, channels, h, w)::

        map  = red_conv(leaky(map_bn(cat[conv1x1, conv3x3 d6, d12, d18](x))))
        pool = pool_red_conv(leaky(global_pooling_bn(global_pooling_conv(mean_hw(x)))))
        out  = leaky(red_bn(map + pool))          # pool (B, C, 1, 1) broadcast over h, w
    """

    def __init__(self, in_channels: int, channels: int = 256, rates=ASPP_RATES):
        super().__init__()
        self.map_convs = nn.ModuleList(
            [_conv(in_channels, channels, 1)] + [_conv(in_channels, channels, 3, dilation=r) for r in rates]
        )
        self.map_bn = _bn(channels * (len(rates) + 1))
        self.global_pooling_conv = _conv(in_channels, channels, 1)
        self.global_pooling_bn = _bn(channels)
        self.red_conv = _conv(channels * (len(rates) + 1), channels, 1)
        self.pool_red_conv = _conv(channels, channels, 1)
        self.red_bn = _bn(channels)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)

    def _pooling_bn(self, pool: torch.Tensor) -> torch.Tensor:
        bn = self.global_pooling_bn
        if self.training and pool.shape[0] == 1 and type(bn) is nn.BatchNorm2d:
            # One value per channel: batch statistics do not exist and plain BatchNorm2d raises. A
            # micro-batch of 1 is legitimate here (gradient accumulation), so normalise with the running
            # statistics instead, leaving them untouched. SyncBatchNorm (statistics over all processes)
            # is left to itself. With batches >= 2 this is exactly BatchNorm2d in training mode.
            return F.batch_norm(pool, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return bn(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([conv(x) for conv in self.map_convs], dim=1)
        out = self.red_conv(self.act(self.map_bn(out)))
        pool = x.mean(dim=(2, 3), keepdim=True)
        pool = self.pool_red_conv(self.act(self._pooling_bn(self.global_pooling_conv(pool))))
        return self.act(self.red_bn(out + pool))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the high-level map, then the decoder: (low (B, low_channels, h4, w4), high) -> the decoder
    feature (B, channels, h4, w4). It concatenates ``[upsampled ASPP, reduce(low)]`` in this order, which the
    original's ``last_conv.0.weight`` expects (SPEC §4)."""

    def __init__(self, low_channels: int, high_channels: int, channels: int = 256, reduce_channels: int = 48):
        super().__init__()
        self.aspp = ASPP(high_channels, channels)
        self.reduce = nn.Sequential(_conv(low_channels, reduce_channels, 1), _bn(reduce_channels), nn.ReLU(inplace=True))
        self.last_conv = nn.Sequential(
            _conv(channels + reduce_channels, channels, 3), _bn(channels), nn.ReLU(inplace=True),
            _conv(channels, channels, 3), _bn(channels), nn.ReLU(inplace=True),
        )

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        high = self.aspp(high)
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.last_conv(torch.cat([high, self.reduce(low)], dim=1))


def init_head_weights(module: nn.Module) -> None:
    """The reference's head init: convs Kaiming normal (fan_in, relu), BN weight 1 / bias 0 (the classifier's
    bias keeps PyTorch's default)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DeepLabV3Plus(nn.Module):
    """Backbone + DeepLabv3+ head + 1x1 classifier: x (B,3,H,W) -> logits (B,C,H,W) (bilinear,
    align_corners=True), with ``return_feature`` ``(logits, feature)``: the decoder map (B, head_channels,
    H/4, W/4) the region-level loss uses. ``arch``, ``num_classes`` and ``build_options`` (the
    :meth:`from_arch` kwargs) are what segmentor files record."""

    def __init__(self, backbone: nn.Module, num_classes: int, head_channels: int = 256, reduce_channels: int = 48):
        super().__init__()
        self.backbone = backbone
        self.head = DeepLabV3PlusHead(backbone.low_level_channels, backbone.high_level_channels, head_channels,
                                      reduce_channels)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1, bias=True)
        init_head_weights(self.head)
        init_head_weights(self.classifier)
        self.num_classes = num_classes
        self.feature_channels = head_channels
        self.arch = ""
        self.build_options: dict = {}

    def forward(self, x: torch.Tensor, return_feature: bool = False):
        low, high = self.backbone(x)
        feature = self.head(low, high)
        logits = F.interpolate(self.classifier(feature), size=x.shape[-2:], mode="bilinear", align_corners=True)
        return (logits, feature) if return_feature else logits

    @classmethod
    def from_arch(cls, arch: str, num_classes: int, *, output_stride: int = 0, width_mult: float = 1.0,
                  head_channels: int = 256) -> "DeepLabV3Plus":
        """Randomly initialised DeepLabv3+ of ``arch`` (no weight files; :func:`furnace.models.build_model`
        adds them). The decoder's low-level reduction is 48 channels (24 for mobilenetv2) scaled by
        ``head_channels / 256``, at least 8. ``from_arch(arch, num_classes, **net.build_options)`` rebuilds ``net``."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if head_channels < 1:
            raise ValueError(f"head_channels must be >= 1, got {head_channels}")
        output_stride = output_stride or default_output_stride(arch)
        backbone = build_backbone(arch, output_stride=output_stride, width_mult=width_mult)
        reduce_channels = max(8, int(round(DECODER_REDUCE[arch] * head_channels / 256)))
        model = cls(backbone, num_classes, head_channels=head_channels, reduce_channels=reduce_channels)
        model.arch = arch
        model.build_options = {"output_stride": int(output_stride), "width_mult": float(width_mult),
                               "head_channels": int(head_channels)}
        return model


def count_parameters(model: DeepLabV3Plus) -> dict:
    """Parameter counts ``{"backbone", "head", "classifier"}``; the head without the classifier is the split
    SPEC §4 quotes (with it MobileNet-v2's head would read 3.95 M, not 3.94 M)."""
    def n(module):
        return sum(p.numel() for p in module.parameters())

    return {"backbone": n(model.backbone), "head": n(model.head), "classifier": n(model.classifier)}


class _FoldedSegmentor(nn.Module):
    """Calls like a DeepLabV3Plus; runs the traced, BN-folded graph of its ``forward(x, True)``."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor, return_feature: bool = False):
        logits, feature = self.graph(x, True)
        return (logits, feature) if return_feature else logits


def fold_batchnorm(network: DeepLabV3Plus) -> nn.Module:
    """An inference-only ``torch.fx`` copy of ``network`` (called like it) with every BatchNorm that follows a
    convolution folded into it: what ``network.eval()`` computes, to float rounding, with ~100 fewer passes over
    the activations for a ResNet-101 (the BNs after the ASPP concatenation stay)."""
    from torch.fx.experimental.optimization import fuse

    graph = torch.fx.symbolic_trace(network.eval(), concrete_args={"return_feature": True})
    return _FoldedSegmentor(fuse(graph, inplace=False, no_trace=True)).eval()
