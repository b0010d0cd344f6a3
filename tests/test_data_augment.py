"""Training transforms (SPEC §3) and CutMix box masks."""

import numpy as np
import pytest

from furnace.runtime.images import IMAGENET_MEAN, IMAGENET_STD
from furnace.datasets.cutmix import box_mask
from furnace.datasets.transforms import crop_normalize, normalize, random_scale, train_transform

SCALES = [0.5, 0.75, 1.0, 1.5, 1.75, 2.0]


def denormalize(image):
    return np.round((image * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255).astype(int)


def coordinate_image(h, w):
    """R = x, G = y (both < 256): each pixel says where it came from."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx, yy, np.full_like(xx, 7)], -1).astype(np.uint8)


def test_normalize_is_imagenet_mean_std_in_rgb():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    expected = (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    out = normalize(image)
    assert out.dtype == np.float32 and out.shape == (5, 7, 3)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_random_crop_offsets_cover_full_range():
    h, w, crop = 40, 43, 37  # offsets y in [0, 3], x in [0, 6]
    image = coordinate_image(h, w)
    label = np.zeros((h, w), np.uint8)
    seen_x, seen_y = set(), set()
    for seed in range(300):
        out, out_label = crop_normalize(image, label, crop, np.random.default_rng(seed))
        pix = denormalize(out)
        x0, y0 = pix[0, 0, 0], pix[0, 0, 1]
        assert 0 <= x0 <= w - crop and 0 <= y0 <= h - crop
        # a contiguous window, no padding
        assert (pix[..., 0] == x0 + np.arange(crop)[None]).all() and (
            pix[..., 1] == y0 + np.arange(crop)[:, None]
        ).all()
        assert (out_label == 0).all()
        seen_x.add(x0)
        seen_y.add(y0)
    assert seen_x == set(range(w - crop + 1)) and seen_y == set(range(h - crop + 1))


def test_centred_padding_values():
    image = np.full((10, 21, 3), 200, np.uint8)
    label = np.full((10, 21), 3, np.uint8)
    out, out_label = crop_normalize(image, label, 32, np.random.default_rng(0))
    assert out.shape == (32, 32, 3) and out_label.shape == (32, 32)
    inside = np.zeros((32, 32), bool)
    inside[11:21, 5:26] = True  # (32 - 10) // 2 = 11, (32 - 21) // 2 = 5
    assert (out[~inside] == 0).all() and (out_label[~inside] == 255).all()
    assert (out_label[inside] == 3).all() and np.allclose(out[inside], normalize(image[:1, :1])[0, 0])


def test_one_axis_cropped_other_padded():
    image = coordinate_image(12, 50)
    out, out_label = crop_normalize(image, np.ones((12, 50), np.uint8), 20, np.random.default_rng(1))
    assert (out_label[:4] == 255).all() and (out_label[16:] == 255).all() and (out_label[4:16] == 1).all()


def test_random_scale_uses_the_configured_set():
    image = np.zeros((40, 60, 3), np.uint8)
    sizes = {}
    for seed in range(200):
        out, label, s = random_scale(image, np.zeros((40, 60), np.uint8), np.random.default_rng(seed), SCALES)
        assert s in SCALES and out.shape[:2] == label.shape == (int(40 * s), int(60 * s))
        sizes[s] = out.shape
    assert set(sizes) == set(SCALES)


def test_random_scale_truncates_the_new_size_as_the_original():
    # 333 * 0.75 = 249.75 and 101 * 0.75 = 75.75: the original's int() gives 249 x 75, round would give 250 x 76
    image = np.zeros((333, 101, 3), np.uint8)
    out, label, s = random_scale(image, np.zeros((333, 101), np.uint8), np.random.default_rng(0), [0.75])
    assert s == 0.75 and out.shape[:2] == label.shape == (249, 75)


def test_label_stays_in_label_set_and_image_label_stay_aligned():
    rng = np.random.default_rng(0)
    label = rng.choice(np.array([0, 4, 9], np.uint8), size=(30, 45))
    image = np.repeat((label * 20)[..., None], 3, axis=2).astype(np.uint8)
    flips = 0
    for seed in range(60):
        out, out_label = train_transform(image, label, np.random.default_rng(seed), crop_size=48, scales=SCALES)
        assert out.shape == (48, 48, 3) and out.dtype == np.float32 and out_label.dtype == np.uint8
        assert set(np.unique(out_label)) <= {0, 4, 9, 255}
        # at scale 1 there is no interpolation: image and label must agree pixel for pixel
        out1, label1 = train_transform(image, label, np.random.default_rng(seed), crop_size=48, scales=[1.0])
        valid = label1 != 255
        assert (denormalize(out1)[..., 0][valid] == label1[valid].astype(int) * 20).all()
        window = label1[9:39, 1:46]  # centred: (48 - 30) // 2, (48 - 45) // 2
        assert np.array_equal(window, label) or np.array_equal(window, label[:, ::-1])
        flips += int(np.array_equal(window, label[:, ::-1]))
    assert 15 < flips < 45  # flipped about half the time


def test_transform_is_deterministic_given_the_generator():
    image = np.random.default_rng(1).integers(0, 256, (33, 41, 3)).astype(np.uint8)
    label = np.random.default_rng(2).integers(0, 5, (33, 41)).astype(np.uint8)
    a = train_transform(image, label, np.random.default_rng(5), crop_size=32, scales=SCALES)
    b = train_transform(image, label, np.random.default_rng(5), crop_size=32, scales=SCALES)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    img_only, none = train_transform(image, None, np.random.default_rng(5), crop_size=32, scales=SCALES)
    assert none is None and np.array_equal(img_only, a[0])


# ----------------------------------------------------------------------------- CutMix


def test_cutmix_single_box_is_a_whole_rectangle_inside_the_image():
    for seed in range(200):
        mask = box_mask((64, 80), np.random.default_rng(seed), n_boxes=1)
        assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
        ys, xs = np.nonzero(mask)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert mask.sum() == h * w  # one filled box, never clipped by the border
        frac_h, frac_w = h / 64 * np.sqrt(3), w / 80 * np.sqrt(3)
        assert 0.25 - 0.06 <= frac_h * frac_w <= 0.5 + 0.06  # area fraction p (before the 1/3)
        assert frac_h <= 1.05 and frac_w <= 1.05


def test_cutmix_mean_coverage_and_variety():
    rng = np.random.default_rng(123)
    masks = np.stack([box_mask((96, 96), rng) for _ in range(2000)])
    assert set(np.unique(masks)) == {0.0, 1.0}
    assert abs(masks.mean() - 0.25) < 0.03
    assert len({m.tobytes() for m in masks}) == 2000


def test_cutmix_boxes_toggle():
    # With 2 identical draws the boxes cancel: XOR, not OR.
    class Same:
        def uniform(self, a, b):
            return (a + b) / 2

        def integers(self, a, b):
            return a

    assert box_mask((32, 32), Same(), n_boxes=2).sum() == 0
    assert box_mask((32, 32), Same(), n_boxes=3).sum() > 0


@pytest.mark.parametrize("area", [(0.25, 0.5), (0.1, 0.1)])
def test_cutmix_area_parameter(area):
    rng = np.random.default_rng(0)
    single = np.mean([box_mask((120, 120), rng, n_boxes=1, area=area).mean() for _ in range(400)])
    assert abs(single - np.mean(area) / 3) < 0.01


def test_cutmix_box_position_is_rounded_uniform_as_the_original():
    """Offset = round((side - box) * U(0, 1)): with room R the offsets 0 and R have probability 1/(2R),
    each interior offset 1/R (an integer draw would give every offset 1/(R + 1))."""
    rng = np.random.default_rng(7)
    area = (0.1875, 0.1875)  # with u fixed below, box side = round(sqrt(0.1875 / 3) * 40) = 10 per axis
    counts = np.zeros(31, int)  # room 40 - 10 = 30
    n = 30_000

    class FixedAspect:  # p and u fixed (square box), positions from the seeded generator
        def __init__(self):
            self.calls = 0

        def uniform(self, a, b):
            self.calls += 1
            if self.calls % 4 in (1, 2):
                return a if self.calls % 4 == 1 else 0.5
            return rng.uniform(a, b)

    gen = FixedAspect()
    for _ in range(n):
        ys, xs = np.nonzero(box_mask((40, 40), gen, n_boxes=1, area=area))
        assert ys.max() - ys.min() + 1 == 10 and xs.max() - xs.min() + 1 == 10
        counts[ys.min()] += 1
    interior = counts[1:-1].mean()
    assert counts[1:-1].min() > 0.85 * interior and counts[1:-1].max() < 1.15 * interior
    for end in (counts[0], counts[-1]):
        assert 0.4 * interior < end < 0.6 * interior  # half as likely as an interior offset
