"""Export a segmentor file to ONNX, check it against PyTorch and time both.

    python -m furnace.tools.export CHECKPOINT --out model.onnx [--opset 17] [--check-sizes 256x256 ...]
        [--latency-sizes 512x512 1024x2048 | --no-latency] [--threads N] [--runs N] [--json FILE]

The ONNX graph maps ``image`` (B, 3, H, W) float32, ImageNet-normalised, to ``logits`` (B, C, H, W), with
batch, height and width dynamic. The file's metadata records the class count and names, the palette, the
dataset and the evaluation settings (``mgd_ssss.*`` keys), so ``python -m furnace.tools.predict --onnx``
can check it against its checkpoint and run it without anything else.

After writing, the file is checked with ``onnx.checker`` and run with ONNX Runtime (CPU) on inputs of
several sizes and batch sizes: the largest logit difference relative to the largest PyTorch logit must
be <= 1e-4 and the argmax must agree on >= 99.9 % of the pixels, otherwise the command fails (exit 1).
It then prints JSON with the median latency (ms, batch 1, after warm-up) of PyTorch eager and ONNX
Runtime at each ``--latency-sizes`` (HxW).

The dynamo exporter (``torch.onnx.export(dynamo=True)``) needs the ``onnxscript`` package; when it is
not installed, or fails, the TorchScript exporter (``dynamo=False``) is used and the JSON says which.
"""
import argparse
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from ..utils import UserError, run_cli

INPUT, OUTPUT = "image", "logits"
META_PREFIX = "mgd_ssss."
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


class OrtNetwork:
    """An exported file as a network for :class:`furnace.engine.evaluator.Evaluator`: called with a
    (B, 3, H, W) torch tensor, returns (B, C, H, W) logits; the forward pass runs in ONNX Runtime (CPU)."""

    def __init__(self, path, threads: int = 0):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: ONNX file not found; write it with `python -m furnace.tools.export CHECKPOINT "
                            f"--out {path}`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise UserError(f"{path}: ONNX Runtime cannot load it ({str(err)[:200]}); re-export it") from None
        raw = self.session.get_modelmeta().custom_metadata_map
        self.meta = {k[len(META_PREFIX):]: json.loads(v) for k, v in raw.items() if k.startswith(META_PREFIX)}
        if "num_classes" not in self.meta:
            raise UserError(f"{path}: has no {META_PREFIX}num_classes metadata; export it with "
                            f"`python -m furnace.tools.export`")
        self.path, self.num_classes = path, int(self.meta["num_classes"])

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, np.float32)})[0]

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


def latency(model, onnx_net: OrtNetwork, sizes, warmup: int = 1, runs: int = 5) -> list[dict]:
    """Median ms per batch-1 forward pass of PyTorch eager (no_grad) and ONNX Runtime at each (H, W)."""
    import torch

    from .timing import median_ms

    rows = []
    for h, w in sizes:
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            eager = median_ms(lambda: model(x), warmup=warmup, iters=runs)
        ort_ms = median_ms(lambda: onnx_net.run(x.numpy()), warmup=warmup, iters=runs)
        rows.append({"size": f"{h}x{w}", "pytorch_eager_ms": round(eager, 1), "onnxruntime_ms": round(ort_ms, 1)})
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
    return p.parse_args(argv)


def _check_shapes(texts) -> list[tuple[int, int, int]]:
    shapes = []
    for text in texts:
        parts = text.lower().split("x")
        batch = int(parts[0]) if len(parts) == 3 and parts[0].isdigit() else 1
        shapes.append((batch, *parse_size("x".join(parts[-2:]))))
    return shapes


def run(args) -> dict:
    import torch

    from ..models import load_segmentor, read_segmentor_meta

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_segmentor(args.checkpoint)
    meta = onnx_meta(model, read_segmentor_meta(args.checkpoint))
    exporter = export_onnx(model, args.out, meta, args.opset)
    onnx_net = OrtNetwork(args.out, args.threads)
    rows = compare(model, onnx_net, _check_shapes(args.check_sizes))
    check_agreement(rows, args.out)
    report = {"onnx": str(args.out), "checkpoint": str(args.checkpoint), "arch": meta["arch"],
              "num_classes": meta["num_classes"], "opset": args.opset, "exporter": exporter, "check": rows,
              "threads": args.threads or torch.get_num_threads()}
    if not args.no_latency:
        report["latency"] = latency(model, onnx_net, [parse_size(s) for s in args.latency_sizes], runs=args.runs)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)

    def body():
        text = json.dumps(run(args), indent=2)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n", encoding="utf-8")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
