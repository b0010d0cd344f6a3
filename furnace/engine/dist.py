"""Distributed state: one process per device, started by ``torchrun`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``)
or alone, where every helper degrades to the single-process behaviour: callers never branch on it."""
import atexit
import contextlib
import datetime
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as tdist

from ..utils import UserError

_STATE = {"owns_group": False}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value != "" else default
    except ValueError as err:
        raise UserError(f"environment: {name}={value!r} is not an integer (set by torchrun)") from err


def env_world_size() -> int:
    """``WORLD_SIZE`` (1 without it), known before the rendezvous so that config errors stop every process alike."""
    return _env_int("WORLD_SIZE", 1)


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """The device this process computes on: ``cuda:<local_rank>`` when CUDA is wanted and present."""
    if preference not in ("auto", "cuda", "cpu"):
        raise UserError(f"config: device={preference!r} is not one of auto, cuda, cpu")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("config: device='cuda' but no CUDA device is visible; use device=cpu or device=auto")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                        "start at most one process per GPU (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


def _backend(dev: torch.device) -> str:
    """NCCL on CUDA, gloo on CPU; ``DIST_BACKEND=nccl|gloo`` overrides (gloo lets several processes share a GPU)."""
    chosen = os.environ.get("DIST_BACKEND", "").strip().lower()
    if chosen not in ("", "nccl", "gloo"):
        raise UserError(f"environment: DIST_BACKEND={chosen!r} is not nccl or gloo (or unset)")
    if chosen == "nccl" and dev.type != "cuda":
        raise UserError("environment: DIST_BACKEND=nccl needs CUDA devices; unset it or use gloo")
    return chosen or ("nccl" if dev.type == "cuda" else "gloo")


def setup(device: str = "auto", timeout_s: float = 300) -> tuple[int, int, torch.device]:
    """Join the process group ``torchrun`` describes (idempotent), pick the device: ``(rank, world_size, device)``.
    A collective that waits ``timeout_s`` seconds for a peer (``dist_timeout_s``) fails instead of hanging: gloo
    raises, NCCL's watchdog tears the process down; either way torchrun sees the failure and can restart."""
    world = env_world_size()
    dev = resolve_device(device, _env_int("LOCAL_RANK", 0))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        backend = _backend(dev)
        if backend == "nccl":
            # 3: a timed-out collective ends the process, for torchrun to restart (the documented default; a
            # value set in the environment is kept)
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
        timeout = datetime.timedelta(seconds=timeout_s)
        store, rank, world = _attempt_store(timeout)
        tdist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout,
                                 **({"device_id": dev} if backend == "nccl" else {}))
        _STATE["owns_group"] = True
        atexit.register(cleanup)
    return get_rank(), get_world_size(), dev


def _attempt_store(timeout: datetime.timedelta) -> tuple[Any, int, int]:
    """``(store, rank, world_size)`` of the ``env://`` rendezvous (the store torchrun's agent serves), the store's
    keys under this attempt's prefix: torchrun's static rendezvous keeps one store across restarts, and a
    restarted group reading the addresses the previous attempt left there waits for processes that are gone."""
    store, rank, world = next(tdist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return tdist.PrefixStore(f"default_pg/attempt-{attempt}", store), rank, world


def cleanup() -> None:
    """Leave the process group if :func:`setup` created it (registered with ``atexit``)."""
    if _STATE["owns_group"] and tdist.is_initialized():
        tdist.destroy_process_group()
        time.sleep(0.1)  # lets gloo's threads drop their tensors before exit, else SIGABRT (docs/notes.md)
    _STATE["owns_group"] = False


def is_dist() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    return tdist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return tdist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on the process that logs and writes files (rank 0)."""
    return get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes; returns a new tensor on the input's device and dtype."""
    if not is_dist():
        return tensor.clone()
    nccl = tdist.get_backend() == "nccl"  # NCCL collectives need CUDA tensors, gloo CPU ones
    buf = tensor.detach().to(torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu").clone()
    tdist.all_reduce(buf, op=tdist.ReduceOp.SUM)
    return buf.to(tensor.device)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every buffer of ``module`` from rank ``src`` to all processes: without SyncBatchNorm each
    updates its own BN statistics, and DDP only re-broadcasts rank 0's at the next forward."""
    if is_dist():
        for buf in module.buffers():
            tdist.broadcast(buf.data, src=src)


def all_gather_object(obj: Any) -> list:
    """Every process's ``obj`` (picklable), indexed by rank."""
    if not is_dist():
        return [obj]
    out: list = [None] * get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def run_on_main(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 (None elsewhere) while the others wait; an error there is raised on every process,
    so a failed file write never leaves the other ranks blocked."""
    error, result = None, None
    if is_main():
        try:
            result = fn()
        except Exception as err:  # re-raised below, after the others know
            error = err
    if is_dist():
        failed = all_reduce_sum(torch.tensor([1.0 if error is not None else 0.0]))
        if error is None and failed.item() > 0:
            raise UserError("rank 0 failed while writing files; its error message says why")
    if error is not None:
        raise error
    return result


def sync_batchnorm(module: torch.nn.Module, backbones: bool = True) -> torch.nn.Module:
    """``module`` with its BatchNorms as SyncBatchNorm; ``backbones=False`` leaves submodules named ``backbone``
    per process, as the original trained its MobileNet-v2 students (plain BN over each GPU's 2 images)."""
    if backbones:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if name == "backbone":
            continue
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            setattr(module, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            sync_batchnorm(child, backbones=False)
    return module


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX): the kernel's CPU flags on Linux, else
    torch's own query. Without them bf16 is emulated, far slower than fp32."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def amp_choice(amp: str, device: torch.device, key: str = "amp") -> tuple[torch.dtype | None, str]:
    """``(autocast dtype or None for fp32, why)`` for ``cfg.amp`` / ``cfg.eval_amp`` (``key``) on ``device``.
    ``auto``: bf16 where the GPU or CPU has it natively (no loss scaling), else fp16 on a GPU and fp32 on a CPU."""
    if amp == "none":
        return None, f"{key}=none"
    if device.type == "cuda":
        if amp == "auto":
            bf16 = torch.cuda.is_bf16_supported()
            return (torch.bfloat16, "amp=auto, the GPU has bf16") if bf16 else (torch.float16, "amp=auto, no bf16 on this GPU")
        return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp], f"{key}={amp}"
    if amp == "fp16":
        choices = "bf16, auto or none" if key == "amp" else "bf16 or none"
        raise UserError(f"config: {key}=fp16 is for GPUs without bf16; on a CPU use {key}={choices}")
    native = cpu_has_native_bf16()
    if amp == "auto":
        return (torch.bfloat16, "amp=auto, this CPU has native bf16 (AVX-512 BF16 / AMX)") if native else \
            (None, "amp=auto, this CPU has no native bf16 (AVX-512 BF16 / AMX)")
    return torch.bfloat16, f"{key}=bf16" + ("" if native else ", emulated on this CPU: slow")


class StopRequest:
    """SIGTERM / SIGINT / SIGUSR1 handler for a ``with`` block: the first signal sets ``requested`` (the loop
    saves and exits); the same signal ``ABORT_AFTER_S`` or more later raises KeyboardInterrupt. Other repeats
    are ignored: Ctrl-C on ``torchrun`` reaches each worker twice, and SLURM's warning signal (USR1) is
    followed by the launcher's TERM; neither must skip the save."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)  # USR1: SLURM's warning before the time limit

    ABORT_AFTER_S = 1.0

    def __init__(self, announce: bool = True):
        self._pid, self.announce, self._previous = os.getpid(), announce, {}
        self.requested, self.signum, self._first_at = False, 0, 0.0

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:
            return  # a forked data-loading worker inherited the handler: the main process decides
        if self.requested:
            if signum == self.signum and time.monotonic() - self._first_at >= self.ABORT_AFTER_S:
                raise KeyboardInterrupt
            return
        self.requested, self.signum, self._first_at = True, signum, time.monotonic()
        if self.announce:
            print(f"\nreceived {signal.Signals(signum).name}: finishing the current iteration, then saving "
                  "checkpoints/latest.pth (send it again to abort without saving)", file=sys.stderr, flush=True)

    def __enter__(self):
        for s in self.SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: signals cannot be caught here
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
