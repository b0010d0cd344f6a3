"""Segment images with an exported .onnx file, without PyTorch (numpy, OpenCV, onnxruntime).

    python -m furnace.runtime.predict MODEL.onnx INPUT... --out DIR [--crop N | --whole] [--scales 1.0 ...]
        [--flip | --no-flip] [--batch N] [--threads N] [--alpha 0.5]

INPUT: image files, folders (searched recursively) or list files (.txt, one image path per line, relative
to the list's folder). Per image it writes ``DIR/index/<name>.png`` (class indices), ``DIR/color/<name>.png``
(the palette the file records) and ``DIR/overlay/<name>.png`` (the image blended with the colours and a
legend of the classes present): the same files as ``python -m furnace.tools.predict``. Prediction is
evaluation's (sliding windows of the recorded eval crop, scales, flip; see furnace.runtime.sliding). An
unreadable image is reported in one line and skipped; the run ends with the list of failures and exit 1.
"""
import argparse
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ..utils import UserError, run_cli
from .drawing import OUTPUT_DIRS, write_outputs
from .images import collect_inputs, output_names, read_image
from .session import OnnxModel
from .sliding import EvalSettings, predict_logits


def add_prediction_options(p: argparse.ArgumentParser) -> None:
    """INPUT... and the options both predictors take: output folder, windows, scales, flip, batch, threads, overlay."""
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="image files, folders or list files")
    p.add_argument("--out", required=True, help="output folder (index/, color/, overlay/)")
    p.add_argument("--crop", type=int, default=None, help="sliding-window size (default: the recorded eval crop)")
    p.add_argument("--whole", action="store_true", help="the whole image in one pass instead of sliding windows")
    p.add_argument("--scales", type=float, nargs="+", default=None, help="test scales (default: recorded, or 1.0)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="add the horizontally mirrored windows' logits (default: as recorded)")
    p.add_argument("--batch", type=int, default=4, help="sliding windows per forward pass (default 4)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = the runtime's default)")
    p.add_argument("--alpha", type=float, default=0.5, help="colour weight in the overlay (default 0.5)")


def check_prediction_options(args) -> None:
    """The prediction options' errors, before a model is loaded or a file written."""
    if args.whole and args.crop is not None:
        raise UserError(f"--crop {args.crop} and --whole: give one (--whole runs the image in one pass)")
    if args.crop is not None and args.crop < 16:
        raise UserError(f"--crop {args.crop}: give at least 16 (or --whole for the image in one pass)")
    if args.scales and min(args.scales) <= 0:
        raise UserError(f"--scales {' '.join(map(str, args.scales))}: every scale must be above 0 (e.g. 0.75 1.0 1.25)")
    if args.batch < 1 or args.threads < 0:
        bad = f"--batch {args.batch}" if args.batch < 1 else f"--threads {args.threads}"
        raise UserError(f"{bad}: give at least {1 if args.batch < 1 else 0}")
    if not 0 <= args.alpha <= 1:
        raise UserError(f"--alpha {args.alpha}: give a colour weight from 0 to 1")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: is a file; give a folder for index/, color/ and overlay/")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m furnace.runtime.predict", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL.onnx", help="a file written by python -m furnace.tools.export")
    add_prediction_options(p)
    return p.parse_args(argv)


def predict_images(paths: list[Path], predict_index: Callable[[np.ndarray], np.ndarray], out_dir, names, palette,
                   alpha: float = 0.5, progress=None) -> list[str]:
    """Write the three PNGs of every image in ``paths``; ``predict_index`` maps an (H, W, 3) uint8 RGB image
    to its (H, W) uint8 class indices. ``progress`` wraps the items (e.g. tqdm). Returns the one-line errors
    of the images that could not be read (each also printed when it happens)."""
    out_dir = Path(out_dir)
    for sub in OUTPUT_DIRS:
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    items = list(zip(paths, output_names(paths)))
    bar = progress(items) if progress else items
    say = getattr(bar, "write", print)
    failures = []
    for path, name in bar:
        try:
            image = read_image(path)
        except UserError as err:
            failures.append(str(err))
            say(f"error: {err}", file=sys.stderr)
            continue
        write_outputs(out_dir, name, image, predict_index(image), palette, names, alpha)
    print(f"{len(paths) - len(failures)} of {len(paths)} image(s) -> {out_dir}/{{{','.join(OUTPUT_DIRS)}}}/")
    return failures


def report_failures(failures: list[str]) -> int:
    """The exit status of a predict run: 1 (after listing them) when some images could not be read, else 0."""
    if not failures:
        return 0
    print(f"{len(failures)} image(s) could not be read:\n  " + "\n  ".join(failures), file=sys.stderr)
    return 1


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        check_prediction_options(args)
        paths = collect_inputs(args.inputs, exclude=args.out)
        model = OnnxModel(args.model, args.threads)
        names, palette = model.classes()
        settings = EvalSettings.of(model.meta.get("eval"), args.crop, args.whole, args.scales, args.flip, args.batch)

        def predict_index(image):
            return predict_logits(model.run, image, model.num_classes, settings).argmax(0).astype(np.uint8)

        return report_failures(predict_images(paths, predict_index, args.out, names, palette, args.alpha))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
