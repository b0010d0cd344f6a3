"""Each loss against an independent (loop / numpy) computation of its formula on random tensors."""
import math

import numpy as np
import pytest
import torch

from furnace.losses import (
    content_aware_loss,
    mean_per_image,
    cps_loss,
    cross_entropy,
    cutmix_pseudo_label,
    hard_pseudo_label,
    mix_by_mask,
    ohem_cross_entropy,
    pixel_consistency_loss,
    semantic_sensitive_loss,
)


@pytest.fixture
def rng():
    torch.manual_seed(0)
    return np.random.default_rng(0)


def _ce_pixels(logits, target, ignore=255):
    """Per image, the list of -log softmax[target] at its non-ignored pixels, with numpy loops."""
    lg = logits.detach().double().numpy()
    tg = target.numpy()
    B, C, H, W = lg.shape
    per_image = []
    for b in range(B):
        losses = []
        for i in range(H):
            for j in range(W):
                t = tg[b, i, j]
                if t == ignore:
                    continue
                z = lg[b, :, i, j]
                losses.append(-(z[t] - z.max() - math.log(np.exp(z - z.max()).sum())))
        per_image.append(losses)
    return per_image


def _ce_reference(logits, target, ignore=255):
    """Mean over each image's non-ignored pixels (0 for an image without any), then over the images."""
    return float(np.mean([np.mean(p) if p else 0.0 for p in _ce_pixels(logits, target, ignore)]))


def _ce_pooled(logits, target, ignore=255):
    """One mean over the non-ignored pixels of the whole batch (the rule per-image losses replace)."""
    pixels = [v for p in _ce_pixels(logits, target, ignore) for v in p]
    return float(np.mean(pixels))


def test_cross_entropy_ignores_void_and_matches_formula(rng):
    logits = torch.randn(2, 5, 6, 7)
    target = torch.from_numpy(rng.integers(0, 5, (2, 6, 7)))
    target[0, :2] = 255
    assert cross_entropy(logits, target).item() == pytest.approx(_ce_reference(logits, target), rel=1e-5)


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = cross_entropy(logits, torch.full((1, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()  # still differentiable
    assert torch.all(logits.grad == 0)


def test_ohem_keeps_hard_pixels_only(rng):
    logits = torch.randn(2, 4, 10, 10) * 3
    target = torch.from_numpy(rng.integers(0, 4, (2, 10, 10)))
    target[1, 0] = 255
    min_kept = 30
    # independent: per image, threshold = max(0.7, min_kept-th smallest true-class probability)
    prob = logits.softmax(1).gather(1, target.clamp(max=3).unsqueeze(1)).squeeze(1).numpy()
    keep = np.zeros(target.shape, bool)
    for b in range(2):
        valid = target[b].numpy() != 255
        p = prob[b][valid]
        thr = max(0.7, np.sort(p)[min_kept - 1]) if valid.sum() > min_kept else np.inf
        keep[b] = valid & (prob[b] <= thr)
    hard_target = target.clone()
    hard_target[~torch.from_numpy(keep)] = 255
    expected = _ce_reference(logits, hard_target)
    assert ohem_cross_entropy(logits, target, thresh=0.7, min_kept=min_kept).item() == pytest.approx(expected, rel=1e-5)
    # with min_kept above the pixel count every valid pixel is kept: plain CE
    assert ohem_cross_entropy(logits, target, min_kept=10_000).item() == pytest.approx(
        cross_entropy(logits, target).item(), rel=1e-6
    )


def test_ohem_keeps_at_least_min_kept_when_all_easy():
    logits = torch.zeros(1, 2, 8, 8)
    logits[:, 0] = 10.0  # every pixel confidently class 0, probability ~1 > 0.7
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    loss = ohem_cross_entropy(logits, target, thresh=0.7, min_kept=5)
    assert loss.item() > 0  # the min_kept easiest-hard pixels still count
    assert math.isfinite(loss.item())


def test_semantic_sensitive_formula(rng):
    s = torch.randn(3, 6, 5, 4)
    t = torch.randn(3, 6, 5, 4)
    expected = np.mean([np.abs(s[b].numpy().mean((1, 2)) - t[b].numpy().mean((1, 2))).sum() for b in range(3)])
    assert semantic_sensitive_loss(s, t).item() == pytest.approx(expected, rel=1e-5)
    # mean over images: duplicating the batch leaves it unchanged (independent of per-GPU batch)
    assert semantic_sensitive_loss(torch.cat([s, s]), torch.cat([t, t])).item() == pytest.approx(expected, rel=1e-5)


def test_content_aware_formula():
    torch.manual_seed(1)
    fs = torch.randn(2, 16, 28, 21)
    ft = torch.randn(2, 32, 28, 21)  # teacher width may differ
    grid = 7

    def sim(f):
        out = []
        for b in range(f.shape[0]):
            x = f[b].double().numpy()
            H, W = x.shape[1:]
            regions = []
            for i in range(grid):  # adaptive average pooling cell boundaries
                for j in range(grid):
                    y0, y1 = (i * H) // grid, -(-((i + 1) * H) // grid)
                    x0, x1 = (j * W) // grid, -(-((j + 1) * W) // grid)
                    regions.append(x[:, y0:y1, x0:x1].mean((1, 2)))
            r = np.stack(regions)
            r = r / np.linalg.norm(r, axis=1, keepdims=True)
            out.append(r @ r.T)
        return np.stack(out)

    expected = ((sim(fs) - sim(ft)) ** 2).mean()
    assert content_aware_loss(fs, ft, grid).item() == pytest.approx(expected, rel=1e-4)
    assert content_aware_loss(fs, fs, grid).item() == pytest.approx(0.0, abs=1e-10)


def test_pixel_consistency_labeled_and_cutmix(rng):
    s = torch.randn(2, 4, 6, 6)
    t0, t1 = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    mask = torch.from_numpy(rng.integers(0, 2, (2, 1, 6, 6))).float()
    # labeled case: argmax of the teacher
    labeled = pixel_consistency_loss(s, hard_pseudo_label(t0)).item()
    assert labeled == pytest.approx(_ce_reference(s, t0.argmax(1)), rel=1e-5)
    # CutMix case: per pixel the label comes from the teacher's prediction of the image the pixel came from
    m = mask[:, 0].bool()
    expected_label = torch.where(m, t1.argmax(1), t0.argmax(1))
    assert torch.equal(cutmix_pseudo_label(t0, t1, mask), expected_label)
    assert pixel_consistency_loss(s, cutmix_pseudo_label(t0, t1, mask)).item() == pytest.approx(
        _ce_reference(s, expected_label), rel=1e-5
    )


def test_mix_by_mask_takes_second_image_where_mask_is_one():
    a, b = torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    mixed = mix_by_mask(a, b, mask)
    assert torch.all(mixed[..., :2, :] == 1) and torch.all(mixed[..., 2:, :] == 0)


def test_cps_loss_is_cross(rng):
    p1, p2 = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    y1 = torch.from_numpy(rng.integers(0, 3, (2, 5, 5)))
    y2 = torch.from_numpy(rng.integers(0, 3, (2, 5, 5)))
    expected = _ce_reference(p1, y2) + _ce_reference(p2, y1)
    assert cps_loss(p1, p2, y1, y2).item() == pytest.approx(expected, rel=1e-5)


def test_losses_are_float32_under_bf16_inputs():
    s = torch.randn(2, 4, 8, 8).bfloat16()
    assert semantic_sensitive_loss(s, s).dtype == torch.float32
    assert content_aware_loss(s, s, 2).dtype == torch.float32
    assert cross_entropy(s, torch.zeros(2, 8, 8, dtype=torch.long)).dtype == torch.float32


def _labels_with_unequal_ignore(rng, B=8, C=5, H=6, W=7):
    """Labels whose images have 0, 5, 10, ... ignored pixels; the last image is entirely ignored."""
    target = torch.from_numpy(rng.integers(0, C, (B, H, W)))
    flat = target.view(B, -1)
    for b in range(B - 1):
        flat[b, : (b * 5) % (H * W - 1)] = 255
    flat[B - 1] = 255
    return target


SPLIT_LOSSES = {
    "ce": cross_entropy,
    "ohem": lambda lg, t: ohem_cross_entropy(lg, t, thresh=0.7, min_kept=12),
    "pixel_labels": pixel_consistency_loss,
}


@pytest.mark.parametrize("name", sorted(SPLIT_LOSSES))
def test_loss_and_gradient_do_not_depend_on_the_batch_split(rng, name):
    """One batch of 8 == 8 micro-batches of 1 each scaled by 1/8, in value and in gradient on the logits."""
    fn = SPLIT_LOSSES[name]
    logits = (torch.randn(8, 5, 6, 7) * 2).requires_grad_()
    target = _labels_with_unequal_ignore(rng)
    n_ignored = (target == 255).flatten(1).sum(1)
    assert len(set(n_ignored.tolist())) > 4  # the images really differ in ignored pixels
    whole = fn(logits, target)
    (grad_whole,) = torch.autograd.grad(whole, logits)
    parts = [fn(logits[b : b + 1], target[b : b + 1]) / 8 for b in range(8)]
    split = torch.stack(parts).sum()
    (grad_split,) = torch.autograd.grad(split, logits)
    assert split.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(grad_split, grad_whole, rtol=1e-5, atol=1e-9)
    # halves (micro-batches of 4) too
    halves = (fn(logits[:4], target[:4]) + fn(logits[4:], target[4:])) / 2
    assert halves.item() == pytest.approx(whole.item(), rel=1e-6)


def test_per_image_mean_differs_from_pooled_mean_when_ignore_counts_differ(rng):
    logits = torch.randn(8, 5, 6, 7) * 2
    target = _labels_with_unequal_ignore(rng)
    ours = cross_entropy(logits, target).item()
    assert ours == pytest.approx(_ce_reference(logits, target), rel=1e-5)
    assert abs(ours - _ce_pooled(logits, target)) > 1e-2 * ours
    # equal ignore counts: the two rules agree (the original's batches had them in the reference step)
    same = target.clone()
    same[:] = target[0]
    assert cross_entropy(logits, same).item() == pytest.approx(_ce_pooled(logits, same), rel=1e-5)


def test_mean_per_image_counts_fully_ignored_images_in_the_denominator():
    per_pixel = torch.ones(4, 2, 2)
    valid = torch.ones(4, 2, 2, dtype=torch.bool)
    valid[3] = False
    valid[0, 0] = False
    assert mean_per_image(per_pixel, valid).item() == pytest.approx(3 / 4)
