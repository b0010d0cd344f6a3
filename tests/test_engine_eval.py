"""Evaluator: sliding-window geometry, stitching, multi-scale/flip, metrics, prediction PNGs."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from engine_toy import PALETTE, ToyNet, toy_config

from furnace.runtime.images import IMAGENET_MEAN, IMAGENET_STD
from furnace.datasets.transforms import normalize
from furnace.engine import Evaluator, format_results, sliding_windows
from furnace.engine.evaluator import center_pad, window_stride


def test_cityscapes_image_gives_eight_windows_ending_at_the_border():
    stride = window_stride(800)
    assert stride == 534  # ceil(2/3 * 800)
    wins = sliding_windows(1024, 2048, 800, stride)
    assert len(wins) == 8
    assert sorted({(y0, y1) for y0, y1, _, _ in wins}) == [(0, 800), (224, 1024)]
    assert sorted({(x0, x1) for _, _, x0, x1 in wins}) == [(0, 800), (534, 1334), (1068, 1868), (1248, 2048)]
    assert center_pad(1024, 2048, 800) == (0, 0, 0, 0)


def test_voc_image_is_centre_padded_into_one_window():
    assert sliding_windows(500, 375, 512, window_stride(512)) == [(0, 512, 0, 512)]
    top, bottom, left, right = center_pad(500, 375, 512)
    assert (top, bottom, left, right) == (6, 6, 68, 69)
    assert top + 500 + bottom == 512 and left + 375 + right == 512


def test_axis_shorter_than_window_is_padded_only_along_that_axis():
    wins = sliding_windows(300, 1000, 512, window_stride(512))
    assert {(y0, y1) for y0, y1, _, _ in wins} == {(0, 512)}
    assert [x0 for _, _, x0, _ in wins] == [0, 342, 488]
    assert center_pad(300, 1000, 512) == (106, 106, 0, 0)


class PixelNet(nn.Module):
    """Per-pixel (1x1) network: its logits do not depend on the window a pixel is seen in."""

    def __init__(self, num_classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Tanh(), nn.Conv2d(6, num_classes, 1))

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("h,w", [(40, 70), (20, 20), (20, 50), (32, 32)])
def test_sliding_window_stitches_back_the_full_image_logits(h, w):
    net = PixelNet().eval()
    cfg = toy_config("unused", eval_crop=32, eval_batch=3)
    ev = Evaluator(cfg, "cpu", class_names=["a", "b", "c"], palette=PALETTE)
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        stitched = ev.sliding_logits(net, x)
        direct = net(x)
    assert stitched.shape == (1, 3, h, w)
    torch.testing.assert_close(stitched, direct, atol=1e-5, rtol=1e-5)


class RampNet(nn.Module):
    """A 1x1 conv plus a ramp along the window's columns (a * column, per class): its logits depend on
    where in the window a pixel sits, so per-window flip, whole-image flip and window overlaps differ."""

    def __init__(self, num_classes=3):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.a = torch.tensor([0.5, -0.25, 0.125])[:num_classes]

    def forward(self, x):
        col = torch.arange(x.shape[-1], dtype=x.dtype)
        return self.conv(x) + self.a.view(1, -1, 1, 1) * col.view(1, 1, 1, -1)


def _evaluator(**overrides):
    return Evaluator(toy_config("unused", eval_crop=16, eval_batch=3, **overrides), "cpu", ["a", "b", "c"], PALETTE)


def test_one_scale_without_flip_returns_the_raw_logits():
    net = PixelNet().eval()
    image = np.random.RandomState(0).randint(0, 256, (24, 36, 3)).astype(np.uint8)
    x = torch.from_numpy(normalize(image)).permute(2, 0, 1)[None]
    with torch.no_grad():
        torch.testing.assert_close(_evaluator().predict(net, image), net(x)[0], atol=1e-5, rtol=1e-5)


def test_flip_per_window_and_raw_logits_summed_over_scales_as_the_original():
    """The original: per scale, every window's logits plus its mirrored window's logits mirrored back;
    the scales' raw logits, resized to the image, summed. For RampNet the window's ramp a*c and the
    mirrored one a*(15 - c) add up to 15a at every pixel, so by hand each scale gives
    2 * conv(normalised resized image) + 15a, wherever its (asymmetric) windows lie."""
    import cv2

    net = RampNet().eval()
    image = np.random.RandomState(1).randint(0, 256, (24, 40, 3)).astype(np.uint8)
    assert [x0 for _, _, x0, _ in sliding_windows(24, 40, 16, window_stride(16))][:4] == [0, 11, 22, 24]
    expected = torch.zeros(3, 24, 40)
    with torch.no_grad():
        for s in (1.0, 0.5):
            resized = image if s == 1.0 else cv2.resize(image, (20, 12), interpolation=cv2.INTER_LINEAR)
            x = torch.from_numpy(normalize(resized)).permute(2, 0, 1)[None]
            by_hand = 2 * net.conv(x) + 15 * net.a.view(1, -1, 1, 1)
            expected += nn.functional.interpolate(by_hand, size=(24, 40), mode="bilinear", align_corners=False)[0]
        got = _evaluator(eval_flip=True, eval_scales=[1.0, 0.5]).predict(net, image)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
        # the rules replaced: a mirrored sliding pass over the whole image, and softmax sums
        ev = _evaluator()
        x = torch.from_numpy(normalize(image)).permute(2, 0, 1)[None]
        whole_image_flip = ev.sliding_logits(net, x) + ev.sliding_logits(net, x.flip(-1)).flip(-1)
        single = _evaluator(eval_flip=True).predict(net, image)
        assert (single - whole_image_flip[0]).abs().max() > 0.5
        assert not torch.allclose(got, single.softmax(0) + expected.softmax(0), atol=0.1)


def test_evaluation_precision_follows_eval_amp_not_amp():
    cfg = toy_config("unused", amp="bf16")
    assert Evaluator(cfg, "cuda", ["a", "b", "c"], PALETTE).dtype is None  # fp32 by default
    for eval_amp, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("none", None)):
        cfg = toy_config("unused", amp="none", eval_amp=eval_amp)
        assert Evaluator(cfg, "cuda", ["a", "b", "c"], PALETTE).dtype == dtype
    # on a CPU too: training's amp=auto does not reach evaluation, eval_amp=bf16 does
    assert Evaluator(toy_config("unused", amp="auto"), "cpu", ["a", "b", "c"], PALETTE).dtype is None
    assert Evaluator(toy_config("unused", eval_amp="bf16"), "cpu", ["a", "b", "c"], PALETTE).dtype == torch.bfloat16


def test_eval_amp_is_validated():
    from furnace.config import prepare
    from furnace.utils import UserError

    with pytest.raises(UserError, match=r"eval_amp='fp32' is not one of none, bf16, fp16"):
        prepare(toy_config("unused", eval_amp="fp32"))


class OracleNet(nn.Module):
    """Predicts the class written into the red channel (value 40 * class) of the input image."""

    def forward(self, x):
        red = (x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
        cls = torch.round(red / 40).long().clamp(0, 4)
        return nn.functional.one_hot(cls, 5).permute(0, 3, 1, 2).float() * 10


class ListDataset:
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def reference_metrics(preds, gts, num_classes):
    """Independent numpy computation: per-class IoU over pixels with 0 <= gt < C."""
    pred = np.concatenate([p.ravel() for p in preds]).astype(np.int64)
    gt = np.concatenate([g.ravel() for g in gts]).astype(np.int64)
    keep = gt < num_classes
    pred, gt = pred[keep], gt[keep]
    ious = []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (gt == c))
        fp = np.sum((pred == c) & (gt != c))
        fn = np.sum((pred != c) & (gt == c))
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else float("nan"))
    present = [v for v in ious if not math.isnan(v)]
    return ious, sum(present) / len(present), float(np.mean(pred == gt))


def hand_built_set(rng, sizes):
    """Images whose red channel encodes a hand-made prediction; classes 0..4 with class 3 absent
    everywhere and class 4 only predicted (never in ground truth); ignore pixels in the labels."""
    items, preds = [], []
    for i, (h, w) in enumerate(sizes):
        gt = rng.choice([0, 1, 2], size=(h, w)).astype(np.uint8)
        pred = gt.copy()
        wrong = rng.rand(h, w) < 0.3
        pred[wrong] = rng.choice([0, 1, 2, 4], size=wrong.sum())
        gt[rng.rand(h, w) < 0.1] = 255
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0] = pred * 40
        image[..., 1] = rng.randint(0, 256, (h, w))
        items.append({"image": image, "label": gt, "name": f"img{i}"})
        preds.append(pred)
    return ListDataset(items), preds


def test_miou_equals_an_independent_reference_with_absent_classes_and_ignore_pixels(tmp_path):
    rng = np.random.RandomState(3)
    dataset, preds = hand_built_set(rng, [(30, 40), (50, 20), (16, 16)])
    cfg = toy_config(tmp_path, num_classes=5, eval_crop=24, eval_batch=4)
    res = Evaluator(cfg, "cpu").run(OracleNet(), dataset)
    ious, miou, acc = reference_metrics(preds, [d["label"] for d in dataset.items], 5)
    assert math.isnan(res["iou"][3]) and math.isnan(ious[3])
    assert res["iou"][4] == 0.0  # predicted but never in ground truth: counts, IoU 0
    np.testing.assert_allclose(res["iou"], ious, rtol=1e-12, equal_nan=True)
    assert res["miou"] == pytest.approx(miou, rel=1e-12)
    assert res["pixel_acc"] == pytest.approx(acc, rel=1e-12)
    valid = sum(int((d["label"] < 5).sum()) for d in dataset.items)
    assert res["confusion"].dtype == np.int64 and res["confusion"].sum() == valid
    assert len(res["class_names"]) == 5
    table = format_results(res)
    assert "class_3" in table and "mIoU" in table and f"{100 * miou:5.2f}" in table


def test_prediction_pngs_hold_indices_and_palette_colours(tmp_path):
    import cv2

    rng = np.random.RandomState(4)
    dataset, preds = hand_built_set(rng, [(20, 30), (10, 12)])
    palette = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90], [1, 2, 3], [200, 100, 0]], np.uint8)
    cfg = toy_config(tmp_path, num_classes=5, eval_crop=16)
    ev = Evaluator(cfg, "cpu", class_names=list("abcde"), palette=palette)
    ev.run(OracleNet(), dataset, save_pred_dir=tmp_path / "pred")
    for item, pred in zip(dataset.items, preds):
        index = cv2.imread(str(tmp_path / "pred" / "index" / f"{item['name']}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(index, pred)
        color = cv2.imread(str(tmp_path / "pred" / "color" / f"{item['name']}.png"))[..., ::-1]
        np.testing.assert_array_equal(color, palette[pred])


def test_evaluation_normalisation_uses_imagenet_statistics():
    img = np.full((2, 2, 3), 128, np.uint8)
    out = normalize(img)
    expected = (128 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5)


def test_evaluation_restores_train_mode_and_global_random_state(tmp_path):
    net = ToyNet()
    net.train()
    cfg = toy_config(tmp_path)
    from engine_toy import ToyDataset

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    Evaluator(cfg, "cpu").run(net, ToyDataset(2, seed=0))
    assert net.training and net.norm.training
    torch.testing.assert_close(torch.rand(3), expected)
