"""Export a segmentor file to ONNX (fp32, or INT8 as well), check it against PyTorch and time them.

    python -m furnace.tools.export CHECKPOINT --out model.onnx [--opset 17] [--check-sizes 256x256 ...]
        [--latency-sizes 512x512 1024x2048 | --no-latency] [--threads N] [--runs N] [--json FILE]
    python -m furnace.tools.export CHECKPOINT --out model.int8.onnx --int8 --calib INPUT... [--calib-crops 64]
        [--calib-method minmax|entropy|percentile|distribution] [--int8-types u8s8|s8s8] [--no-reduce-range]
        [--fp32-nodes PATTERN ...] [--fp32-out model.onnx]

The ONNX graph maps ``image`` (B, 3, H, W) float32, ImageNet-normalised, to ``logits`` (B, C, H, W), with
batch, height and width dynamic. The file's metadata records the class count and names, the palette, the
dataset and the evaluation settings (``mgd_ssss.*`` keys), so ``python -m furnace.tools.predict --onnx``
can check it against its checkpoint and run it without anything else.

After writing, the file is checked with ``onnx.checker`` and run with ONNX Runtime (CPU) on inputs of
several sizes and batch sizes: the largest logit difference relative to the largest PyTorch logit must
be <= 1e-4 and the argmax must agree on >= 99.9 % of the pixels, otherwise the command fails (exit 1).
It then prints JSON with the median latency (ms, batch 1, after warm-up; the runtimes alternate within
each repeat) of PyTorch eager and ONNX Runtime at each ``--latency-sizes`` (HxW).

With ``--int8``, ``--out`` is an INT8 file (ONNX Runtime static quantization, QDQ, per-channel weights;
see furnace.tools.quantize) calibrated on ``--calib`` images (files, folders, list files) preprocessed as
evaluation preprocesses them (the recorded eval crop, scales and flip); the fp32 file is kept as
``--fp32-out`` (default: OUT without ``.int8``, or ``OUT.fp32.onnx``). The JSON then also gives the INT8
latency and speed-up, and the INT8 file's argmax agreement with the fp32 file on the calibration images.

The dynamo exporter (``torch.onnx.export(dynamo=True)``) needs the ``onnxscript`` package; when it is
not installed, or fails, the TorchScript exporter (``dynamo=False``) is used and the JSON says which.
"""
import argparse
import contextlib
import importlib.util
import json
import shutil
import sys
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..runtime.session import INPUT, META_PREFIX, OUTPUT, OnnxModel
from ..utils import UserError, run_cli
from .quantize import METHODS, TYPES, QuantOptions

REL_TOL, ARGMAX_MIN = 1e-4, 0.999


def parse_size(text: str) -> tuple[int, int]:
    """``"512x1024"`` -> (512, 1024) (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"size {text!r} is not HxW (e.g. 512x1024)") from None
    if h < 16 or w < 16:
        raise UserError(f"size {text!r}: height and width must be at least 16")
    return h, w


# ----------------------------------------------------------------------------- writing


def _export_graph(model, path: Path, opset: int, sample) -> str:
    """Write the graph with the dynamo exporter if it is usable, else TorchScript's; returns which."""
    import torch

    if importlib.util.find_spec("onnxscript") is not None:
        try:
            dim = torch.export.Dim
            shapes = {"x": {0: dim("batch", max=64), 2: dim("height", min=16), 3: dim("width", min=16)}}
            torch.onnx.export(model, (sample,), str(path), dynamo=True, opset_version=opset, input_names=[INPUT],
                              output_names=[OUTPUT], dynamic_shapes=shapes)
            return "dynamo"
        except Exception as err:  # noqa: BLE001 - any exporter failure falls back to the older exporter
            print(f"dynamo exporter failed ({type(err).__name__}: {str(err)[:200]}); using TorchScript's",
                  file=sys.stderr)
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(model, (sample,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT],
                      output_names=[OUTPUT], dynamic_axes={INPUT: axes, OUTPUT: axes})
    return "torchscript"


def export_onnx(model, path, meta: dict, opset: int = 17) -> str:
    """Export ``model`` (a DeepLabV3Plus, eval mode) to ``path`` with ``meta`` stored as ``mgd_ssss.*``
    metadata (values JSON-encoded), then validate it with ``onnx.checker``. Returns the exporter used."""
    import onnx
    import torch

    if opset < 17:
        raise UserError(f"--opset {opset}: use 17 or newer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes on Python-level branches and its own deprecation notice, not about this graph
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        exporter = _export_graph(model, path, opset, torch.randn(1, 3, 64, 64))
    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in meta.items():
        graph.metadata_props.add(key=META_PREFIX + key, value=json.dumps(value))
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    return exporter


def onnx_meta(model, seg_meta: dict) -> dict:
    """The metadata an exported file carries: architecture, class count, names, palette, dataset, eval."""
    from ..datasets.layouts import classes_record
    from ..models import recorded_classes

    names, palette = recorded_classes(seg_meta)
    return {"arch": model.arch, "num_classes": int(model.num_classes), **classes_record(names, palette),
            "dataset": seg_meta.get("dataset"), "eval": seg_meta.get("eval")}


# ----------------------------------------------------------------------------- running


class OrtNetwork(OnnxModel):
    """An exported file as a network for :class:`furnace.engine.evaluator.Evaluator`: called with a
    (B, 3, H, W) torch tensor, returns (B, C, H, W) logits; the forward pass runs in ONNX Runtime (CPU)."""

    def __call__(self, x):
        import torch

        return torch.from_numpy(self.run(x.detach().cpu().numpy())).to(x.device)


def compare(model, onnx_net: OrtNetwork, shapes, seed: int = 0) -> list[dict]:
    """ONNX Runtime vs PyTorch logits on random inputs of ``shapes`` ((B, H, W) each)."""
    import torch

    rng = np.random.default_rng(seed)
    rows = []
    for b, h, w in shapes:
        x = rng.standard_normal((b, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        out = onnx_net.run(x)
        rel = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))
        rows.append({"shape": [b, 3, h, w], "rel_max_diff": rel,
                     "argmax_equal": float((out.argmax(1) == ref.argmax(1)).mean())})
    return rows


def check_agreement(rows: list[dict], path) -> None:
    bad = [r for r in rows if not (r["rel_max_diff"] <= REL_TOL and r["argmax_equal"] >= ARGMAX_MIN)]
    if bad:
        r = bad[0]
        raise UserError(f"{path}: ONNX Runtime disagrees with PyTorch on input {r['shape']}: relative max "
                        f"difference {r['rel_max_diff']:.2e} (limit {REL_TOL:g}), argmax equal "
                        f"{100 * r['argmax_equal']:.3f} % (limit {100 * ARGMAX_MIN:g} %); the file is not usable")


def latency(model, onnx_net: OrtNetwork, sizes, warmup: int = 1, runs: int = 5, int8_net=None) -> list[dict]:
    """Median ms per batch-1 forward pass of PyTorch eager (no_grad), ONNX Runtime and, with ``int8_net``,
    the INT8 file in ONNX Runtime at each (H, W), the runtimes alternating (see :func:`paired_latency`)."""
    import torch

    from .quantize import paired_latency

    def eager(x):
        with torch.no_grad():
            return model(torch.from_numpy(x))

    contenders = {"pytorch_eager_ms": eager, "onnxruntime_ms": onnx_net.run}
    if int8_net is not None:
        contenders["onnxruntime_int8_ms"] = int8_net.run
    rows = []
    for h, w in sizes:
        x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
        ms = paired_latency(contenders, x, repeats=runs, warmup=warmup)
        row = {"size": f"{h}x{w}", **{k: round(v, 2) for k, v in ms.items()}}
        if int8_net is not None:
            row["int8_speedup"] = round(ms["onnxruntime_ms"] / ms["onnxruntime_int8_ms"], 2)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m furnace.tools.export", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="segmentor file (a snapshot, a teacher, a converted file)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default 17)")
    p.add_argument("--check-sizes", nargs="+", default=["1x256x256", "2x320x480", "1x257x385"], metavar="[B]xHxW",
                   help="inputs compared with PyTorch (default 1x256x256 2x320x480 1x257x385)")
    p.add_argument("--latency-sizes", nargs="+", default=["512x512", "1024x2048"], metavar="HxW")
    p.add_argument("--no-latency", action="store_true", help="skip the timing")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for both runtimes (0 = their default)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per size after one warm-up run (default 5)")
    p.add_argument("--json", default=None, help="also write the JSON report here")
    q = p.add_argument_group("INT8 (ONNX Runtime static quantization)")
    q.add_argument("--int8", action="store_true", help="write --out as an INT8 file (needs --calib)")
    q.add_argument("--calib", nargs="+", default=None, metavar="INPUT",
                   help="calibration images: files, folders or .txt lists, like those the model will see")
    q.add_argument("--calib-crops", type=int, default=QuantOptions.crops,
                   help=f"network inputs (eval windows) calibrated on (default {QuantOptions.crops})")
    q.add_argument("--calib-method", choices=METHODS, default=QuantOptions.method,
                   help=f"ONNX Runtime calibration method (default {QuantOptions.method})")
    q.add_argument("--int8-types", choices=TYPES, default=QuantOptions.types,
                   help=f"activation and weight types (default {QuantOptions.types})")
    q.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=QuantOptions.reduce_range,
                   help=f"7-bit weights (default {QuantOptions.reduce_range})")
    q.add_argument("--fp32-nodes", nargs="*", default=list(QuantOptions.fp32_nodes), metavar="PATTERN",
                   help="fnmatch patterns of node names kept in fp32 (default: "
                        f"{' '.join(QuantOptions.fp32_nodes) or 'none'}; give none to quantize all)")
    q.add_argument("--fp32-out", default=None, help="where the fp32 file goes with --int8 (default: OUT without .int8)")
    return p.parse_args(argv)


def fp32_path(args) -> Path:
    """Where the fp32 file is written: ``--out``, or with ``--int8`` ``--fp32-out`` (default: OUT with ``.int8``
    removed from its name, else ``OUT.fp32.onnx``)."""
    out = Path(args.out)
    if not args.int8:
        return out
    if args.fp32_out:
        path = Path(args.fp32_out)
    elif out.name.endswith(".int8.onnx"):
        path = out.with_name(out.name[: -len(".int8.onnx")] + ".onnx")
    else:
        path = out.with_name(out.stem + ".fp32.onnx")
    if path.resolve() == out.resolve():
        raise UserError(f"--fp32-out {path}: is the INT8 --out file too; give another path")
    return path


def check_int8_args(args) -> None:
    """The INT8 options' errors, before any work."""
    if args.int8 and not args.calib:
        raise UserError("--int8 needs --calib INPUT...: images (files, folders or .txt lists) like those the model "
                        "will see, e.g. the val images")
    if args.calib and not args.int8:
        raise UserError("--calib is only used with --int8; add --int8 to write an INT8 file")
    if args.calib_crops < 1:
        raise UserError(f"--calib-crops {args.calib_crops}: give at least 1")


def _check_shapes(texts) -> list[tuple[int, int, int]]:
    shapes = []
    for text in texts:
        parts = text.lower().split("x")
        if len(parts) == 3 and not (parts[0].isdigit() and int(parts[0]) >= 1):
            raise UserError(f"--check-sizes {text}: the batch (before HxW) must be a whole number >= 1, e.g. 2x320x480")
        shapes.append((int(parts[0]) if len(parts) == 3 else 1, *parse_size("x".join(parts[-2:]))))
    return shapes


def check_args(args) -> tuple[list, list]:
    """Every option's error before any work: the INT8 options, the files to write (``.onnx`` names, not
    folders), the sizes, threads and runs. Returns the check shapes and the latency sizes."""
    check_int8_args(args)
    for path in {Path(args.out), fp32_path(args)}:
        if path.suffix != ".onnx" or path.is_dir():
            raise UserError(f"{path}: the file to write must be named *.onnx (and not be a folder); e.g. --out "
                            f"student.onnx")
    if args.threads < 0 or args.runs < 1:
        raise UserError(f"--threads {args.threads} --runs {args.runs}: threads >= 0 (0 = default), runs >= 1")
    return _check_shapes(args.check_sizes), [] if args.no_latency else [parse_size(s) for s in args.latency_sizes]


def run(args) -> dict:
    import torch

    from ..models import load_segmentor, read_segmentor_meta
    from ..runtime.sliding import EvalSettings

    shapes, latency_sizes = check_args(args)
    out_fp32, out = fp32_path(args), Path(args.out)
    if args.int8:
        from .quantize import calibration_images

        calib = calibration_images(args.calib, args.calib_crops)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_segmentor(args.checkpoint)
    meta = onnx_meta(model, read_segmentor_meta(args.checkpoint))
    out.parent.mkdir(parents=True, exist_ok=True)
    # the files are written aside and moved to their names once every check passed: a failed run leaves what was there
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        staged = {out_fp32: Path(tmp) / "fp32.onnx", **({out: Path(tmp) / "int8.onnx"} if args.int8 else {})}
        exporter = export_onnx(model, staged[out_fp32], meta, args.opset)
        onnx_net = OrtNetwork(staged[out_fp32], args.threads)
        rows = compare(model, onnx_net, shapes)
        check_agreement(rows, out_fp32)
        report = {"onnx": str(out_fp32), "checkpoint": str(args.checkpoint), "arch": meta["arch"],
                  "num_classes": meta["num_classes"], "opset": args.opset, "exporter": exporter, "check": rows,
                  "threads": args.threads or torch.get_num_threads()}
        int8_net = None
        if args.int8:
            from .quantize import CalibrationWindows, argmax_agreement, quantize_int8

            options = QuantOptions(crops=args.calib_crops, method=args.calib_method, types=args.int8_types,
                                   reduce_range=args.reduce_range, fp32_nodes=tuple(args.fp32_nodes))
            settings = EvalSettings.of(meta.get("eval"))
            reader = CalibrationWindows(calib, settings, options.crops)
            kept = quantize_int8(staged[out_fp32], staged[out], reader, options)
            int8_net = OrtNetwork(staged[out], args.threads)
            report["int8"] = {"onnx": str(out), **asdict(options), "fp32_nodes": list(options.fp32_nodes),
                              "nodes_kept_fp32": len(kept), "calib_images": len(calib), "calib_crops": len(reader),
                              "argmax_agreement": argmax_agreement(onnx_net, int8_net, calib, settings)}
        for final, path in staged.items():
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, final)
    if latency_sizes:
        report["latency"] = latency(model, onnx_net, latency_sizes, runs=args.runs, int8_net=int8_net)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the report's: progress printed on the way goes aside
            text = json.dumps(run(args), indent=2)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n", encoding="utf-8")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
