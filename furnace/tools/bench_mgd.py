"""The MGD training step benchmark: the reference path against the optimized one on the same batch.

:func:`mgd_step_bench` is the ``mgd_step`` section of ``python -m furnace.tools.benchmark`` (whose module
docstring describes the two paths and the figures reported). Steps:

1. :func:`_two_paths`: random teachers written as files and loaded by two MGD methods exactly as
   training does (``teacher_impl="reference"`` and ``"batched"``), the same student initialisation in both;
2. :func:`_fp32_losses`: with autocast, both paths once in true fp32 (the maths without bf16 rounding);
3. :func:`_first_steps`: the first step of each path, its losses and FLOPs;
4. :func:`_compile` (optional), then :func:`_time_steps`: warm-up, then the two paths' steps alternated;
5. :func:`_report`: the medians, rates, settings and memory.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..datasets.batch import synthetic_batch
from ..datasets.device import to_device
from ..engine.dist import amp_dtype
from .timing import TrainStep, count_flops, no_tf32, sync

TEACHER_ARCHS = (("deep", "resnet101"), ("wide", "wrn50_2"))


def mgd_step_bench(device: torch.device, *, batch: int, crop: int, arch: str = "resnet18", steps: int = 3,
                   warmup: int = 1, num_classes: int = 21, width_mult: float = 1.0, head_channels: int = 256,
                   student_channels_last: bool | None = None, compile_mode: str = "off") -> dict:
    """Reference vs optimized MGD step (forward, backward, SGD update) at ``batch`` x ``crop``.

    Teachers (resnet101, wrn50_2) and student are randomly initialised with ``width_mult`` /
    ``head_channels`` (1.0 / 256: the real networks), written as teacher files and loaded by the
    method exactly as training does. ``student_channels_last`` None -> on CUDA only (on a CPU oneDNN's
    channels_last backward is slower for the student; the teachers gain from it). ``compile_mode``:
    "off", "teachers" (what ``compile_teachers=true`` does in training) or "student".
    Returns the figures described in :mod:`furnace.tools.benchmark`'s docstring.
    """
    if student_channels_last is None:
        student_channels_last = device.type == "cuda"
    amp = amp_dtype("auto", device)
    data = synthetic_batch(batch, crop, num_classes)
    opts = dict(width_mult=width_mult, head_channels=head_channels)
    with tempfile.TemporaryDirectory(prefix="mgd_bench_") as tmpdir:
        ref, fast = _two_paths(device, Path(tmpdir), data, arch, num_classes, opts, student_channels_last, amp)
        check = _fp32_losses(ref, fast) if amp is not None else {}
        first, flops = _first_steps(ref, fast)
        compile_s = _compile(fast, compile_mode) if compile_mode != "off" else 0.0
        _time_steps(ref, fast, warmup, steps)
    out = {"arch": arch, "batch": batch, "crop": crop, "device": str(device), "threads": torch.get_num_threads()}
    if width_mult != 1.0 or head_channels != 256:
        out.update(width_mult=width_mult, head_channels=head_channels)
    out.update(_report(ref, fast, first, check, flops, batch))
    out["optimized_settings"] = {
        "teachers": "one batched inference_mode pass each, channels_last",
        "student_channels_last": student_channels_last,
        "autocast": str(amp).replace("torch.", "") if amp else "off",
        "compile": compile_mode,
    }
    out.update(_step_lists(ref, fast, steps, warmup, first))
    if compile_mode != "off":
        out["compile_s"] = round(compile_s, 1)
    if device.type == "cuda":
        for r in (ref, fast):
            out[f"{r.name}_peak_mem_gb"] = round((_resident_bytes(r) + r.peak_work) / 2**30, 2)
        out["peak_mem_gb"] = out["optimized_peak_mem_gb"]
    return out


def _two_paths(device, tmp: Path, data: dict, arch: str, num_classes: int, opts: dict, student_channels_last: bool,
               amp) -> tuple[TrainStep, TrainStep]:
    """The reference path (fp32, NCHW) and the optimized one (batched teachers, ``amp``, the student
    channels_last when asked) on the same batch, with the same teachers and student initialisation."""
    from ..config import prepare, voc_config
    from ..methods import build_method
    from ..models import build_model, save_segmentor

    torch.manual_seed(1)
    for name, t_arch in TEACHER_ARCHS:
        save_segmentor(build_model(t_arch, num_classes, verbose=False, **opts), tmp / f"{name}.pth")

    def build(impl: str):
        C = voc_config()
        C.update(data_root=str(tmp), output_dir=str(tmp / "out"), pretrained="", arch=arch, method="mgd",
                 teacher_impl=impl, num_classes=num_classes, teacher_deep=str(tmp / "deep.pth"),
                 teacher_wide=str(tmp / "wide.pth"), **opts)
        torch.manual_seed(2)  # the same student initialisation for both paths
        return build_method(prepare(C), device).to(device).train()

    reference, optimized = build("reference"), build("batched")
    if student_channels_last:
        optimized.to(memory_format=torch.channels_last)
    return (TrainStep("reference", reference, to_device(data, device), device, None),
            TrainStep("optimized", optimized, to_device(data, device, channels_last=student_channels_last), device, amp))


def _fp32_losses(ref: TrainStep, fast: TrainStep) -> dict:
    """Both paths' losses once in true fp32 (no autocast, TF32 off), without a step."""
    check = {}
    with torch.no_grad(), no_tf32():
        for r in (ref, fast):
            check[r.name] = {k: float(v) for k, v in r.method(r.batch).items()}
    return check


def _first_steps(ref: TrainStep, fast: TrainStep) -> tuple[dict, dict]:
    """The first step of each path: ``({path: losses}, {path: FLOPs})``."""
    first = {"reference": {}, "optimized": {}}
    flops = {"reference": count_flops(lambda: ref.step(first["reference"])),
             "optimized": count_flops(lambda: fast.step(first["optimized"]))}
    return first, flops


def _compile(path: TrainStep, mode: str) -> float:
    """torch.compile part of ``path`` (``mode`` "teachers" or "student"); seconds until a step has run."""
    t0 = time.perf_counter()
    if mode == "teachers":
        for teacher in path.method.teachers.values():  # what compile_teachers=true does in training
            teacher.compile()
    elif mode == "student":
        path.method.student = torch.compile(path.method.student)
    else:
        raise ValueError(f"unknown compile mode {mode!r}")
    path.step()  # compiles
    sync(path.device)
    return time.perf_counter() - t0


def _time_steps(ref: TrainStep, fast: TrainStep, warmup: int, steps: int) -> None:
    for _ in range(warmup):
        ref.step()
        fast.step()
    for _ in range(steps):  # alternate: a load change on the machine hits both paths alike
        ref.timed_step()
        fast.timed_step()


def _rel_diff(ref: dict, other: dict) -> float:
    return max(abs(other[k] - v) / max(abs(v), 1e-12) for k, v in ref.items())


def _report(ref: TrainStep, fast: TrainStep, first: dict, check: dict, flops: dict, batch: int) -> dict:
    """Median step times, speed-ups, loss differences, images/s and TFLOP/s of the two paths."""
    ref_ms, fast_ms = statistics.median(ref.times), statistics.median(fast.times)
    out = {
        "reference_ms": round(ref_ms, 2),
        "optimized_ms": round(fast_ms, 2),
        "speedup": round(ref_ms / fast_ms, 3),
        "max_loss_rel_diff": float(f"{_rel_diff(first['reference'], first['optimized']):.3g}"),
    }
    if ref.device.type == "cpu":
        # On a CPU shared with other programs the wall time swings with their load; the process's
        # CPU time per step does much less (with several threads it includes OpenMP spin-waiting).
        ref_cpu, fast_cpu = statistics.median(ref.cpu_times), statistics.median(fast.cpu_times)
        out.update({"reference_cpu_ms": round(ref_cpu, 2), "optimized_cpu_ms": round(fast_cpu, 2),
                    "speedup_cpu_time": round(ref_cpu / fast_cpu, 3),
                    "speedup_best_wall": round(min(ref.times) / min(fast.times), 3)})
    if check:
        out["max_loss_rel_diff_fp32"] = float(f"{_rel_diff(check['reference'], check['optimized']):.3g}")
    out.update({
        "images_per_s": round(batch * 1000 / fast_ms, 3),
        "reference_images_per_s": round(batch * 1000 / ref_ms, 3),
        "step_tflop": round(flops["optimized"] / 1e12, 4),
        "achieved_tflops": round(flops["optimized"] / 1e12 / (fast_ms / 1000), 4),
        # the same maths: both paths multiply-add the same amount, only how fast differs
        "reference_step_tflop": round(flops["reference"] / 1e12, 4),
        "reference_achieved_tflops": round(flops["reference"] / 1e12 / (ref_ms / 1000), 4),
    })
    return out


def _step_lists(ref: TrainStep, fast: TrainStep, steps: int, warmup: int, first: dict) -> dict:
    """Every timed step's milliseconds (and CPU milliseconds on a CPU) and the first step's losses."""
    out = {"timed_steps": steps, "warmup_steps": warmup,
           "step_ms_all": {r.name: [round(t, 1) for t in r.times] for r in (ref, fast)}}
    if ref.device.type == "cpu":
        out["step_cpu_ms_all"] = {r.name: [round(t, 1) for t in r.cpu_times] for r in (ref, fast)}
    out["losses_first_step"] = first
    return out


def _resident_bytes(path: TrainStep) -> int:
    """Weights, buffers (student and teachers) and optimizer state ``path`` keeps on the device."""
    nets = [path.method, *(t.network for t in path.method.teachers.values())]
    tensors = [t for n in nets for t in (*n.parameters(), *n.buffers())]
    tensors += [v for s in path.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    unique = {id(t): t for t in tensors}.values()
    return sum(t.numel() * t.element_size() for t in unique)
