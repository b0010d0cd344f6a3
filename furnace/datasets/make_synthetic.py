"""Generate the embedded synthetic dataset: VOC-shaped, small, deterministic, and not trivial.

    python -m furnace.datasets.make_synthetic --root DATA/synthetic --seed 0

Seven classes: background and {circle, square, triangle} × {striped, dotted} — the class depends on
shape AND texture. Object colours are random (never tied to the class; the stripes or dots are a dark
shade of the object's colour, so the texture reads the same whatever the hue); objects vary in scale
and rotation and may overlap (the later one occludes, labels follow). Backgrounds are cluttered: a
smooth, half-desaturated random colour field, distractor strokes, elongated ellipses and spiky stars
(a few of them striped or dotted, so texture alone does not decide the class), and thin strokes over
the objects (labelled background). Blur, noise and JPEG compression finish each image. The module
constants below are the difficulty knobs.

Layout (as VOC): ``train_aug/{image,label}``, ``val/{image,label}``, ``train_aug.txt``, ``val.txt``
and ``subset_train_aug/train_aug_{labeled,unlabeled}_1-{16,8,4,2}.txt`` (:mod:`make_splits`, same seed).
Files are byte-identical for the same arguments.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

from .layouts import SYNTHETIC_CLASSES, get_layout
from .make_splits import DEFAULT_RATIOS, write_splits

DEFAULT_NUM_TRAIN = 480
DEFAULT_NUM_VAL = 120
DEFAULT_SIZE = 64  # = synthetic_config's crop_size
JPEG_QUALITY = 90
# Difficulty knobs (ranges are inclusive-exclusive for counts, fractions of the shorter side for sizes).
OBJECTS_PER_IMAGE = (1, 3)
OBJECT_RADIUS = (0.22, 0.4)
CLUTTER_PER_IMAGE = (0, 3)
TEXTURED_DISTRACTOR_P = 0.1  # share of background distractors that carry a stripe/dot texture
TOP_STROKES = (0, 2)  # thin background strokes drawn over the objects
NOISE_SIGMA = (2.0, 5.0)
BACKGROUND_SATURATION = 0.5  # 0 = grey backgrounds, 1 = fully random colours
BLUR_SIGMA_MAX = 0.8
# Texture scales, fractions of the shorter side: coarse enough to survive the 0.5x training scale.
STRIPE_PERIOD = (0.12, 0.18)
DOT_SPACING = (0.13, 0.18)
ROTATION_MAX = 180.0  # degrees away from the upright pose of squares and triangles
DARK_PATTERN = True  # pattern in a dark shade of the object's colour (False: two unrelated colours)
_SPLIT_TAGS = {"train": 1, "val": 2}


def _color(rng) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _contrasting_pair(rng) -> tuple[np.ndarray, np.ndarray]:
    a = _color(rng)
    while True:
        b = _color(rng)
        if np.abs(a - b).sum() > 150:
            return a, b


class _Canvas:
    """Coordinate grids of one image size, reused for every texture drawn at that size."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.unit = min(h, w)

    def texture(self, rng, kind: int) -> np.ndarray:
        """(h, w, 3) float32: stripes (kind 0) or dots (kind 1) with random colour, orientation and
        period (see DARK_PATTERN)."""
        if DARK_PATTERN:
            a = _color(rng) * 0.6 + 100.0  # a light base and the pattern in a dark shade of it
            b = a * 0.3
        else:
            a, b = _contrasting_pair(rng)
        theta = rng.uniform(0, math.pi)
        cos, sin = math.cos(theta), math.sin(theta)
        u = self.xx * cos + self.yy * sin
        if kind == 0:
            period = max(4.0, rng.uniform(*STRIPE_PERIOD) * self.unit)
            on = np.mod(u, period) < period * rng.uniform(0.4, 0.6)
        else:
            spacing = max(5.0, rng.uniform(*DOT_SPACING) * self.unit)
            radius = spacing * rng.uniform(0.25, 0.35)
            v = -self.xx * sin + self.yy * cos
            du = np.mod(u, spacing) - spacing / 2
            dv = np.mod(v, spacing) - spacing / 2
            on = du * du + dv * dv < radius * radius
        return np.where(on[..., None], b, a)

    def background(self, rng) -> np.ndarray:
        """Smooth random colour field (h, w, 3) float32."""
        grid = rng.uniform(30, 225, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
        grid = BACKGROUND_SATURATION * grid + (1 - BACKGROUND_SATURATION) * grid.mean(axis=2, keepdims=True)
        return cv2.resize(grid, (self.w, self.h), interpolation=cv2.INTER_CUBIC)


def _angle(rng, shape: int) -> float:
    """Rotation of a shape: the upright pose (a corner up) turned by at most ROTATION_MAX degrees."""
    upright = -math.pi / 2 if shape == 2 else math.pi / 4
    return upright + math.radians(rng.uniform(-ROTATION_MAX, ROTATION_MAX))


def _shape_mask(h: int, w: int, shape: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """uint8 (h, w) mask of a circle (0), square (1) or equilateral triangle (2) of size ``r``."""
    mask = np.zeros((h, w), np.uint8)
    if shape == 0:
        cv2.circle(mask, (int(round(cx)), int(round(cy))), max(2, int(round(r))), 1, -1)
        return mask
    corners, radius = (4, r * 1.15) if shape == 1 else (3, r * 1.3)  # similar areas across shapes
    angles = angle + np.arange(corners) * (2 * math.pi / corners)
    pts = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def _distractor_mask(h: int, w: int, rng, unit: int) -> np.ndarray:
    """An elongated ellipse or a spiky star (never a circle, square or triangle)."""
    mask = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    size = rng.uniform(0.1, 0.25) * unit
    if rng.random() < 0.5:
        axes = (max(2, int(size)), max(1, int(size / rng.uniform(2.0, 3.5))))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    else:
        n = 2 * int(rng.integers(4, 7))
        angles = rng.uniform(0, 2 * math.pi) + np.arange(n) * (2 * math.pi / n)
        radii = size * np.where(np.arange(n) % 2 == 0, 1.0, rng.uniform(0.35, 0.55))
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def _strokes(image: np.ndarray, rng, count: int, unit: int, label: np.ndarray | None = None) -> None:
    h, w = image.shape[:2]
    for _ in range(count):
        n = int(rng.integers(2, 5))
        pts = np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n)], 1).round().astype(np.int32)
        thickness = int(rng.integers(1, max(2, unit // 40) + 1))
        color = tuple(float(c) for c in _color(rng))
        cv2.polylines(image, [pts], False, color, thickness, cv2.LINE_AA)
        if label is not None:
            cv2.polylines(label, [pts], False, 0, thickness, cv2.LINE_8)


def render_sample(rng: np.random.Generator, size=(DEFAULT_SIZE, DEFAULT_SIZE)) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic sample: image (h, w, 3) uint8 RGB and label (h, w) uint8 in 0..6."""
    h, w = size
    canvas = _Canvas(h, w)
    unit = canvas.unit
    image = canvas.background(rng)
    label = np.zeros((h, w), np.uint8)

    for _ in range(int(rng.integers(*CLUTTER_PER_IMAGE))):  # background clutter
        if rng.random() < 0.3:
            _strokes(image, rng, 1, unit)
            continue
        mask = _distractor_mask(h, w, rng, unit).astype(bool)
        fill = canvas.texture(rng, int(rng.integers(2))) if rng.random() < TEXTURED_DISTRACTOR_P else _color(rng)
        image[mask] = fill[mask] if np.ndim(fill) == 3 else fill

    for _ in range(int(rng.integers(*OBJECTS_PER_IMAGE))):  # objects
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        shape, texture = (cls - 1) // 2, (cls - 1) % 2
        r = rng.uniform(*OBJECT_RADIUS) * unit
        cx, cy = rng.uniform(0.5 * r, w - 0.5 * r), rng.uniform(0.5 * r, h - 0.5 * r)
        mask = _shape_mask(h, w, shape, cx, cy, r, _angle(rng, shape)).astype(bool)
        image[mask] = canvas.texture(rng, texture)[mask]
        label[mask] = cls

    _strokes(image, rng, int(rng.integers(*TOP_STROKES)), unit, label)
    sigma = rng.uniform(0.0, BLUR_SIGMA_MAX)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image += rng.normal(0.0, rng.uniform(*NOISE_SIGMA), image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (1 << 64), _SPLIT_TAGS[split], index]))


def generate(
    root,
    seed: int = 0,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    size=DEFAULT_SIZE,
    ratios=DEFAULT_RATIOS,
    progress: bool = False,
) -> Path:
    """Write the synthetic dataset under ``root`` (the dataset folder, e.g. ``DATA/synthetic``).

    ``size`` is an int (square) or (height, width). Returns ``root``. Deterministic in all arguments.
    """
    root = Path(root)
    h, w = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if num_train < 1 or num_val < 1 or min(h, w) < 16:
        raise ValueError("need num_train >= 1, num_val >= 1 and images of at least 16x16")
    layout = get_layout("synthetic")
    jobs = [("train", i) for i in range(num_train)] + [("val", i) for i in range(num_val)]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="synthetic", unit="img")
    names = {"train": [], "val": []}
    for split, index in jobs:
        folder = root / layout.split_dirs[split]
        (folder / "image").mkdir(parents=True, exist_ok=True)
        (folder / "label").mkdir(parents=True, exist_ok=True)
        name = f"{split}_{index:05d}"
        image, label = render_sample(_sample_rng(seed, split, index), (h, w))
        ok1, jpg = cv2.imencode(
            ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        ok2, png = cv2.imencode(".png", label)
        assert ok1 and ok2
        (folder / "image" / f"{name}.jpg").write_bytes(jpg.tobytes())
        (folder / "label" / f"{name}.png").write_bytes(png.tobytes())
        names[split].append(name)
    (root / layout.train_list).write_text("".join(f"{n}\n" for n in names["train"]))
    (root / layout.val_list).write_text("".join(f"{n}\n" for n in names["val"]))
    if ratios:
        write_splits(root / layout.train_list, root / layout.subset_dir, ratios, seed, prefix="train_aug")
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m furnace.datasets.make_synthetic",
        description="Write the synthetic VOC-shaped dataset (7 classes: background + {circle, square, triangle} x "
        "{striped, dotted}) with its lists and 1/16..1/2 partitions. Deterministic given --seed.",
    )
    parser.add_argument("--root", required=True, help="dataset folder to write, e.g. DATA/synthetic")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument(
        "--num-train", type=int, default=DEFAULT_NUM_TRAIN, help=f"training images (default {DEFAULT_NUM_TRAIN})"
    )
    parser.add_argument(
        "--num-val", type=int, default=DEFAULT_NUM_VAL, help=f"validation images (default {DEFAULT_NUM_VAL})"
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=[DEFAULT_SIZE],
        metavar="PX",
        help=f"image size: one value (square) or WIDTH HEIGHT (default {DEFAULT_SIZE})",
    )
    parser.add_argument("--ratios", type=int, nargs="+", default=list(DEFAULT_RATIOS), help="partitions 1/N to write")
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2):
        parser.error("--size takes one value or WIDTH HEIGHT")
    size = args.size[0] if len(args.size) == 1 else (args.size[1], args.size[0])
    try:
        root = generate(args.root, args.seed, args.num_train, args.num_val, size, args.ratios, progress=True)
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {args.num_train} train + {args.num_val} val images to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
