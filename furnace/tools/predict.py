"""Segment your own images with a trained (or converted) segmentor file.

    python -m furnace.tools.predict CHECKPOINT INPUT... --out DIR [--onnx model.onnx] [--classes classes.txt]
        [--crop N | --whole] [--scales 1.0 ...] [--flip] [--batch N] [--device auto|cpu|cuda] [--alpha 0.5]

INPUT: image files, folders (searched recursively for .jpg/.jpeg/.png/.bmp/.tif/.tiff/.webp) or list
files (.txt, one image path per line, relative to the list's folder; a folder dataset's train.txt /
val.txt of stems works too). Per image it writes
``DIR/index/<name>.png`` (class indices), ``DIR/color/<name>.png`` (the dataset's palette) and
``DIR/overlay/<name>.png`` (the image blended with the colours, with a legend of the classes present).

CHECKPOINT records the dataset, class names, palette and evaluation settings (snapshots of this project,
teachers, ``convert_official --dataset``); older files fall back to the dataset with that class count
(VOC 21, Cityscapes 19) or generic names. Prediction is the evaluator's: sliding windows of the recorded
``eval_crop`` (or ``--whole`` image), ``--scales`` and ``--flip`` averaged, ``--batch`` windows per pass.
With ``--onnx`` the forward pass runs in ONNX Runtime (file from ``python -m furnace.tools.export``;
CHECKPOINT may then be the .onnx file itself). An unreadable image is reported in one line and skipped;
the run ends with the list of failures and exit status 1.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from ..datasets.layouts import FOLDER_IMAGE_EXTS as IMAGE_EXTS
from ..datasets.layouts import colorize, read_classes
from ..utils import UserError, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m furnace.tools.predict", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="segmentor file (.pth), or an exported .onnx file")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="image files, folders or list files")
    p.add_argument("--out", required=True, help="output folder (index/, color/, overlay/)")
    p.add_argument("--onnx", default=None, help="run this exported file in ONNX Runtime instead of PyTorch")
    p.add_argument("--classes", default=None, help="a classes.txt whose names (and colours) replace the recorded ones")
    p.add_argument("--crop", type=int, default=None, help="sliding-window size (default: the recorded eval crop)")
    p.add_argument("--whole", action="store_true", help="the whole image in one pass instead of sliding windows")
    p.add_argument("--scales", type=float, nargs="+", default=None, help="test scales (default: recorded, or 1.0)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the horizontally flipped image (default: as recorded)")
    p.add_argument("--batch", type=int, default=4, help="sliding windows per forward pass (default 4)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = the runtime's default)")
    p.add_argument("--alpha", type=float, default=0.5, help="colour weight in the overlay (default 0.5)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- inputs


def collect_inputs(inputs) -> list[Path]:
    """Image paths of the INPUT arguments, in order, each once. A missing INPUT is an error (before any
    compute); files inside folders and lists are checked when read."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        elif item.suffix.lower() == ".txt" and item.is_file():
            lines = [ln.strip() for ln in item.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
            found += [_list_entry(item.parent, line) for line in lines]
        elif item.is_file() or item.suffix.lower() in IMAGE_EXTS:
            found.append(item)  # a listed image that is missing is reported like an unreadable one
        else:
            raise UserError(f"{item}: INPUT not found; give image files, folders or .txt lists of image paths")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UserError(f"no images found in {', '.join(map(str, inputs))} ({', '.join(IMAGE_EXTS)})")
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


# ----------------------------------------------------------------------------- drawing


def overlay(image: np.ndarray, pred: np.ndarray, palette: np.ndarray, names, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) RGB: ``image`` blended with the class colours, a legend of the classes present (most
    pixels first) in the top-left corner."""
    import cv2

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
    import cv2

    for sub, array in (("index", pred), ("color", colorize(pred, palette)[..., ::-1]),
                       ("overlay", overlay(image, pred, palette, names, alpha)[..., ::-1])):
        target = out_dir / sub / f"{name}.png"
        if not cv2.imwrite(str(target), np.ascontiguousarray(array)):
            raise UserError(f"{target}: cannot be written; check the --out folder's permissions and free space")


# ----------------------------------------------------------------------------- the model


def _classes_override(path, n: int, names, palette):
    new_names, new_palette = read_classes(path)
    if len(new_names) != n:
        raise UserError(f"{path}: lists {len(new_names)} classes but the network predicts {n}; give the classes.txt "
                        f"of the dataset the checkpoint was trained on")
    return new_names, (new_palette if new_palette is not None else palette)


def load_predictor(args):
    """``(network, meta, class_names, palette)``; the network is a torch module or an :class:`OrtNetwork`."""

    onnx_path = args.onnx or (args.checkpoint if str(args.checkpoint).endswith(".onnx") else None)
    network = meta = None
    if onnx_path:
        from .export import OrtNetwork

        network = OrtNetwork(onnx_path, args.threads)
        meta = dict(network.meta)
    if not str(args.checkpoint).endswith(".onnx"):
        from ..models import load_segmentor, read_segmentor_meta

        ck_meta = read_segmentor_meta(args.checkpoint)
        if network is not None and network.num_classes != int(ck_meta["num_classes"]):
            raise UserError(f"{onnx_path}: the ONNX file predicts {network.num_classes} classes but {args.checkpoint} "
                            f"has {ck_meta['num_classes']}; export this checkpoint again with `python -m "
                            f"furnace.tools.export {args.checkpoint} --out {onnx_path}`")
        meta = ck_meta
        if network is None:
            network = load_segmentor(args.checkpoint)
    from ..models import recorded_classes

    names, palette = recorded_classes(meta)
    if args.classes:
        names, palette = _classes_override(args.classes, int(meta["num_classes"]), names, palette)
    return network, meta, names, palette


def build_evaluator(args, meta, names, palette, onnx: bool):
    from easydict import EasyDict

    from ..engine import dist
    from ..engine.evaluator import Evaluator

    recorded = meta.get("eval") or {}
    crop = 0 if args.whole else (args.crop or int(recorded.get("crop", 512)))
    cfg = EasyDict(num_classes=int(meta["num_classes"]), eval_crop=crop, eval_batch=args.batch,
                   eval_scales=args.scales or recorded.get("scales", [1.0]),
                   eval_flip=recorded.get("flip", False) if args.flip is None else args.flip, eval_amp="none")
    device = "cpu" if onnx else dist.resolve_device(args.device)
    return Evaluator(cfg, device, class_names=names, palette=palette)


# ----------------------------------------------------------------------------- the run


def predict_all(args) -> list[str]:
    """Predict every input; returns the one-line errors of the images that failed."""
    import torch
    from tqdm import tqdm

    from ..datasets.dataset import read_image

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = collect_inputs(args.inputs)
    network, meta, names, palette = load_predictor(args)
    evaluator = build_evaluator(args, meta, names, palette, onnx=not isinstance(network, torch.nn.Module))
    if isinstance(network, torch.nn.Module):
        network = network.to(evaluator.device).eval()
    out_dir = Path(args.out)
    for sub in ("index", "color", "overlay"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    failures = []
    bar = tqdm(list(zip(paths, output_names(paths))), desc="predict", unit="img", dynamic_ncols=True)
    for path, name in bar:
        try:
            image = read_image(path)
        except UserError as err:
            failures.append(str(err))
            bar.write(f"error: {err}", file=sys.stderr)
            continue
        pred = evaluator.predict(network, image).argmax(0).to(torch.uint8).cpu().numpy()
        write_outputs(out_dir, name, image, pred, evaluator.palette, names, args.alpha)
    print(f"{len(paths) - len(failures)} of {len(paths)} image(s) -> {out_dir}/{{index,color,overlay}}/")
    return failures


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        failures = predict_all(args)
        if failures:
            print(f"{len(failures)} image(s) could not be read:\n  " + "\n  ".join(failures), file=sys.stderr)
            return 1

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
