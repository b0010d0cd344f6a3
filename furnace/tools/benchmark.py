"""Benchmark: parameters, FLOPs, evaluation speed, the MGD training step and the data loader.

    python -m furnace.tools.benchmark [--device cpu|cuda] [--quick | --tiny] [--json OUT] [--skip SECTION ...]

Prints a table and the JSON report (or writes it to ``--json``). Sections: ``networks`` (parameters and FLOPs
at 512x512 of every architecture, the students' evaluation images/s on VOC 512x512 and Cityscapes 1024x2048),
``mgd_step`` (the reference MGD step against the optimized one, :mod:`furnace.tools.bench_mgd`), ``teachers``
(one CPS teacher step of resnet101 and wrn50_2; with ``mgd_step`` they give ``projections``, the 1/8 recipes'
wall time on this device) and ``data`` (training samples/s per loader worker). README "Performance" explains
the figures. ``--quick``: small sizes and few repeats; ``--tiny``: shrunk networks too, a check that every
section runs.
"""
import argparse
import json
import os
import runpy
import time
from pathlib import Path

import torch

from ..config import ARCHS
from .bench_data import measure_loader, voc_loader_configs
from .bench_mgd import mgd_step_bench, teacher_step_bench
from .timing import count_flops, median_ms

STUDENTS = ("resnet18", "mobilenetv2")
TEACHERS = ("resnet101", "wrn50_2")
# The paper's claim (abstract): the students' backbone FLOPs are this many times below the teachers'.
PAPER_BACKBONE_RATIOS = {"resnet18": (3.4, 5.3), "mobilenetv2": (38.7, 59.6)}
# Dense bf16 peaks in TFLOP/s (data sheets): (substring of the device name, peak, label); the first match wins.
GPU_PEAK_TFLOPS = (("H100 PCIe", 756.0, "H100 PCIe"), ("H100", 989.0, "H100 SXM"), ("H200", 989.0, "H200 SXM"),
                   ("A100", 312.0, "A100"), ("L40S", 362.0, "L40S"), ("L40", 181.0, "L40"), ("L4", 121.0, "L4"))
# Training-set sizes at 1/8 labeled (SPEC): (all training images, labeled); the rest is unlabeled.
RECIPE_DATA = {"voc": (10582, 1323), "city": (2975, 372)}
# VOC 1/8 with the recipe's global batch 8: (10,582 - 1,323) // 8 iterations per epoch x 34 epochs.
VOC_1_8_ITERS = (10582 - 1323) // 8 * 34
EVAL_SIZES = {"512x512": (512, 512, 512, "voc"), "1024x2048": (1024, 2048, 800, "city")}
TINY_EVAL_SIZES = {"64x128": (64, 128, 64, "voc")}  # --tiny


def network_stats(device: torch.device, *, eval_sizes=tuple(EVAL_SIZES), eval_iters: int = 2,
                  num_classes: int = 21) -> dict:
    """``{arch: {"params_m": {backbone, head, classifier}, "gflops_512": {backbone, total}}}``, for the students
    also ``eval_images_per_s`` at each of ``eval_sizes`` (keys of EVAL_SIZES; empty: no timing) and
    ``backbone_flops_below_teachers`` (teacher / student backbone FLOPs) beside the paper's figures."""
    from ..models import build_model, count_parameters
    out = {}
    x = torch.empty(1, 3, 512, 512, device="meta")
    for arch in ARCHS:
        with torch.device("meta"):  # FLOPs depend on shapes only: nothing is computed or allocated
            net = build_model(arch, num_classes, verbose=False).eval()
        row = {"params_m": {k: round(v / 1e6, 2) for k, v in count_parameters(net).items()},
               "gflops_512": {"backbone": round(count_flops(lambda: net.backbone(x)) / 1e9, 2),
                              "total": round(count_flops(lambda: net(x)) / 1e9, 2)}}
        if arch in STUDENTS and eval_sizes:
            # one 1024x2048 image is 8 windows of 800x800: a single timed image on a CPU
            row["eval_images_per_s"] = {size: eval_speed(arch, device, size, iters=eval_iters if (
                device.type == "cuda" or size == "512x512") else 1) for size in eval_sizes}
        out[arch] = row
    for arch in STUDENTS:
        s = out[arch]["gflops_512"]["backbone"]
        out[arch]["backbone_flops_below_teachers"] = {t: round(out[t]["gflops_512"]["backbone"] / s, 2)
                                                      for t in TEACHERS}
        out[arch]["paper_backbone_flops_below_teachers"] = list(PAPER_BACKBONE_RATIOS[arch])
    return out


def eval_speed(arch: str, device: torch.device, size: str, *, iters: int = 2) -> float:
    """Images/s of ``Evaluator.predict`` for a random ``arch`` on one random image of ``size`` (a key of
    EVAL_SIZES), with the recipe's window, single scale, no flip and the evaluator's settings for ``device``
    (fp32, channels_last on CUDA)."""
    from ..config import city_config, voc_config
    from ..engine.evaluator import Evaluator, sliding_windows, window_stride
    from ..models import build_model
    h, w, crop, dataset = {**EVAL_SIZES, **TINY_EVAL_SIZES}[size]
    cfg = voc_config() if dataset == "voc" else city_config()
    cfg.update(eval_crop=crop, eval_scales=[1.0], eval_flip=False, amp="auto",
               channels_last=device.type == "cuda", device=device.type)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net = build_model(arch, cfg.num_classes, verbose=False).to(device).eval().to(memory_format=fmt)
    evaluator = Evaluator(cfg, device)
    image = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).numpy()
    # warm up with one forward of the evaluator's window batch: a whole image on a CPU costs as much as the measurement
    windows = len(sliding_windows(h, w, crop, window_stride(crop)))
    x = torch.zeros(min(evaluator.batch, windows), 3, crop, crop, device=device).contiguous(memory_format=fmt)
    amp = evaluator.dtype
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        net(x)
    ms = median_ms(lambda: evaluator.predict(net, image), device, warmup=1 if device.type == "cuda" else 0, iters=iters)
    return round(1000 / ms, 3)


def recipe_projections(ms_per_image_512: dict) -> dict:
    """Projected wall time on this device of the 1/8 recipes (those whose config.py this checkout holds) from
    ms per image at crop 512 (``{"student", "teacher_resnet101", "teacher_wrn50_2"}``). Iterations are counted
    as the loader does; another crop is scaled by its pixel count (Cityscapes' 800: x 2.44), not measured."""
    out = {}
    for dataset, (total, labeled) in RECIPE_DATA.items():
        for role, arch in (("student", "resnet18"), ("teacher_resnet101", "resnet101"), ("teacher_wrn50_2", "wrn50_2")):
            # the 1/8 experiment folder's config.py gives the recipe's crop, global batch and epochs
            path = Path(__file__).resolve().parents[2] / f"exp.{dataset}/{dataset}8.{arch}_deeplabv3plus/config.py"
            if not path.is_file() or role not in ms_per_image_512:
                continue
            C = runpy.run_path(str(path))["C"]
            batch, crop, epochs = int(C.global_batch), int(C.crop_size), int(C.epochs_per_ratio["8"])
            iters = max(labeled, total - labeled) // batch * epochs
            ms_image = ms_per_image_512[role] * (crop / 512) ** 2
            out[f"{dataset}_1_8_{role}"] = {
                "iterations": iters, "global_batch": batch, "crop": crop, "epochs": epochs,
                "hours": round(ms_image * batch * iters / 3.6e6, 2), "scaled_from_crop_512": crop != 512}
    return out


def gpu_peak(device_name: str):
    """``(peak dense bf16 TFLOP/s, label)`` of a known GPU by name, else ``(None, None)``."""
    return next(((peak, label) for key, peak, label in GPU_PEAK_TFLOPS if key in device_name), (None, None))


def loader_stats(*, workers=(1,), batches: int = 8, warmup: int = 2, crop: int = 512, micro_batch: int = 4) -> dict:
    """Samples/s of the MGD training loader per worker for each ``num_workers`` value, on one epoch's worth
    (``(warmup + batches) x micro_batch``) of generated 500x375 VOC-layout JPEGs."""
    out = {"image_size": "500x375", "crop": crop, "micro_batch": micro_batch, "cpu_count": os.cpu_count()}
    with voc_loader_configs(workers, crop=crop, micro_batch=micro_batch,
                            images=(warmup + batches) * micro_batch) as configs:
        out["results"] = [measure_loader(cfg, num_batches=batches, warmup=warmup) for cfg in configs]
    out["samples_per_s_per_worker"] = out["results"][0]["samples_per_s_per_worker"]
    return out


def main(argv=None) -> dict:
    """Run the benchmark (see the module docstring); returns the report dict that is printed and saved."""
    p = argparse.ArgumentParser(prog="python -m furnace.tools.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (CPU: under 2 minutes)")
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument("--tiny", action="store_true", help="smallest sizes (shrunk networks, crop 64, one step): "
                   "a check that every section runs (dry run)")
    p.add_argument("--skip", nargs="*", default=[], choices=("networks", "mgd_step", "teachers", "data"))
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    g = p.add_argument_group("MGD step")
    g.add_argument("--arch", choices=STUDENTS, default="resnet18", help="student (default resnet18)")
    g.add_argument("--batch", type=int, default=0, help="per-process micro-batch (default: cuda 8, cpu 2)")
    g.add_argument("--crop", type=int, default=0, help="crop (default: cuda 512; cpu 256, --quick 128)")
    g.add_argument("--steps", type=int, default=0,
                   help="timed steps per path, median reported (default: cuda 20, cpu 3; --quick 5 / 2)")
    g.add_argument("--warmup", type=int, default=-1,
                   help="untimed steps per path after the first (default: cuda 3, cpu 1; --quick cpu 0)")
    g.add_argument("--compile", choices=("off", "teachers", "student"), default="off",
                   help="torch.compile part of the optimized path ('teachers': as compile_teachers=true in "
                        "training); the compile time is reported as compile_s")
    g.add_argument("--student-channels-last", choices=("auto", "on", "off"), default="auto", help="auto: on CUDA only")
    g.add_argument("--cpu-bf16", choices=("auto", "on", "off"), default="auto",
                   help="on a CPU also the optimized path under bf16 autocast (auto: when the CPU has native bf16)")
    g.add_argument("--width-mult", type=float, default=1.0, help="shrink every network (tests; 1.0 = the real ones)")
    g.add_argument("--head-channels", type=int, default=256, help="decoder width of every network (tests)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
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
    cuda, quick = device.type == "cuda", args.quick or args.tiny
    if args.tiny:
        args.width_mult, args.head_channels = min(args.width_mult, 0.125), min(args.head_channels, 16)
    batch = args.batch or (8 if cuda and not args.tiny else 2)
    crop = args.crop or (64 if args.tiny else 512 if cuda else 128 if quick else 256)
    steps = args.steps or (1 if args.tiny else (5 if quick else 20) if cuda else (2 if quick else 3))
    # the first step of each path (the loss comparison) already warms the caches and kernel choices
    warmup = args.warmup if args.warmup >= 0 else (0 if args.tiny else 3 if cuda else 0 if quick else 1)
    start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "quick": quick, "tiny": args.tiny}
    if "networks" not in args.skip:
        sizes = tuple(TINY_EVAL_SIZES) if args.tiny else ("512x512",) if quick and not cuda else tuple(EVAL_SIZES)
        report["networks"] = network_stats(device, eval_sizes=sizes, eval_iters=10 if cuda else 1 if quick else 2)
        if len(sizes) < len(EVAL_SIZES):
            report["networks_note"] = "--quick on a CPU: 1024x2048 evaluation skipped"
    if "mgd_step" not in args.skip:
        m = mgd_step_bench(device, batch=batch, crop=crop, arch=args.arch, steps=steps, warmup=warmup,
                           width_mult=args.width_mult, head_channels=args.head_channels, compile_mode=args.compile,
                           student_channels_last={"auto": None, "on": True, "off": False}[args.student_channels_last],
                           cpu_bf16={"auto": None, "on": True, "off": False}[args.cpu_bf16])
        if cuda:
            peak, label = gpu_peak(report["device"])
            m["gpu_peak_tflops_bf16"], m["gpu_peak_label"] = peak, label or "unknown GPU: no utilisation figure"
            if peak:
                m["utilisation"] = round(m["achieved_tflops"] / peak, 4)
            if batch == 8 and crop == 512 and args.width_mult == 1.0:
                m["voc_1_8_projected_hours_1gpu"] = round(m["optimized_ms"] * VOC_1_8_ITERS / 3.6e6, 2)
        report["mgd_step"] = m
    if "teachers" not in args.skip:
        report["teachers"] = {arch: teacher_step_bench(device, arch, batch=batch, crop=crop, steps=steps, warmup=warmup,
                                                       width_mult=args.width_mult, head_channels=args.head_channels)
                              for arch in TEACHERS}
    if "mgd_step" in report and "teachers" in report:
        scale = (512 / crop) ** 2  # per image at crop 512: only a measurement at the real sizes projects the recipes
        report["projections"] = recipe_projections(
            {"student": report["mgd_step"]["optimized_ms"] / batch * scale,
             **{f"teacher_{a}": t["step_ms"] / batch * scale for a, t in report["teachers"].items()}})
        report["projections_note"] = (
            "hours on this one device from the measured steps" if crop == 512 and args.width_mult == 1.0 else
            "NOT a projection: networks or crop were shrunk (--tiny/--crop/--width-mult); shows the arithmetic only")
    if "data" not in args.skip:
        report["data"] = loader_stats(**(dict(batches=2, warmup=1, crop=crop, micro_batch=2) if args.tiny else
                                         dict(batches=4, warmup=1) if quick else
                                         dict(workers=(1, 2), batches=10, warmup=2)))
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
            ev, below = s.get("eval_images_per_s", {}), s.get("backbone_flops_below_teachers")
            paper = s.get("paper_backbone_flops_below_teachers")
            note = f"{below['resnet101']:.2f}x / {below['wrn50_2']:.2f}x ({paper[0]}x / {paper[1]}x)" if below else ""
            lines.append(f"{arch:<12} {s['params_m']['backbone']:>11.2f} {s['params_m']['head']:>6.2f} "
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
            + (f"; optimized bf16 {m['optimized_bf16_ms']:.0f} ms -> {m['speedup_bf16']:.2f}x the fp32 reference "
               f"(loss rel diff {m['max_loss_rel_diff_bf16']:.2g})" if "optimized_bf16_ms" in m else "")
            + (f"; compile {m['compile_s']} s" if "compile_s" in m else ""))
        if m.get("gpu_peak_tflops_bf16"):
            lines.append(f"share of the {m['gpu_peak_label']} dense bf16 peak ({m['gpu_peak_tflops_bf16']:.0f} "
                         f"TFLOP/s): {100 * m['utilisation']:.1f} %")
    lines += [f"CPS teacher step ({arch}, batch {t['batch']}, crop {t['crop']}): {t['step_ms']:.0f} ms, "
              f"{t['images_per_s']:.3g} img/s" for arch, t in r.get("teachers", {}).items()]
    if r.get("projections"):
        lines.append(f"projected wall time on this device ({r.get('projections_note', '')}):")
        lines += [f"  {key:<28} {p['iterations']:>7} iters x batch {p['global_batch']:>2} crop {p['crop']}: "
                  f"{p['hours']:.1f} h" + (" (scaled by pixels from crop 512)" if p["scaled_from_crop_512"] else "")
                  for key, p in r["projections"].items()]
    if "data" in r:
        per = ", ".join(f"{x['num_workers']} worker(s): {x['samples_per_s']:.3g} samples/s "
                        f"({x['samples_per_s_per_worker']:.3g}/worker)" for x in r["data"]["results"])
        lines.append(f"data loader (MGD samples, crop {r['data']['crop']}): {per}")
    lines.append(f"total {r.get('seconds', nan)} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
