"""Images in, network input out: decoding, the ImageNet normalisation, and the INPUT arguments of the
predict commands (files, folders, list files). Shared by training, evaluation and the predictors."""
import os
from pathlib import Path

import cv2
import numpy as np

from ..utils import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# A per-channel table of the 256 possible results: cv2.LUT applies it ~6x faster than float arithmetic.
NORMALIZE_LUT = (
    ((np.arange(256, dtype=np.float64)[:, None] / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD))
    .astype(np.float32)
    .reshape(1, 256, 3)
)


def normalize(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W, 3) float32 ``(image / 255 - mean) / std`` with ImageNet mean/std."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"normalize expects an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return cv2.LUT(np.ascontiguousarray(image), NORMALIZE_LUT)


def read_bytes(path: Path, what: str) -> np.ndarray:
    """The bytes of ``path`` as a uint8 array; UserError naming the file (``what``: image | label) when it is
    missing, unreadable or empty."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except OSError as err:
        raise UserError(f"{path}: {what} file cannot be read ({err.strerror or err})") from None
    if data.size == 0:
        raise UserError(f"{path}: {what} file is empty")
    return data


def decode(data: np.ndarray, flags: int):
    """``cv2.imdecode(data, flags)``, None when OpenCV cannot decode it."""
    try:
        return cv2.imdecode(data, flags)
    except cv2.error:  # some corrupt headers raise instead of returning None
        return None


def _jpeg_scan_start(data: bytes) -> int | None:
    """Offset just past the first start-of-scan (SOS) header of a JPEG, found by walking its marker segments (so
    an EXIF thumbnail inside APP1, with its own end-of-image marker, is skipped); None when the headers are cut
    short before it (or are not JPEG segments)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # stand-alone markers carry no length
            pos += 2
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            return end if end <= len(data) else None
        if marker == 0xD9:
            return None
        pos = end
    return None


def _jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG's main image reaches its end-of-image marker: FFD9 after the first SOS (entropy-coded data
    never holds it). Bytes after the marker (phones append such trailers) are allowed."""
    start = _jpeg_scan_start(data)
    return start is not None and data.rfind(b"\xff\xd9", start) >= 0


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB; UserError naming ``path`` when it is missing,
    truncated or not an image. Decoded as the original's ``cv2.imread(path, cv2.IMREAD_COLOR)``: a JPEG's
    EXIF orientation tag is applied (labels are PNGs without one, so such an image must be stored upright)."""
    path = Path(path)
    data = read_bytes(path, "image")
    # libjpeg decodes a truncated JPEG into a grey-filled image without failing, so require the main image's end
    if data[:2].tobytes() == b"\xff\xd8" and not _jpeg_complete(data.tobytes()):
        raise UserError(f"{path}: JPEG image is truncated (no end-of-image marker); re-copy or re-download it")
    image = decode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"{path}: image cannot be decoded (truncated or not an image file); re-copy or re-download it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def collect_inputs(inputs, what: str = "INPUT", exclude=None) -> list[Path]:
    """Image paths of the ``inputs`` arguments (image files, folders searched recursively, ``.txt`` lists),
    in order, each once. A missing argument, or none holding an image, is an error (before any compute);
    files inside folders and lists are checked when read. ``what`` names the arguments in the message;
    a folder's search skips the folder ``exclude`` (the run's own output folder)."""
    found: list[Path] = []
    skip = Path(exclude).resolve() if exclude else None
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                            and not (skip and skip in p.resolve().parents))
        elif item.suffix.lower() == ".txt" and item.is_file():
            lines = [ln.strip() for ln in item.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
            found += [_list_entry(item.parent, line) for line in lines]
        elif item.is_file() or item.suffix.lower() in IMAGE_EXTS:
            found.append(item)  # a listed image that is missing is reported like an unreadable one
        else:
            raise UserError(f"{item}: {what} not found; give image files, folders or .txt lists of image paths")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UserError(f"{what} {' '.join(map(str, inputs))}: no images found ({', '.join(IMAGE_EXTS)}); give image "
                        f"files, folders holding some or .txt lists of image paths")
    return unique


def _list_entry(base: Path, line: str) -> Path:
    """A list line as a path: relative to the list's folder; a bare stem (a folder dataset's train.txt /
    val.txt) is looked up as ``images/<stem>.<ext>`` there."""
    path = Path(line) if Path(line).is_absolute() else base / line
    if path.suffix.lower() in IMAGE_EXTS:
        return path
    candidates = [folder / f"{path.name}{ext}" for folder in (path.parent / "images", path.parent) for ext in IMAGE_EXTS]
    return next((c for c in candidates if c.is_file()), path)


def output_names(paths: list[Path]) -> list[str]:
    """A file name stem per image; repeated stems get ``_2``, ``_3``, ..."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        seen[p.stem] = seen.get(p.stem, 0) + 1
        names.append(p.stem if seen[p.stem] == 1 else f"{p.stem}_{seen[p.stem]}")
    return names
