"""The sliding-window geometry of evaluation (SPEC §8), shared by the PyTorch evaluator and the numpy one."""

def window_stride(crop: int) -> int:
    """``ceil(2/3 * crop)`` in integer arithmetic (800 -> 534, 512 -> 342)."""
    return -(-2 * crop // 3)


def center_pad(h: int, w: int, crop: int) -> tuple[int, int, int, int]:
    """Padding ``(top, bottom, left, right)`` that centres an axis shorter than ``crop`` in it."""
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    return ph // 2, ph - ph // 2, pw // 2, pw - pw // 2


def _axis_starts(size: int, crop: int, stride: int) -> list[int]:
    if size <= crop:
        return [0]
    return list(range(0, size - crop, stride)) + [size - crop]


def sliding_windows(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows ``(y0, y1, x0, x1)`` covering an ``h x w`` image padded by :func:`center_pad`.

    Coordinates are in the padded image of size ``(max(h, crop), max(w, crop))``; every window is
    ``crop x crop``. 1024x2048 at crop 800 / stride 534 gives rows [0, 224], columns
    [0, 534, 1068, 1248]: 8 windows. An image not larger than the window gives one window.
    """
    ph, pw = max(h, crop), max(w, crop)
    return [(y, y + crop, x, x + crop) for y in _axis_starts(ph, crop, stride) for x in _axis_starts(pw, crop, stride)]
