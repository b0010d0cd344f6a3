"""Benchmark: parameters, FLOPs, evaluation speed, the MGD training step and the data loader.

    python -m furnace.tools.benchmark [--device cpu|cuda] [--quick | --tiny] [--json OUT]

Prints a table and writes JSON (``--json``). Sections (``--skip`` any of them):

* ``networks``: per architecture at 512x512 (21 classes) the parameters (backbone / head without the
  classifier / classifier, as SPEC §4 quotes them) and the FLOPs of the backbone and of the whole
  network (torch.utils.flop_counter, counted on the meta device: a multiply-add is 2 FLOPs); the
  students' evaluation speed through ``Evaluator.predict`` (sliding window, single scale, no flip):
  VOC 512x512 with window 512 and Cityscapes 1024x2048 with window 800 (8 windows).
* ``mgd_step`` (:mod:`furnace.tools.bench_mgd`): one MGD training iteration (forward, backward, SGD
  update) at ``--batch`` x ``--crop``,
  two ways on the same batch and the same initial weights: the *reference* path (teacher_impl="reference":
  each teacher called on x_l, u0, u1 and x_m separately, fp32, NCHW) and the *optimized* path
  (teacher_impl="batched": the four teacher inputs in one inference-mode pass of channels_last teachers
  whose BatchNorms are folded into their convolutions;
  on CUDA also a channels_last student and bf16 autocast; on a CPU the student stays NCHW, whose oneDNN
  backward is faster there; ``--compile`` optional). Steps of the two paths alternate, so a machine
  whose load changes during the run slows both alike. Reported: median step time after warm-up
  (``speedup`` = reference / optimized), images/s, achieved TFLOP/s (FLOPs of one step of each path
  counted by the flop counter: they are equal, only the speed differs), peak memory on CUDA, on a CPU
  also the process CPU time per step (``speedup_cpu_time``: steadier than the wall time when other
  programs share the cores), and ``max_loss_rel_diff``: the largest relative difference between the
  two paths' losses on the first step (on CUDA with autocast both paths are also run once in fp32 with
  TF32 off: ``max_loss_rel_diff_fp32`` isolates the maths from the bf16 rounding).
  On CUDA also the share of the GPU's dense bf16 peak (GPU_PEAK_TFLOPS, by device name).
* ``teachers``: one CPS teacher training iteration of resnet101 and wrn50_2 at the same batch and crop
  (autocast and channels_last on CUDA), as the teacher recipes train; with the MGD step it gives
  ``projections``: the wall time on this one device of the VOC and Cityscapes 1/8 student and teacher
  recipes (iterations from the experiment folders' configs; Cityscapes' crop 800 scaled by pixels).
* ``data``: training samples/s of ``furnace.datasets.TrainLoader`` per loader worker
  (``furnace.tools.bench_data.measure_loader``) on generated 500x375 VOC-layout JPEGs, crop 512.

``--quick`` uses small sizes and few repeats (CPU: about a minute and a half on 2 cores); ``--tiny``
shrinks the networks too (crop 64, one step, 64x128 evaluation): a check that every section runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..config import ARCHS
from ..datasets.batch import synthetic_batch
from ..datasets.device import to_device
from ..engine.dist import amp_dtype
from .bench_mgd import mgd_step_bench
from .timing import TrainStep, count_flops, median_ms

STUDENTS = ("resnet18", "mobilenetv2")
TEACHERS = ("resnet101", "wrn50_2")
# The paper's claim (abstract): the students' backbone FLOPs are this many times below the teachers'.
PAPER_BACKBONE_RATIOS = {"resnet18": (3.4, 5.3), "mobilenetv2": (38.7, 59.6)}
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, for the
# utilisation figure: (substring of torch.cuda.get_device_name, peak, label); the first match wins.
GPU_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0, "H100 PCIe"),
    ("H100", 989.0, "H100 SXM"),
    ("H200", 989.0, "H200 SXM"),
    ("A100", 312.0, "A100"),
    ("L40S", 362.0, "L40S"),
    ("L40", 181.0, "L40"),
    ("L4", 121.0, "L4"),
)
# Training-set sizes at 1/8 labeled (SPEC): (all training images, labeled); the rest is unlabeled.
RECIPE_DATA = {"voc": (10582, 1323), "city": (2975, 372)}
# The 1/8 experiment folders whose config.py give crop, global batch and epochs of each recipe.
RECIPES = {
    "voc_1_8": {"student": "exp.voc/voc8.resnet18_deeplabv3plus", "teacher_resnet101": "exp.voc/voc8.resnet101_deeplabv3plus",
                "teacher_wrn50_2": "exp.voc/voc8.wrn50_2_deeplabv3plus"},
    "city_1_8": {"student": "exp.city/city8.resnet18_deeplabv3plus",
                 "teacher_resnet101": "exp.city/city8.resnet101_deeplabv3plus",
                 "teacher_wrn50_2": "exp.city/city8.wrn50_2_deeplabv3plus"},
}
# VOC 1/8 with the recipe's global batch 8: (10,582 - 1,323) // 8 iterations per epoch x 34 epochs.
VOC_1_8_ITERS = (10582 - 1323) // 8 * 34
EVAL_SIZES = {"512x512": (512, 512, 512, "voc"), "1024x2048": (1024, 2048, 800, "city")}
TINY_EVAL_SIZES = {"64x128": (64, 128, 64, "voc")}  # --tiny (a dry run of the tool)


# ----------------------------------------------------------------------------- networks


def network_stats(device: torch.device, *, eval_sizes=tuple(EVAL_SIZES), eval_iters: int = 2,
                  num_classes: int = 21) -> dict:
    """Parameters and FLOPs (512x512) of every architecture; eval images/s of the students.

    Returns ``{arch: {"params_m": {backbone, head, classifier}, "gflops_512": {backbone, total},
    "eval_images_per_s": {size: value}}}`` plus, for the students, ``backbone_flops_below_teachers``
    (teacher / student backbone FLOPs for resnet101 and wrn50_2) next to the paper's figures.
    ``eval_sizes`` are keys of EVAL_SIZES (empty: no timing).
    """
    from ..models import build_model, count_parameters

    out = {}
    x = torch.empty(1, 3, 512, 512, device="meta")
    for arch in ARCHS:
        # FLOPs depend on shapes only: count on the meta device, nothing is computed or allocated
        with torch.device("meta"):
            net = build_model(arch, num_classes, verbose=False).eval()
        params = count_parameters(net)
        row = {
            "params_m": {k: round(v / 1e6, 2) for k, v in params.items()},
            "gflops_512": {
                "backbone": round(count_flops(lambda: net.backbone(x)) / 1e9, 2),
                "total": round(count_flops(lambda: net(x)) / 1e9, 2),
            },
        }
        if arch in STUDENTS and eval_sizes:
            # one 1024x2048 image is 8 windows of 800x800: a single timed image on a CPU
            row["eval_images_per_s"] = {
                size: eval_speed(arch, device, size,
                                 iters=eval_iters if device.type == "cuda" or size == "512x512" else 1)
                for size in eval_sizes}
        out[arch] = row
    for arch in STUDENTS:
        s = out[arch]["gflops_512"]["backbone"]
        out[arch]["backbone_flops_below_teachers"] = {
            t: round(out[t]["gflops_512"]["backbone"] / s, 2) for t in TEACHERS}
        out[arch]["paper_backbone_flops_below_teachers"] = list(PAPER_BACKBONE_RATIOS[arch])
    return out


def eval_speed(arch: str, device: torch.device, size: str, *, iters: int = 2) -> float:
    """Images/s of ``Evaluator.predict`` for a randomly initialised ``arch`` on one random uint8 image
    of ``size`` (a key of EVAL_SIZES), with the dataset recipe's window, single scale, no flip, and
    the evaluator's own precision/layout settings for ``device`` (fp32 as ``eval_amp`` defaults,
    channels_last on CUDA)."""
    from ..config import city_config, voc_config
    from ..engine.evaluator import Evaluator, sliding_windows, window_stride
    from ..models import build_model

    h, w, crop, dataset = {**EVAL_SIZES, **TINY_EVAL_SIZES}[size]
    cfg = voc_config() if dataset == "voc" else city_config()
    cfg.update(eval_crop=crop, eval_scales=[1.0], eval_flip=False, amp="auto",
               channels_last=device.type == "cuda", device=device.type)
    net = build_model(arch, cfg.num_classes, verbose=False).to(device).eval()
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    evaluator = Evaluator(cfg, device)
    image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy()
    # Warm-up (kernel selection, allocator, oneDNN primitives) with one forward of the window batch the
    # evaluator will use, rather than a whole image, which on a CPU costs as much as the measurement.
    windows = len(sliding_windows(h, w, crop, window_stride(crop)))
    x = torch.zeros(min(evaluator.batch, windows), 3, crop, crop, device=device).contiguous(memory_format=fmt)
    amp = evaluator.dtype
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        net(x)
    ms = median_ms(lambda: evaluator.predict(net, image), device, warmup=1 if device.type == "cuda" else 0,
                    iters=iters)
    return round(1000 / ms, 3)


# ----------------------------------------------------------------------------- teachers, recipes


def teacher_step_bench(device: torch.device, arch: str, *, batch: int, crop: int, steps: int = 3, warmup: int = 1,
                       num_classes: int = 21, width_mult: float = 1.0, head_channels: int = 256) -> dict:
    """One CPS teacher training iteration (two ``arch`` networks, forward, backward, SGD update) at
    ``batch`` x ``crop``, as the teacher recipes train: autocast and channels_last on CUDA.
    Returns ``{"arch", "batch", "crop", "step_ms", "images_per_s", "step_ms_all"}``."""
    from ..config import prepare, voc_config
    from ..methods import build_method

    amp = amp_dtype("auto", device)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    data = to_device(synthetic_batch(batch, crop, num_classes), device, channels_last=fmt == torch.channels_last)
    with tempfile.TemporaryDirectory(prefix="teacher_bench_") as tmp:
        C = voc_config()
        C.update(data_root=tmp, output_dir=tmp, pretrained="", arch=arch, method="cps", num_classes=num_classes,
                 width_mult=width_mult, head_channels=head_channels)
        torch.manual_seed(3)
        method = build_method(prepare(C), device).to(device).train().to(memory_format=fmt)
    path = TrainStep("teacher", method, data, device, amp)
    for _ in range(1 + warmup):
        path.step()
    for _ in range(max(1, steps)):
        path.timed_step()
    ms = statistics.median(path.times)
    return {"arch": arch, "batch": batch, "crop": crop, "step_ms": round(ms, 2),
            "images_per_s": round(batch * 1000 / ms, 3), "step_ms_all": [round(t, 1) for t in path.times]}


def _recipe(folder: str):
    """The resolved config of an experiment folder of this checkout (None outside a source checkout)."""
    import runpy

    path = Path(__file__).resolve().parents[2] / folder / "config.py"
    return runpy.run_path(str(path))["C"] if path.is_file() else None


def recipe_projections(ms_per_image_512: dict) -> dict:
    """Projected wall time on this one device of the 1/8 recipes, from measured milliseconds per image
    at crop 512 (``{"student": ..., "teacher_resnet101": ..., "teacher_wrn50_2": ...}``).

    Iterations = (larger of labeled / unlabeled set) // global_batch x the recipe's epochs at 1/8, as
    the loader counts them; a step at another crop is scaled by its pixel count (Cityscapes' 800 crop:
    x 2.44), which is what the measured 512 step implies, not a measurement at that crop."""
    out = {}
    for recipe, roles in RECIPES.items():
        total, labeled = RECIPE_DATA[recipe.split("_")[0]]
        for role, folder in roles.items():
            C = _recipe(folder)
            if C is None or role not in ms_per_image_512:
                continue
            epochs = int(C.epochs_per_ratio["8"])
            iters = max(labeled, total - labeled) // int(C.global_batch) * epochs
            ms_image = ms_per_image_512[role] * (int(C.crop_size) / 512) ** 2
            out[f"{recipe}_{role}"] = {
                "iterations": iters, "global_batch": int(C.global_batch), "crop": int(C.crop_size),
                "epochs": epochs, "hours": round(ms_image * int(C.global_batch) * iters / 3.6e6, 2),
                "scaled_from_crop_512": int(C.crop_size) != 512}
    return out


def gpu_peak(device_name: str):
    """``(peak dense bf16 TFLOP/s, label)`` of a known GPU by name, else ``(None, None)``."""
    for key, peak, label in GPU_PEAK_TFLOPS:
        if key in device_name:
            return peak, label
    return None, None


# ----------------------------------------------------------------------------- data loader


def loader_stats(*, workers=(1,), batches: int = 8, warmup: int = 2, crop: int = 512, micro_batch: int = 4) -> dict:
    """Samples/s of the MGD training loader (labeled + two unlabeled crops + CutMix mask per sample)
    per worker, on generated 500x375 VOC-layout JPEGs (one epoch's worth: ``(warmup + batches) x
    micro_batch`` images, every one labeled and unlabeled), for each ``num_workers`` value."""
    from ..config import prepare, voc_config
    from ..datasets.make_synthetic import generate
    from .bench_data import measure_loader

    out = {"image_size": "500x375", "crop": crop, "micro_batch": micro_batch, "cpu_count": os.cpu_count(),
           "results": []}
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        generate(os.path.join(tmp, "pascal_voc"), seed=0, num_train=(warmup + batches) * micro_batch, num_val=1,
                 size=(375, 500), ratios=())
        for n in workers:
            cfg = voc_config()
            cfg.update(data_root=tmp, labeled_ratio=1, epochs=1, crop_size=crop, num_workers=n,
                       global_batch=micro_batch, micro_batch=micro_batch, pretrained="")
            out["results"].append(measure_loader(prepare(cfg), num_batches=batches, warmup=warmup))
    out["samples_per_s_per_worker"] = out["results"][0]["samples_per_s_per_worker"]
    return out


# ----------------------------------------------------------------------------- CLI


def main(argv=None) -> dict:
    """Run the benchmark (see the module docstring); returns the report dict that is printed and saved."""
    p = argparse.ArgumentParser(prog="python -m furnace.tools.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (CPU: under 2 minutes)")
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("--tiny", action="store_true",
                   help="smallest sizes (shrunk networks, crop 64, one step): a check that every section runs (dry run)")
    p.add_argument("--skip", nargs="*", default=[], choices=("networks", "mgd_step", "teachers", "data"))
    g = p.add_argument_group("MGD step")
    g.add_argument("--arch", choices=STUDENTS, default="resnet18", help="student (default resnet18)")
    g.add_argument("--batch", type=int, default=0, help="per-process micro-batch (default: cuda 8, cpu 2)")
    g.add_argument("--crop", type=int, default=0, help="crop (default: cuda 512; cpu 256, --quick 128)")
    g.add_argument("--steps", type=int, default=0,
                   help="timed steps per path, median reported (default: cuda 20, cpu 3; --quick 5 / 2)")
    g.add_argument("--warmup", type=int, default=-1,
                   help="untimed steps per path after the first (default: cuda 3, cpu 1; --quick cpu 0)")
    g.add_argument("--compile", choices=("off", "teachers", "student"), default="off",
                   help="torch.compile part of the optimized path: 'teachers' is compile_teachers=true of training "
                        "(default off, as in training; the compile time is reported as compile_s)")
    g.add_argument("--student-channels-last", choices=("auto", "on", "off"), default="auto",
                   help="auto: on CUDA only")
    g.add_argument("--width-mult", type=float, default=1.0, help="shrink every network (tests; 1.0 = the real ones)")
    g.add_argument("--head-channels", type=int, default=256, help="decoder width of every network (tests)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu")
    threads, cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.backends.cudnn.benchmark = True  # as the trainer sets it
        return _run(args, device)
    finally:  # main() may be called inside another program (the tests): leave its settings as they were
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = cudnn_benchmark


def _run(args, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    if args.tiny:
        args.quick = True
        args.width_mult, args.head_channels = min(args.width_mult, 0.125), min(args.head_channels, 16)
    batch = args.batch or (2 if args.tiny else 8 if cuda else 2)
    crop = args.crop or (64 if args.tiny else 512 if cuda else (128 if args.quick else 256))
    steps = args.steps or (1 if args.tiny else (5 if args.quick else 20) if cuda else (2 if args.quick else 3))
    # the first step of each path (the loss comparison) already warms the caches and kernel choices
    warmup = args.warmup if args.warmup >= 0 else (0 if args.tiny else 3 if cuda else 0 if args.quick else 1)
    start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "quick": args.quick, "tiny": args.tiny}
    if "networks" not in args.skip:
        sizes = tuple(TINY_EVAL_SIZES) if args.tiny else ("512x512",) if (args.quick and not cuda) else tuple(EVAL_SIZES)
        report["networks"] = network_stats(device, eval_sizes=sizes, eval_iters=(10 if cuda else (1 if args.quick else 2)))
        if len(sizes) < len(EVAL_SIZES):
            report["networks_note"] = "--quick on a CPU: 1024x2048 evaluation skipped"
    if "mgd_step" not in args.skip:
        scl = {"auto": None, "on": True, "off": False}[args.student_channels_last]
        m = mgd_step_bench(device, batch=batch, crop=crop, arch=args.arch, steps=steps, warmup=warmup,
                           width_mult=args.width_mult, head_channels=args.head_channels,
                           student_channels_last=scl, compile_mode=args.compile)
        if cuda:
            peak, label = gpu_peak(report["device"])
            m["gpu_peak_tflops_bf16"], m["gpu_peak_label"] = peak, label or "unknown GPU: no utilisation figure"
            if peak:
                m["utilisation"] = round(m["achieved_tflops"] / peak, 4)
            if batch == 8 and crop == 512 and args.width_mult == 1.0:
                m["voc_1_8_projected_hours_1gpu"] = round(m["optimized_ms"] * VOC_1_8_ITERS / 3.6e6, 2)
        report["mgd_step"] = m
    if "teachers" not in args.skip:
        report["teachers"] = {arch: teacher_step_bench(device, arch, batch=batch, crop=crop, steps=steps,
                                                       warmup=warmup, width_mult=args.width_mult,
                                                       head_channels=args.head_channels) for arch in TEACHERS}
    if "mgd_step" in report and "teachers" in report:
        # per image at crop 512: only a measurement at the real sizes projects the recipes' wall time
        scale = (512 / crop) ** 2
        per_image = {"student": report["mgd_step"]["optimized_ms"] / batch * scale,
                     **{f"teacher_{a}": t["step_ms"] / batch * scale for a, t in report["teachers"].items()}}
        report["projections"] = recipe_projections(per_image)
        report["projections_note"] = (
            "hours on this one device from the measured steps" if crop == 512 and args.width_mult == 1.0 else
            "NOT a projection: networks or crop were shrunk (--tiny/--crop/--width-mult); shows the arithmetic only")
    if "data" not in args.skip:
        report["data"] = loader_stats(**(dict(workers=(1,), batches=2, warmup=1, crop=crop, micro_batch=2)
                                         if args.tiny else dict(workers=(1,), batches=4, warmup=1) if args.quick
                                         else dict(workers=(1, 2), batches=10, warmup=2)))
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(format_report(report), flush=True)
    text = json.dumps(report, indent=2, default=str)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
        print(f"wrote {args.json}")
    else:
        print(text)
    return report


def format_report(r: dict) -> str:
    """The human-readable table of a report from :func:`main`."""
    nan = float("nan")
    lines = [f"device {r['device']}, torch {r['torch']}, {r['threads']} threads"]
    if "networks" in r:
        lines.append(f"{'arch':<12} {'params M bb':>11} {'head':>6} {'GFLOPs@512 bb':>14} {'total':>7} "
                     f"{'eval img/s 512x512':>19} {'1024x2048':>10}  backbone FLOPs below T_D / T_W (paper)")
        for arch, s in r["networks"].items():
            ev = s.get("eval_images_per_s", {})
            below = s.get("backbone_flops_below_teachers")
            note = (f"{below['resnet101']:.2f}x / {below['wrn50_2']:.2f}x "
                    f"({s['paper_backbone_flops_below_teachers'][0]}x / {s['paper_backbone_flops_below_teachers'][1]}x)"
                    if below else "")
            lines.append(
                f"{arch:<12} {s['params_m']['backbone']:>11.2f} {s['params_m']['head']:>6.2f} "
                f"{s['gflops_512']['backbone']:>14.1f} {s['gflops_512']['total']:>7.1f} "
                f"{ev.get('512x512', nan):>19.3g} {ev.get('1024x2048', nan):>10.3g}  {note}")
    if "mgd_step" in r:
        m = r["mgd_step"]
        lines.append(
            f"MGD step ({m['arch']}, batch {m['batch']}, crop {m['crop']}): reference {m['reference_ms']:.0f} ms, "
            f"optimized {m['optimized_ms']:.0f} ms -> speedup {m['speedup']:.2f}x; {m['images_per_s']:.3g} img/s, "
            f"{m['achieved_tflops']:.3g} TFLOP/s ({m['step_tflop']:.3g} TFLOP/step); "
            f"max loss rel diff {m['max_loss_rel_diff']:.2g}"
            + (f" (fp32 {m['max_loss_rel_diff_fp32']:.2g})" if "max_loss_rel_diff_fp32" in m else "")
            + (f"; peak {m['peak_mem_gb']} GB" if "peak_mem_gb" in m else "")
            + (f"; compile {m['compile_s']} s" if "compile_s" in m else ""))
    if "mgd_step" in r and r["mgd_step"].get("gpu_peak_tflops_bf16"):
        m = r["mgd_step"]
        lines.append(f"share of the {m['gpu_peak_label']} dense bf16 peak ({m['gpu_peak_tflops_bf16']:.0f} TFLOP/s): "
                     f"{100 * m['utilisation']:.1f} %")
    for arch, t in r.get("teachers", {}).items():
        lines.append(f"CPS teacher step ({arch}, batch {t['batch']}, crop {t['crop']}): {t['step_ms']:.0f} ms, "
                     f"{t['images_per_s']:.3g} img/s")
    if r.get("projections"):
        lines.append(f"projected wall time on this device ({r.get('projections_note', '')}):")
        for key, p in r["projections"].items():
            lines.append(f"  {key:<28} {p['iterations']:>7} iters x batch {p['global_batch']:>2} crop {p['crop']}: "
                         f"{p['hours']:.1f} h" + (" (scaled by pixels from crop 512)" if p["scaled_from_crop_512"] else ""))
    if "data" in r:
        d = r["data"]
        per = ", ".join(f"{x['num_workers']} worker(s): {x['samples_per_s']:.3g} samples/s "
                        f"({x['samples_per_s_per_worker']:.3g}/worker)" for x in d["results"])
        lines.append(f"data loader (MGD samples, crop {d['crop']}): {per}")
    lines.append(f"total {r.get('seconds', nan)} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
