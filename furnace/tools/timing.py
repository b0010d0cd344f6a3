"""Timing for the benchmarks and the export's latency check: synchronised wall and CPU times, medians,
true fp32, FLOPs, and timed training steps of a method on a fixed batch."""
import statistics
import time
from contextlib import contextmanager

import torch


def sync(device: torch.device | None) -> None:
    """Wait for the work queued on a CUDA ``device``."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device | None = None) -> tuple[float, float]:
    """(wall, process CPU) milliseconds of one ``fn()``, the device synchronised before and after; the CPU
    time does not grow while the process waits for a core other programs hold."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000


def median_ms(fn, device: torch.device | None = None, *, warmup: int = 0, iters: int = 1) -> float:
    """Median wall milliseconds of ``iters`` (at least 1) ``fn()`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device)[0] for _ in range(max(1, iters)))


@contextmanager
def no_tf32():
    """True fp32 convolutions and matmuls on CUDA (cuDNN convolutions use TF32 by default)."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (forward and backward): matrix products and convolutions only, a multiply-add = 2."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


class TrainStep:
    """A method's training step with SGD on a fixed batch (the loader's format, moved to ``device``; batch and
    method channels_last when asked) under autocast ``dtype`` (None: fp32). ``timed_step`` appends to ``times``
    / ``cpu_times`` (ms); on CUDA ``peak_work`` is the most bytes a step allocated above what was resident."""

    def __init__(self, name: str, method, batch: dict, device: torch.device, dtype, *, channels_last: bool = False):
        from ..datasets.device import to_device
        self.name, self.device, self.dtype = name, device, dtype
        self.method = method.to(memory_format=torch.channels_last) if channels_last else method
        self.batch = to_device(batch, device, channels_last=channels_last)
        self.optimizer = torch.optim.SGD(method.parameters(), lr=1e-3, momentum=0.9)
        self.times, self.cpu_times, self.peak_work = [], [], 0

    def step(self, record: dict | None = None) -> None:
        """Forward, backward and update; the losses go into ``record`` as floats when given."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            losses = self.method(self.batch)
        losses["loss"].backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if record is not None:
            record.update({k: float(v.detach()) for k, v in losses.items()})

    def timed_step(self) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            sync(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        wall, cpu = timed(self.step, self.device)
        self.times.append(wall)
        self.cpu_times.append(cpu)
        if cuda:
            self.peak_work = max(self.peak_work, torch.cuda.max_memory_allocated(self.device) - base)


def run_steps(paths: list[TrainStep], warmup: int, steps: int) -> None:
    """``warmup`` untimed, then ``steps`` timed steps of every path, alternating so that a load change on the
    machine slows every path alike."""
    for _ in range(warmup):
        for path in paths:
            path.step()
    for _ in range(steps):
        for path in paths:
            path.timed_step()
