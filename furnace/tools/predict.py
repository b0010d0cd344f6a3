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

from ..datasets.layouts import read_classes
from ..runtime.images import collect_inputs
from ..runtime.predict import add_prediction_options, check_prediction_options, predict_images, report_failures
from ..runtime.sliding import EvalSettings
from ..utils import UserError, run_cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m furnace.tools.predict", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="segmentor file (.pth), or an exported .onnx file")
    add_prediction_options(p)
    p.add_argument("--onnx", default=None, help="run this exported file in ONNX Runtime instead of PyTorch")
    p.add_argument("--classes", default=None, help="a classes.txt whose names (and colours) replace the recorded ones")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p.parse_args(argv)


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

    settings = EvalSettings.of(meta.get("eval"), args.crop, args.whole, args.scales, args.flip, args.batch)
    cfg = EasyDict(num_classes=int(meta["num_classes"]), eval_crop=settings.crop, eval_batch=settings.batch,
                   eval_scales=list(settings.scales), eval_flip=settings.flip, eval_amp="none")
    device = "cpu" if onnx else dist.resolve_device(args.device)
    return Evaluator(cfg, device, class_names=names, palette=palette)


# ----------------------------------------------------------------------------- the run


def predict_all(args) -> list[str]:
    """Predict every input; returns the one-line errors of the images that failed."""
    import torch
    from tqdm import tqdm

    check_prediction_options(args)
    onnx = bool(args.onnx) or str(args.checkpoint).endswith(".onnx")
    if args.device == "cuda" and (onnx or not torch.cuda.is_available()):
        raise UserError("--device cuda: " + ("an .onnx file runs in ONNX Runtime on the CPU here" if onnx else
                                             "no CUDA device is visible") + "; use --device cpu or auto")
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = collect_inputs(args.inputs, exclude=args.out)
    network, meta, names, palette = load_predictor(args)
    evaluator = build_evaluator(args, meta, names, palette, onnx=not isinstance(network, torch.nn.Module))
    if isinstance(network, torch.nn.Module):
        network = network.to(evaluator.device).eval()

    def predict_index(image):
        return evaluator.predict(network, image).argmax(0).to(torch.uint8).cpu().numpy()

    return predict_images(paths, predict_index, args.out, names, evaluator.palette, args.alpha,
                          progress=lambda items: tqdm(items, desc="predict", unit="img", dynamic_ncols=True))


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_cli(lambda: report_failures(predict_all(args)))


if __name__ == "__main__":
    sys.exit(main())
