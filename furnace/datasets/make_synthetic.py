"""Generate the embedded synthetic dataset: VOC-shaped, small, deterministic (byte-identical files), not trivial:
``python -m furnace.datasets.make_synthetic --root DATA/synthetic --seed 0``.

Seven classes: background and {striped, dotted, grid} x {dark pattern on light, light on dark}: local cues a small
network learns from scratch on a CPU, but not well from 1/8 of the labels. Textures run horizontally or vertically
(``TEXTURE_ANGLES``: with any angle, more labels did not reliably help the demo's student). Objects (the shape
carries no class) may overlap; cluttered backgrounds, blur, noise and JPEG; the module constants are the knobs.
"""

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

from .layouts import LAYOUTS, SYNTHETIC_CLASSES
from ..utils import UserError, run_cli
from .make_splits import DEFAULT_RATIOS, write_splits

DEFAULT_NUM_TRAIN = 480
DEFAULT_NUM_VAL = 120
DEFAULT_SIZE = 64  # = synthetic_config's crop_size
JPEG_QUALITY = 90
# Difficulty knobs (ranges are inclusive-exclusive for counts, fractions of the shorter side for sizes).
OBJECTS_PER_IMAGE = (1, 3)
OBJECT_RADIUS = (0.22, 0.4)
CLUTTER_PER_IMAGE = (0, 3)
CHECKER_DISTRACTOR_P = 0.3  # share of background distractors drawn as a checkerboard
TOP_STROKES = (0, 2)  # thin background strokes drawn over the objects
NOISE_SIGMA = (2.0, 5.0)
BACKGROUND_SATURATION = 0.5  # 0 = grey backgrounds, 1 = fully random colours
BLUR_SIGMA_MAX = 0.8
# Texture scales, fractions of the shorter side: coarse enough to survive the 0.5x training scale.
TEXTURE_PERIOD = (0.13, 0.2)
TEXTURE_ANGLES = 2  # textures and checkers run along one of n orientations (0, 180/n, ... deg); 0: any angle
LINE_FRACTION = (0.25, 0.4)  # stripe / grid-line width and dot diameter, fractions of the period
PATTERN_CONTRAST = (0.55, 0.8)  # how far the pattern shade moves from the base towards black or white
_SPLIT_TAGS = {"train": 1, "val": 2}


def _color(rng) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


class _Canvas:
    """Coordinate grids of one image size, reused for every texture drawn at that size."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.unit = min(h, w)

    def _frame(self, rng) -> tuple[np.ndarray, np.ndarray, float]:
        """Rotated coordinates (u, v) and a period, both random."""
        n = TEXTURE_ANGLES
        theta = math.pi * int(rng.integers(n)) / n if n else rng.uniform(0, math.pi)
        cos, sin = math.cos(theta), math.sin(theta)
        u = self.xx * cos + self.yy * sin + rng.uniform(0, 100)
        v = -self.xx * sin + self.yy * cos + rng.uniform(0, 100)
        return u, v, max(4.0, rng.uniform(*TEXTURE_PERIOD) * self.unit)

    def texture(self, rng, kind: int, light: bool) -> np.ndarray:
        """(h, w, 3) float32 stripes (kind 0), dots (1) or grid (2) in a random hue, light on dark or dark on light."""
        u, v, period = self._frame(rng)
        width = period * rng.uniform(*LINE_FRACTION)
        du, dv = np.mod(u, period), np.mod(v, period)
        if kind == 0:
            on = du < width
        elif kind == 1:
            du, dv = du - period / 2, dv - period / 2
            on = du * du + dv * dv < (width / 2 + 0.5) ** 2
        else:
            on = (du < width * 0.7) | (dv < width * 0.7)
        hue, contrast = _color(rng), rng.uniform(*PATTERN_CONTRAST)
        if light:
            base = hue * 0.35
            pattern = base + (255.0 - base) * contrast
        else:
            base = hue * 0.5 + 110.0
            pattern = base * (1.0 - contrast)
        return np.where(on[..., None], pattern, base)

    def checker(self, rng) -> np.ndarray:
        """(h, w, 3) float32 checkerboard of two random colours (a background distractor)."""
        u, v, period = self._frame(rng)
        on = (np.mod(u, 2 * period) < period) ^ (np.mod(v, 2 * period) < period)
        return np.where(on[..., None], _color(rng), _color(rng))

    def background(self, rng) -> np.ndarray:
        """Smooth random colour field (h, w, 3) float32."""
        grid = rng.uniform(30, 225, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
        grid = BACKGROUND_SATURATION * grid + (1 - BACKGROUND_SATURATION) * grid.mean(axis=2, keepdims=True)
        return cv2.resize(grid, (self.w, self.h), interpolation=cv2.INTER_CUBIC)


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
        image[mask] = canvas.checker(rng)[mask] if rng.random() < CHECKER_DISTRACTOR_P else _color(rng)

    for _ in range(int(rng.integers(*OBJECTS_PER_IMAGE))):  # objects
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        kind, light = (cls - 1) // 2, (cls - 1) % 2 == 1
        shape = int(rng.integers(3))
        r = rng.uniform(*OBJECT_RADIUS) * unit
        cx, cy = rng.uniform(0.5 * r, w - 0.5 * r), rng.uniform(0.5 * r, h - 0.5 * r)
        mask = _shape_mask(h, w, shape, cx, cy, r, rng.uniform(0, 2 * math.pi)).astype(bool)
        image[mask] = canvas.texture(rng, kind, light)[mask]
        label[mask] = cls

    _strokes(image, rng, int(rng.integers(*TOP_STROKES)), unit, label)
    sigma = rng.uniform(0.0, BLUR_SIGMA_MAX)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image += rng.normal(0.0, rng.uniform(*NOISE_SIGMA), image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (1 << 64), _SPLIT_TAGS[split], index]))


def generate(root, seed: int = 0, num_train: int = DEFAULT_NUM_TRAIN, num_val: int = DEFAULT_NUM_VAL,
             size=DEFAULT_SIZE, ratios=DEFAULT_RATIOS, progress: bool = False) -> Path:
    """Write the dataset into ``root`` (e.g. ``DATA/synthetic``) and return it; ``size``: int or (height, width)."""
    root = Path(root)
    h, w = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if num_train < 1 or num_val < 1 or min(h, w) < 16:
        raise ValueError("need num_train >= 1, num_val >= 1 and images of at least 16x16")
    layout = LAYOUTS["synthetic"]
    from tqdm import tqdm
    jobs = [("train", i) for i in range(num_train)] + [("val", i) for i in range(num_val)]
    names = {"train": [], "val": []}
    for split, index in tqdm(jobs, desc="synthetic", unit="img", disable=not progress):
        folder = root / layout.split_dirs[split]
        (folder / "image").mkdir(parents=True, exist_ok=True)
        (folder / "label").mkdir(parents=True, exist_ok=True)
        name = f"{split}_{index:05d}"
        image, label = render_sample(_sample_rng(seed, split, index), (h, w))
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok_jpg, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        ok_png, png = cv2.imencode(".png", label)
        assert ok_jpg and ok_png
        (folder / "image" / f"{name}.jpg").write_bytes(jpg.tobytes())
        (folder / "label" / f"{name}.png").write_bytes(png.tobytes())
        names[split].append(name)
    (root / layout.train_list).write_text("".join(f"{n}\n" for n in names["train"]))
    (root / layout.val_list).write_text("".join(f"{n}\n" for n in names["val"]))
    if ratios:
        write_splits(root / layout.train_list, root / layout.subset_dir, ratios, seed, prefix="train_aug")
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m furnace.datasets.make_synthetic",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="dataset folder to write, e.g. DATA/synthetic")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help=f"default {DEFAULT_NUM_TRAIN}")
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL, help=f"default {DEFAULT_NUM_VAL}")
    parser.add_argument("--size", type=int, nargs="+", default=[DEFAULT_SIZE], metavar="PX",
                        help=f"image size: one value (square) or WIDTH HEIGHT (default {DEFAULT_SIZE})")
    parser.add_argument("--ratios", type=int, nargs="+", default=list(DEFAULT_RATIOS), help="partitions 1/N to write")
    args = parser.parse_args(argv)

    def body():
        if len(args.size) not in (1, 2):
            raise UserError(f"--size {' '.join(map(str, args.size))}: give one value (square) or WIDTH HEIGHT")
        size = args.size[0] if len(args.size) == 1 else (args.size[1], args.size[0])
        try:
            root = generate(args.root, args.seed, args.num_train, args.num_val, size, args.ratios, progress=True)
        except ValueError as err:
            raise UserError(f"make_synthetic: {err}") from err
        print(f"wrote {args.num_train} train + {args.num_val} val images to {root}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
