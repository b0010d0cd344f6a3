"""The training-step sections of ``python -m furnace.tools.benchmark``: the reference MGD step against the
optimized one on the same batch, teachers and student initialisation, and the CPS teacher step."""
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..datasets.batch import synthetic_batch
from ..engine.dist import amp_choice, cpu_has_native_bf16
from .timing import TrainStep, count_flops, no_tf32, run_steps, sync

TEACHER_ARCHS = (("deep", "resnet101"), ("wide", "wrn50_2"))


def mgd_step_bench(device: torch.device, *, batch: int, crop: int, arch: str = "resnet18", steps: int = 3,
                   warmup: int = 1, num_classes: int = 21, width_mult: float = 1.0, head_channels: int = 256,
                   student_channels_last: bool | None = None, compile_mode: str = "off",
                   cpu_bf16: bool | None = None) -> dict:
    """One MGD step (forward, backward, SGD update) at ``batch`` x ``crop`` two ways, steps alternating: the
    *reference* path (each teacher called on x_l, u0, u1 and x_m; fp32, NCHW) and the *optimized* one
    (teacher_impl="batched": one inference-mode pass of BN-folded channels_last teachers; on CUDA bf16 autocast,
    on a CPU fp32).
    Random networks at ``width_mult`` / ``head_channels`` (1.0 / 256: the real ones), the teachers loaded from
    files as training does. ``student_channels_last`` None: on CUDA only. ``compile_mode``: "off", "teachers" (as
    ``compile_teachers=true``) or "student". Returns median ms per path, ``speedup``, images/s, TFLOP/s and
    ``max_loss_rel_diff`` of the first step's losses (``_fp32``: both in true fp32); CPU time or peak memory. On a
    CPU with ``cpu_bf16`` (None: when it has native bf16) also the optimized path under bf16 autocast (``*_bf16``)."""
    if student_channels_last is None:  # on a CPU oneDNN's channels_last backward is slower for the student
        student_channels_last = device.type == "cuda"
    amp = amp_choice("auto", device)[0] if device.type == "cuda" else None  # a CPU's bf16 path is measured beside
    data = synthetic_batch(batch, crop, num_classes)
    opts = dict(width_mult=width_mult, head_channels=head_channels)
    with tempfile.TemporaryDirectory(prefix="mgd_bench_") as tmpdir:
        ref, fast = _two_paths(device, Path(tmpdir), data, arch, num_classes, opts, student_channels_last, amp)
        native = device.type == "cpu" and cpu_has_native_bf16()
        bf16 = _two_paths(device, Path(tmpdir), data, arch, num_classes, opts, student_channels_last, torch.bfloat16)[1] \
            if device.type == "cpu" and (native if cpu_bf16 is None else cpu_bf16) else None
        check = {}
        if amp is not None:  # both paths once in true fp32: the maths without the bf16 rounding
            with torch.no_grad(), no_tf32():
                check = {r.name: {k: float(v) for k, v in r.method(r.batch).items()} for r in (ref, fast)}
        first = {"reference": {}, "optimized": {}}
        flops = {r.name: count_flops(lambda r=r: r.step(first[r.name])) for r in (ref, fast)}
        compile_s = _compile(fast, compile_mode) if compile_mode != "off" else 0.0
        if bf16 is not None:
            bf16.step(first.setdefault("optimized_bf16", {}))
        run_steps([ref, fast] + ([bf16] if bf16 is not None else []), warmup, steps)
    out = {"arch": arch, "batch": batch, "crop": crop, "device": str(device), "threads": torch.get_num_threads()}
    if width_mult != 1.0 or head_channels != 256:
        out.update(width_mult=width_mult, head_channels=head_channels)
    out.update(_report(ref, fast, first, check, flops, batch))
    if bf16 is not None:
        bf16_ms = statistics.median(bf16.times)
        out.update(optimized_bf16_ms=round(bf16_ms, 2), speedup_bf16=round(out["reference_ms"] / bf16_ms, 3),
                   images_per_s_bf16=round(batch * 1000 / bf16_ms, 3), bf16_native=native,
                   max_loss_rel_diff_bf16=_rel_diff({"reference": first["reference"], "optimized": first["optimized_bf16"]}))
    elif device.type == "cpu":
        out["bf16"] = "not measured: this CPU has no native bf16 (AVX-512 BF16 / AMX); --cpu-bf16 on measures the emulation"
    out["optimized_settings"] = {"teachers": "one batched no_grad pass each, channels_last",
                                 "student_channels_last": student_channels_last,
                                 "autocast": str(amp).replace("torch.", "") if amp else "off", "compile": compile_mode}
    out.update(timed_steps=steps, warmup_steps=warmup,
               step_ms_all={r.name: [round(t, 1) for t in r.times] for r in (ref, fast)})
    if device.type == "cpu":
        out["step_cpu_ms_all"] = {r.name: [round(t, 1) for t in r.cpu_times] for r in (ref, fast)}
    if bf16 is not None:
        out["step_ms_all"]["optimized_bf16"] = [round(t, 1) for t in bf16.times]
    out["losses_first_step"] = first
    if compile_mode != "off":
        out["compile_s"] = round(compile_s, 1)
    if device.type == "cuda":
        for r in (ref, fast):
            out[f"{r.name}_peak_mem_gb"] = round((_resident_bytes(r) + r.peak_work) / 2**30, 2)
        out["peak_mem_gb"] = out["optimized_peak_mem_gb"]
    return out


def _two_paths(device, tmp: Path, data: dict, arch: str, num_classes: int, opts: dict, student_channels_last: bool,
               amp) -> tuple[TrainStep, TrainStep]:
    """The two paths with the same teachers (written as files) and student initialisation."""
    from ..models import build_model, save_segmentor
    torch.manual_seed(1)
    for name, t_arch in TEACHER_ARCHS:
        save_segmentor(build_model(t_arch, num_classes, verbose=False, **opts), tmp / f"{name}.pth")
    reference, optimized = (_method(device, 2, data_root=str(tmp), output_dir=str(tmp / "out"), arch=arch,
                                    method="mgd", teacher_impl=impl, num_classes=num_classes,
                                    teacher_deep=str(tmp / "deep.pth"), teacher_wide=str(tmp / "wide.pth"), **opts)
                            for impl in ("reference", "batched"))
    name = "optimized_bf16" if amp == torch.bfloat16 and device.type == "cpu" else "optimized"
    return (TrainStep("reference", reference, data, device, None),
            TrainStep(name, optimized, data, device, amp, channels_last=student_channels_last))


def teacher_step_bench(device: torch.device, arch: str, *, batch: int, crop: int, steps: int = 3, warmup: int = 1,
                       num_classes: int = 21, width_mult: float = 1.0, head_channels: int = 256) -> dict:
    """One CPS teacher step (two ``arch`` networks) at ``batch`` x ``crop`` as the teacher recipes train
    (autocast and channels_last on CUDA): ``{"arch", "batch", "crop", "step_ms", "images_per_s", "step_ms_all"}``."""
    with tempfile.TemporaryDirectory(prefix="teacher_bench_") as tmp:
        method = _method(device, 3, data_root=tmp, output_dir=tmp, arch=arch, method="cps", num_classes=num_classes,
                         width_mult=width_mult, head_channels=head_channels)
    amp = amp_choice("auto", device)[0]
    path = TrainStep("teacher", method, synthetic_batch(batch, crop, num_classes), device, amp,
                     channels_last=device.type == "cuda")
    run_steps([path], 1 + warmup, max(1, steps))
    ms = statistics.median(path.times)
    return {"arch": arch, "batch": batch, "crop": crop, "step_ms": round(ms, 2),
            "images_per_s": round(batch * 1000 / ms, 3), "step_ms_all": [round(t, 1) for t in path.times]}


def _method(device: torch.device, seed: int, **overrides):
    """A method of the VOC config with ``overrides``, random weights after ``torch.manual_seed(seed)``."""
    from ..config import prepare, voc_config
    from ..methods import build_method
    C = voc_config()
    C.update(pretrained="", **overrides)
    torch.manual_seed(seed)
    return build_method(prepare(C), device).to(device).train()


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


def _rel_diff(losses: dict) -> float:
    """The largest relative difference of the optimized path's losses from the reference's."""
    ref, other = losses["reference"], losses["optimized"]
    return float(f"{max(abs(other[k] - v) / max(abs(v), 1e-12) for k, v in ref.items()):.3g}")


def _report(ref: TrainStep, fast: TrainStep, first: dict, check: dict, flops: dict, batch: int) -> dict:
    ref_ms, fast_ms = statistics.median(ref.times), statistics.median(fast.times)
    out = {"reference_ms": round(ref_ms, 2), "optimized_ms": round(fast_ms, 2), "speedup": round(ref_ms / fast_ms, 3),
           "max_loss_rel_diff": _rel_diff(first)}
    if ref.device.type == "cpu":
        # the process CPU time swings much less than the wall time with the load of programs sharing the cores
        ref_cpu, fast_cpu = statistics.median(ref.cpu_times), statistics.median(fast.cpu_times)
        out.update(reference_cpu_ms=round(ref_cpu, 2), optimized_cpu_ms=round(fast_cpu, 2),
                   speedup_cpu_time=round(ref_cpu / fast_cpu, 3),
                   speedup_best_wall=round(min(ref.times) / min(fast.times), 3))
    if check:
        out["max_loss_rel_diff_fp32"] = _rel_diff(check)
    # both paths do the same multiply-adds: only the speed differs
    return {**out, "images_per_s": round(batch * 1000 / fast_ms, 3),
            "reference_images_per_s": round(batch * 1000 / ref_ms, 3),
            "step_tflop": round(flops["optimized"] / 1e12, 4),
            "achieved_tflops": round(flops["optimized"] / 1e12 / (fast_ms / 1000), 4),
            "reference_step_tflop": round(flops["reference"] / 1e12, 4),
            "reference_achieved_tflops": round(flops["reference"] / 1e12 / (ref_ms / 1000), 4)}


def _resident_bytes(path: TrainStep) -> int:
    """Weights, buffers (student and teachers) and optimizer state ``path`` keeps on the device."""
    nets = [path.method, *(t.network for t in path.method.teachers.values())]
    tensors = [t for n in nets for t in (*n.parameters(), *n.buffers())]
    tensors += [v for s in path.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())
