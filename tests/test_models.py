"""Networks: the reference layouts (names, shapes, parameter counts, strides), ImageNet loading, our
segmentor files and the conversion of the original project's checkpoints."""
import functools
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

from furnace.models import (
    OFFICIAL_UNUSED,
    build_model,
    count_parameters,
    fold_batchnorm,
    load_imagenet_weights,
    load_segmentor,
    read_segmentor_meta,
    save_segmentor,
)
from furnace.tools import convert_official
from furnace.utils import UserError

ARCHS = ("resnet18", "mobilenetv2", "resnet101", "wrn50_2")
REFERENCE = Path(__file__).parent / "data" / "original_checkpoint_keys.json"
REFERENCE_KEY = {"resnet18": "resnet18_student", "mobilenetv2": "mobilenetv2_student",
                 "resnet101": "resnet101_teacher", "wrn50_2": "wrn50_2_teacher"}
SMALL = dict(width_mult=0.25, head_channels=32)


@functools.lru_cache(maxsize=None)
def full_model(arch):
    """The reference-size network (21 classes); shared by read-only tests, never modified."""
    torch.manual_seed(0)
    return build_model(arch, 21, verbose=False).eval()


def _fresh(arch):
    return build_model(arch, 21, verbose=False)


def randomise_bn_stats(net):
    """Non-trivial BN running statistics, so a wrongly copied buffer changes the outputs."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(7)
    return net


def halve(n, times):
    """Spatial size after ``times`` stride-2 steps (each rounds up, as the convs/pools do)."""
    for _ in range(times):
        n = math.ceil(n / 2)
    return n


# ----------------------------------------------------------------------------- reference layouts


@pytest.mark.parametrize(
    "arch,backbone_m,head_m",
    [("resnet18", 11.20, 5.43), ("mobilenetv2", 1.81, 3.94), ("resnet101", 42.62, 16.84), ("wrn50_2", 66.83, 16.84)],
)
def test_parameter_counts_match_spec(arch, backbone_m, head_m):
    counts = count_parameters(full_model(arch))
    assert round(counts["backbone"] / 1e6, 2) == backbone_m
    # SPEC's "head" is ASPP + decoder; the 21-class classifier is counted separately
    assert round(counts["head"] / 1e6, 2) == head_m
    assert counts["classifier"] == 256 * 21 + 21
    assert sum(counts.values()) == sum(p.numel() for p in full_model(arch).parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_names_and_shapes_equal_the_original_checkpoints(arch):
    reference = json.loads(REFERENCE.read_text())[REFERENCE_KEY[arch]]
    unused = set(OFFICIAL_UNUSED.get(arch, ()))
    expected = [(name, shape) for name, shape in reference if name not in unused]
    ours = [(name, list(t.shape)) for name, t in full_model(arch).state_dict().items()]
    assert ours == expected  # same names, shapes and order
    if arch == "mobilenetv2":  # the original's unused ImageNet classifier is the only extra
        assert {n for n, _ in reference} - {n for n, _ in ours} == unused


@pytest.mark.parametrize(
    "arch,size",
    [("resnet18", (512, 512)), ("resnet18", (321, 479)), ("mobilenetv2", (512, 512)), ("mobilenetv2", (321, 479)),
     ("resnet101", (321, 479)), ("wrn50_2", (321, 479))],
)
def test_output_strides_and_shapes(arch, size):
    net = full_model(arch)
    low_ch, high_ch, os_ = {"resnet18": (64, 512, 16), "mobilenetv2": (24, 320, 32),
                            "resnet101": (256, 2048, 16), "wrn50_2": (256, 2048, 16)}[arch]
    seen = {}
    hook = net.backbone.register_forward_hook(lambda m, i, out: seen.update(low=out[0], high=out[1]))
    h, w = size
    with torch.no_grad():
        logits, feature = net(torch.randn(1, 3, h, w), return_feature=True)
    hook.remove()
    steps = int(math.log2(os_))
    assert tuple(seen["low"].shape) == (1, low_ch, halve(h, 2), halve(w, 2))
    assert tuple(seen["high"].shape) == (1, high_ch, halve(h, steps), halve(w, steps))
    assert tuple(feature.shape) == (1, 256, halve(h, 2), halve(w, 2))
    assert tuple(logits.shape) == (1, 21, h, w)


def _dilations(module):
    """(stride, dilation) of every 3x3 conv in ``module``."""
    convs = [c for c in module.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)]
    return [(c.stride[0], c.dilation[0]) for c in convs]


def test_reference_dilations():
    r18, r101, mbv2 = (full_model(a).backbone for a in ("resnet18", "resnet101", "mobilenetv2"))
    # every 3x3 of a dilated block gets the block's rate; the stride-2 conv loses its stride
    assert [_dilations(b) for b in r18.layer4] == [[(1, 2), (1, 2)], [(1, 4), (1, 4)]]
    assert [_dilations(b) for b in r101.layer4] == [[(1, 2)], [(1, 4)], [(1, 8)]]
    assert r101.layer4[0].downsample[0].stride == (1, 1) and r101.layer4[0].downsample[0].dilation == (1, 1)
    assert _dilations(r18.layer3) == [(2, 1), (1, 1), (1, 1), (1, 1)]
    # MobileNet-v2: block 14 keeps stride 2 (OS32), 15/16/17 dilated 2/4/8
    assert [_dilations(mbv2.features[i]) for i in (14, 15, 16, 17)] == [[(2, 1)], [(1, 2)], [(1, 4)], [(1, 8)]]
    os16 = build_model("mobilenetv2", 21, output_stride=16, verbose=False, **SMALL).backbone
    assert [_dilations(os16.features[i]) for i in (14, 15, 16, 17)] == [[(1, 2)], [(1, 2)], [(1, 4)], [(1, 8)]]


@pytest.mark.parametrize("arch", ARCHS)
def test_small_networks_and_every_output_stride(arch):
    x = torch.randn(2, 3, 64, 96)
    for os_ in (8, 16, 32):
        net = build_model(arch, 5, output_stride=os_, verbose=False, **SMALL)
        assert net.build_options == {"output_stride": os_, "width_mult": 0.25, "head_channels": 32}
        assert net.backbone.output_stride == os_
        net.train()
        logits, feature = net(x, return_feature=True)
        assert logits.shape == (2, 5, 64, 96) and feature.shape == (2, 32, 16, 24)
        _, high = net.backbone(x)
        assert high.shape[-2:] == (64 // os_, 96 // os_)
        logits.mean().backward()
    expected = {"resnet18": (16, 128), "mobilenetv2": (8, 80), "resnet101": (64, 512), "wrn50_2": (64, 512)}[arch]
    assert (net.backbone.low_level_channels, net.backbone.high_level_channels) == expected
    assert net.head.reduce[0].out_channels == 8  # 48 (24) * 32/256, at least 8
    assert build_model(arch, 5, verbose=False).build_options["output_stride"] == (32 if arch == "mobilenetv2" else 16)


def test_batch_of_one_in_train_mode_and_pooling_bn_statistics():
    net = build_model("resnet18", 3, verbose=False, **SMALL).train()
    bn = net.head.aspp.global_pooling_bn
    before = bn.running_mean.clone()
    net(torch.randn(1, 3, 64, 64)).sum().backward()  # plain BatchNorm2d would raise on a 1x1 map of batch 1
    assert torch.equal(bn.running_mean, before)  # batch 1 normalises with (and keeps) the running stats
    assert net.head.aspp.map_bn.num_batches_tracked == 1  # the other BNs train normally
    net(torch.randn(2, 3, 64, 64))
    assert not torch.equal(bn.running_mean, before)  # batch >= 2: ordinary training-mode BN
    net.eval()
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("arch", ["resnet101", "wrn50_2", "mobilenetv2"])
def test_folded_batchnorm_copy_computes_what_the_eval_network_computes(arch):
    torch.manual_seed(0)
    net = build_model(arch, 5, verbose=False, **SMALL)
    for m in net.modules():  # statistics far from the identity, so folding them wrongly shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.3, 3.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.3, 0.3)
    folded = fold_batchnorm(net)
    bns = [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 and all("aspp" in n for n in bns)  # only the BNs after the ASPP concatenation stay
    x = torch.randn(2, 3, 48, 64)
    with torch.inference_mode():
        (logits, feature), (f_logits, f_feature) = net.eval()(x, return_feature=True), folded(x, return_feature=True)
        assert torch.allclose(folded(x), f_logits)
    for a, b in ((logits, f_logits), (feature, f_feature)):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()
    assert sum(p.numel() for p in folded.parameters()) < sum(p.numel() for p in net.parameters())


def test_head_initialisation():
    fresh = full_model("resnet18")  # never trained or modified
    for m in fresh.head.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.eps == 1e-5 and m.momentum == 0.1
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = fresh.head.aspp.red_conv.weight  # Kaiming normal, fan_in, relu: std = sqrt(2 / fan_in)
    assert conv.std().item() == pytest.approx(math.sqrt(2 / 1024), rel=0.05)
    assert fresh.classifier.bias is not None and fresh.head.aspp.global_pooling_conv.bias is None


# ----------------------------------------------------------------------------- ImageNet weights


def test_torchvision_resnet18_file_loads_all_but_the_deep_stem(tmp_path, capsys):
    torch.manual_seed(1)
    tv = randomise_bn_stats(torchvision.models.resnet18(weights=None))
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    net = build_model("resnet18", 21, pretrained=str(path), verbose=True)
    out = capsys.readouterr().out
    assert "the deep stem conv1.* stays randomly initialised, as in the reference" in out.lower()
    report = load_imagenet_weights(net, path)
    assert report.deep_stem_random and not report.complete
    assert {n.split(".")[0] for n in report.loaded} == {"bn1", "layer1", "layer2", "layer3", "layer4"}
    assert all(n.startswith("conv1.") for n in report.missing) and report.missing
    assert {"conv1.weight", "fc.weight", "fc.bias"} <= set(report.unexpected)
    assert not report.mismatched
    ours, theirs = net.backbone.state_dict(), tv.state_dict()
    for name in ("layer1.0.conv1.weight", "layer3.1.conv2.weight", "layer4.0.downsample.0.weight",
                 "layer4.1.bn2.running_var", "bn1.running_mean"):
        assert torch.equal(ours[name], theirs[name]), name
    with pytest.raises(UserError, match=r"strict.*conv1\.0\.weight"):
        load_imagenet_weights(net, path, strict=True)


def test_deep_stem_left_random_has_pytorch_default_conv_init(tmp_path):
    """The reference's deep stem kept nn.Conv2d's own init: Kaiming uniform a=√5, i.e. U(±1/√fan_in),
    std 1/√(3·fan_in) — not timm's fan_out Kaiming normal, std √(2/fan_out)."""
    torch.manual_seed(2)
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    net = build_model("resnet18", 21, pretrained=str(path), verbose=False)
    stem = net.backbone.conv1
    for index in (0, 3, 6):
        w = stem[index].weight.detach()
        fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
        bound = 1 / math.sqrt(fan_in)
        assert w.abs().max().item() <= bound  # uniform within ±1/√fan_in
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), index
        assert abs(w.std().item() / math.sqrt(2 / fan_out) - 1) > 0.2, index  # not timm's rule
    # the 101-layer deep stem follows the same rule; its first conv is 3->64
    w = build_model("resnet101", 21).backbone.conv1[0].weight.detach()
    assert w.std().item() == pytest.approx(1 / math.sqrt(3 * 27), rel=0.05)


def test_torchvision_resnet101_file_reports_stem_shape_mismatches(tmp_path):
    # the 128-channel deep stem of the deep teacher cannot take torchvision's 64-channel bn1 / layer1 inputs
    tv = torchvision.models.resnet101(weights=None)
    path = tmp_path / "resnet101.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in tv.state_dict().items()}}, path)
    report = load_imagenet_weights(_fresh("resnet101"), path)
    mismatched = {n for n, _, _ in report.mismatched}
    assert {"bn1.weight", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight"} <= mismatched
    assert report.deep_stem_random
    assert any(n.startswith("layer4.2.") for n in report.loaded)
    # the file of another network matches some names and shapes (BN vectors, a few convs): refused, not half loaded
    with pytest.raises(UserError, match=r"resnet101.pth: not the ImageNet file of resnet18: 22 backbone tensors"):
        load_imagenet_weights(_fresh("resnet18"), path)


def test_timm_files_with_our_layout_load_completely(tmp_path):
    # timm MobileNet-v2 names (blocks.<stage>.<i>.conv_pw ...) are mapped onto torchvision's features.N
    src = timm.create_model("mobilenetv2_100", pretrained=False)
    randomise_bn_stats(src).eval()
    path = tmp_path / "mobilenetv2_timm.pth"
    torch.save(src.state_dict(), path)
    net = _fresh("mobilenetv2").eval()
    report = load_imagenet_weights(net, path, strict=True)
    assert report.complete and not report.deep_stem_random
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # same low-level map as timm's first two stages
        expected = src.blocks[1](src.blocks[0](src.bn1(src.conv_stem(x))))
        assert torch.equal(net.backbone(x)[0], expected)
    # a timm deep-stem ResNet-18 (stem width 32) fills the stem too
    from timm.models.resnet import BasicBlock, ResNet

    deep = ResNet(BasicBlock, (2, 2, 2, 2), stem_type="deep", stem_width=32)
    torch.save(deep.state_dict(), tmp_path / "r18_deep.pth")
    report = load_imagenet_weights(_fresh("resnet18"), tmp_path / "r18_deep.pth", strict=True)
    assert report.complete and not report.deep_stem_random


def test_torchvision_mobilenetv2_and_wrong_files(tmp_path):
    tv = torchvision.models.mobilenet_v2(weights=None)
    torch.save(tv.state_dict(), tmp_path / "mbv2.pth")
    report = load_imagenet_weights(build_model("mobilenetv2", 4, verbose=False), tmp_path / "mbv2.pth", strict=True)
    assert report.complete
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in report.unexpected} == {"features.18", "classifier.1"}
    # another architecture's file: nothing matches -> an error naming the file, not a silent random init
    with pytest.raises(UserError, match="mbv2.pth.*none of its"):
        load_imagenet_weights(build_model("resnet18", 4, verbose=False, **SMALL), tmp_path / "mbv2.pth")
    with pytest.raises(UserError, match="nope.pth"):
        build_model("resnet18", 4, pretrained=str(tmp_path / "nope.pth"), verbose=False)


# ----------------------------------------------------------------------------- segmentor files


def test_segmentor_round_trip(tmp_path):
    torch.manual_seed(0)
    net = randomise_bn_stats(build_model("mobilenetv2", 5, output_stride=16, verbose=False, **SMALL)).eval()
    path = tmp_path / "ckpt" / "net.pth"
    save_segmentor(net, path, extra={"epoch": 3})
    meta = read_segmentor_meta(path)
    assert meta["arch"] == "mobilenetv2" and meta["num_classes"] == 5 and meta["epoch"] == 3
    assert meta["options"] == {"output_stride": 16, "width_mult": 0.25, "head_channels": 32}
    loaded = load_segmentor(path)
    assert not loaded.training
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    with pytest.raises(ValueError, match="reserved"):
        save_segmentor(net, path, extra={"arch": "x"})


def test_segmentor_errors_name_the_file(tmp_path):
    net = build_model("resnet18", 3, verbose=False, **SMALL)
    with pytest.raises(UserError, match="missing.pth.*not found"):
        load_segmentor(tmp_path / "missing.pth")
    torch.save(net.state_dict(), tmp_path / "raw.pth")
    with pytest.raises(UserError, match=r"raw.pth.*bare state dict.*convert_official"):
        load_segmentor(tmp_path / "raw.pth")
    torch.save({"model": {"branch1." + k: v for k, v in net.state_dict().items()}}, tmp_path / "official.pth")
    with pytest.raises(UserError, match=r"official.pth.*original MGD/CPS release.*convert_official"):
        read_segmentor_meta(tmp_path / "official.pth")
    save_segmentor(net, tmp_path / "ok.pth")
    obj = torch.load(tmp_path / "ok.pth", weights_only=True)
    obj["state_dict"]["head.reduce.0.weight"] = torch.zeros(9, 16, 1, 1)
    del obj["state_dict"]["classifier.bias"]
    obj["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(obj, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"bad.pth.*classifier\.bias.*extra\.weight.*head\.reduce\.0\.weight") as err:
        load_segmentor(tmp_path / "bad.pth")
    assert "missing" in str(err.value) and "shape-mismatched" in str(err.value)


# ----------------------------------------------------------------------------- official checkpoints


def official_file(path, branches, extra=None):
    model = {}
    for branch, net in branches.items():
        model.update({f"{branch}.{k}": v for k, v in net.state_dict().items()})
    model.update(extra or {})
    torch.save({"model": model}, path)


def test_official_conversion_reproduces_the_logits_exactly(tmp_path, capsys):
    torch.manual_seed(0)
    student = randomise_bn_stats(_fresh("mobilenetv2")).eval()
    other = randomise_bn_stats(_fresh("mobilenetv2"))
    unused = {"branch1.backbone.classifier.1.weight": torch.randn(1000, 1280),
              "branch1.backbone.classifier.1.bias": torch.randn(1000)}
    src = tmp_path / "voc8_mbv2.pth"
    official_file(src, {"branch1": student, "branch2": other}, unused)
    dst = tmp_path / "converted.pth"
    assert convert_official.main([str(src), str(dst), "--arch", "mobilenetv2", "--branch", "branch1"]) == 0
    assert "dropped the unused backbone.classifier.1.weight" in capsys.readouterr().out
    meta = read_segmentor_meta(dst)
    assert (meta["arch"], meta["num_classes"], meta["branch"]) == ("mobilenetv2", 21, "branch1")
    converted = load_segmentor(dst)
    x = torch.randn(2, 3, 65, 79)
    with torch.no_grad():
        assert torch.equal(converted(x), student(x))
    # an MGD student file's teacher branch, with its unused fc
    teacher = randomise_bn_stats(_fresh("resnet18")).eval()
    src2 = tmp_path / "mgd.pth"
    official_file(src2, {"branch1": student, "branch3": teacher})
    assert convert_official.main([str(src2), str(dst), "--arch", "resnet18", "--branch", "branch3",
                                  "--num-classes", "21"]) == 0
    with torch.no_grad():
        assert torch.equal(load_segmentor(dst)(x), teacher(x))


def test_official_wide_teacher_fc_is_known_unused():
    from furnace.models.weights import official_to_segmentor

    state = dict(full_model("wrn50_2").state_dict())
    state["backbone.fc.weight"], state["backbone.fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    net, dropped = official_to_segmentor(state, "wrn50_2")
    assert dropped == ["backbone.fc.weight", "backbone.fc.bias"]
    assert torch.equal(net.classifier.weight, state["classifier.weight"])


def test_official_conversion_errors(tmp_path, capsys):
    net = _fresh("resnet18")
    src = tmp_path / "odd.pth"
    official_file(src, {"branch1": net}, {"branch1.head.aspp.extra_conv.weight": torch.zeros(3)})
    dst = tmp_path / "out.pth"
    assert convert_official.main([str(src), str(dst), "--arch", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "odd.pth" in err and "unknown: head.aspp.extra_conv.weight" in err
    assert not dst.exists()
    # the unused tensors are only accepted for the architecture that carried them
    official_file(src, {"branch1": net}, {"branch1.backbone.fc.weight": torch.zeros(1000, 512)})
    assert convert_official.main([str(src), str(dst), "--arch", "resnet18"]) == 2
    assert "backbone.fc.weight" in capsys.readouterr().err
    official_file(src, {"branch1": net})
    assert convert_official.main([str(src), str(dst), "--arch", "resnet101"]) == 2
    assert "try --arch resnet18" in capsys.readouterr().err
    assert convert_official.main([str(src), str(dst), "--arch", "resnet18", "--num-classes", "19"]) == 2
    assert "21 classes" in capsys.readouterr().err
    assert convert_official.main([str(src), str(dst), "--arch", "resnet18", "--branch", "branch3"]) == 2
    assert "no tensors under 'branch3.'" in capsys.readouterr().err
    assert not dst.exists()


def test_convert_official_cli_help(capsys):
    from furnace.tools import convert_official

    with pytest.raises(SystemExit) as exc:
        convert_official.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "--branch" in out and "branch3" in out and "--num-classes" in out
