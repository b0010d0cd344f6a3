"""Timing for the benchmarks: synchronised wall and CPU times, medians after warm-up, true fp32, FLOPs,
and one timed training step (forward, backward, SGD update) of a method on a fixed batch.

Used by :mod:`furnace.tools.benchmark`, :mod:`furnace.tools.bench_mgd` and the export's latency check.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import torch


def sync(device: torch.device | None) -> None:
    """Wait for the work queued on a CUDA ``device`` (nothing to wait for on a CPU)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device | None = None) -> tuple[float, float]:
    """(wall, CPU) milliseconds of one ``fn()`` call, the device synchronised before and after. The CPU
    time of the process (all its threads) is what the call cost on a CPU whose cores other programs
    share: it does not grow while the process waits for a core, which the wall time does."""
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
    """True fp32 convolutions and matmuls on CUDA (PyTorch lets cuDNN convolutions use TF32 by default)."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def count_flops(fn) -> int:
    """FLOPs of everything ``fn()`` runs (forward and backward), counted by torch.utils.flop_counter.

    Only matrix products and convolutions count (a multiply-add = 2 FLOPs); elementwise work does not.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


class TrainStep:
    """One way of running a method's training step: the method, an SGD optimizer, a fixed batch (on the
    device) and the autocast dtype (None: fp32); ``timed_step`` records wall and CPU milliseconds and,
    on CUDA, the peak memory the step allocates above what was resident before it (``peak_work``)."""

    def __init__(self, name: str, method, batch: dict, device: torch.device, dtype):
        self.name, self.method, self.device, self.dtype = name, method, device, dtype
        self.batch = batch
        self.optimizer = torch.optim.SGD(method.parameters(), lr=1e-3, momentum=0.9)
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.peak_work = 0

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
