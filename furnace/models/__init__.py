"""DeepLabv3+ networks of MGD (ResNet-18 / MobileNet-v2 students, ResNet-101 / WRN-50-2 teachers) and
every way of loading their weights.

    net = build_model("resnet18", 21, pretrained="DATA/model-weight/resnet18.pth")
    logits, feature = net(x, return_feature=True)      # (B,21,H,W), (B,256,H/4,W/4)
    save_segmentor(net, "net.pth"); net = load_segmentor("net.pth")
"""
from ..utils import UserError
from .backbones import ARCHS, build_backbone, default_output_stride, dilate_block
from .deeplabv3plus import DeepLabV3Plus, count_parameters, fold_batchnorm
from .weights import (OFFICIAL_UNUSED, SEGMENTOR_FORMAT, LoadReport, convert_official, load_imagenet_weights,
                      load_segmentor, read_segmentor_meta, recorded_classes, save_segmentor, segmentor_record)

__all__ = [
    "ARCHS", "OFFICIAL_UNUSED", "SEGMENTOR_FORMAT", "DeepLabV3Plus", "LoadReport", "build_backbone", "build_model",
    "convert_official", "count_parameters", "default_output_stride", "dilate_block", "fold_batchnorm",
    "load_imagenet_weights", "load_segmentor", "read_segmentor_meta", "recorded_classes", "save_segmentor",
    "segmentor_record",
]


def build_model(arch: str, num_classes: int, *, output_stride: int = 0, pretrained: str = "", strict: bool = False,
                width_mult: float = 1.0, head_channels: int = 256, verbose: bool = True) -> DeepLabV3Plus:
    """DeepLabv3+ of ``arch`` (resnet18 | mobilenetv2 | resnet101 | wrn50_2) with ``num_classes`` outputs.

    ``output_stride`` 0 -> the reference's (16; mobilenetv2 32). ``pretrained``: a local ImageNet state-dict
    file loaded into the backbone by name and shape (:func:`load_imagenet_weights`; ``strict`` makes any
    backbone tensor left random an error, ``verbose`` prints the report), "" for random init.
    ``width_mult`` / ``head_channels`` shrink the network for demos; 1.0 / 256 is the reference network.
    UserError for an unknown arch or an unusable weight file.
    """
    if arch not in ARCHS:
        raise UserError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")
    try:
        model = DeepLabV3Plus.from_arch(arch, num_classes, output_stride=output_stride, width_mult=width_mult,
                                        head_channels=head_channels)
    except ValueError as err:
        raise UserError(f"cannot build {arch}: {err} (check num_classes, output_stride, width_mult, "
                        f"head_channels)") from err
    if pretrained:
        load_imagenet_weights(model, pretrained, strict=strict, verbose=verbose)
    return model
