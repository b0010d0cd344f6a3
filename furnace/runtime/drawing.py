"""What a prediction looks like on disk: palette colours, the overlay with its legend, the three PNGs."""
from pathlib import Path

import cv2
import numpy as np

from ..utils import UserError

OUTPUT_DIRS = ("index", "color", "overlay")


def colorize(index_map: np.ndarray, palette, fill=(255, 255, 255)) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 RGB with ``palette``; indices past it (255 = ignore) get ``fill``."""
    lut = np.empty((256, 3), np.uint8)
    lut[:] = fill
    n = min(len(palette), 255)
    lut[:n] = np.asarray(palette, np.uint8)[:n]
    return lut[np.asarray(index_map, np.uint8)]


def overlay(image: np.ndarray, pred: np.ndarray, palette: np.ndarray, names, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) RGB: ``image`` blended with the class colours, a legend of the classes present (most
    pixels first) in the top-left corner."""
    color = colorize(pred, palette).astype(np.float32)
    out = (image.astype(np.float32) * (1 - alpha) + color * alpha).round().astype(np.uint8)
    counts = np.bincount(pred.ravel(), minlength=len(names))[: len(names)]
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    scale = max(0.4, min(out.shape[:2]) / 700)
    row, pad = int(round(24 * scale)), int(round(6 * scale))
    width = max(cv2.getTextSize(str(names[c]), cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for c in present)
    box_w, box_h = min(out.shape[1], 3 * pad + row + width), min(out.shape[0], pad + row * len(present))
    panel = out[:box_h, :box_w].astype(np.float32)
    out[:box_h, :box_w] = (panel * 0.3 + 255 * 0.7).astype(np.uint8)  # a light panel behind the legend
    for i, c in enumerate(present):
        y = pad + i * row
        colour = tuple(int(v) for v in palette[c])
        cv2.rectangle(out, (pad, y), (pad + row - pad, y + row - pad), colour, thickness=-1)
        cv2.putText(out, str(names[c]), (2 * pad + row, y + row - 2 * pad), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return out


def write_outputs(out_dir: Path, name: str, image, pred, palette, names, alpha) -> None:
    """``out_dir/{index,color,overlay}/<name>.png`` of one (H, W) uint8 prediction of the (H, W, 3) RGB ``image``."""
    for sub, array in (("index", pred), ("color", colorize(pred, palette)[..., ::-1]),
                       ("overlay", overlay(image, pred, palette, names, alpha)[..., ::-1])):
        target = Path(out_dir) / sub / f"{name}.png"
        if not cv2.imwrite(str(target), np.ascontiguousarray(array)):
            raise UserError(f"{target}: cannot be written; check the --out folder's permissions and free space")
