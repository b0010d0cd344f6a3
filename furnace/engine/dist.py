"""Distributed state: one process per device, started by ``torchrun`` or as a plain single process.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (and the rendezvous variables) for every
process, on one node or several; without them the process runs alone and every helper here degrades to
the obvious single-process behaviour, so callers never branch on "am I distributed".
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
import time
from typing import Any, Callable

import torch
import torch.distributed as tdist

from ..utils import UserError

_STATE = {"device": torch.device("cpu"), "owns_group": False}
_GLOO_SETTLE_SECONDS = 0.1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value != "" else default
    except ValueError as err:
        raise UserError(f"environment: {name}={value!r} is not an integer (set by torchrun)") from err


def env_world_size() -> int:
    """The process count ``torchrun`` announces (``WORLD_SIZE``, 1 without it), known before joining
    the group: checks that every process fails alike (a config error) run before the rendezvous."""
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
        raise UserError(
            f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
            "start at most one process per GPU (torchrun --nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


def _backend(dev: torch.device) -> str:
    """NCCL on CUDA, gloo on CPU; the ``DIST_BACKEND`` environment variable (nccl | gloo) overrides it
    (gloo also runs collectives on CUDA tensors, e.g. several processes sharing one GPU)."""
    chosen = os.environ.get("DIST_BACKEND", "").strip().lower()
    if chosen not in ("", "nccl", "gloo"):
        raise UserError(f"environment: DIST_BACKEND={chosen!r} is not nccl or gloo (or unset)")
    if chosen == "nccl" and dev.type != "cuda":
        raise UserError("environment: DIST_BACKEND=nccl needs CUDA devices; unset it or use gloo")
    return chosen or ("nccl" if dev.type == "cuda" else "gloo")


def setup(device: str = "auto") -> tuple[int, int, torch.device]:
    """Join the process group ``torchrun`` describes (idempotent) and pick this process's device.

    Returns ``(rank, world_size, device)``. NCCL when the device is CUDA, gloo on CPU
    (``DIST_BACKEND`` overrides, see :func:`_backend`). With
    ``WORLD_SIZE`` unset or 1 no group is created.
    """
    world = env_world_size()
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    _STATE["device"] = dev
    if world > 1 and not tdist.is_initialized():
        backend = _backend(dev)
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        tdist.init_process_group(backend=backend, init_method="env://", **kwargs)
        _STATE["owns_group"] = True
        atexit.register(cleanup)
    return get_rank(), get_world_size(), dev


def cleanup() -> None:
    """Leave the process group if :func:`setup` created it (registered with ``atexit``).

    The short sleep releases the GIL so that gloo's worker threads drop their last tensors while the
    interpreter is still whole; otherwise a finished run can die of SIGABRT at exit (docs/notes.md).
    """
    if _STATE["owns_group"] and tdist.is_initialized():
        tdist.destroy_process_group()
        time.sleep(_GLOO_SETTLE_SECONDS)
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


def comm_device() -> torch.device:
    """Where collective tensors must live: the CUDA device for NCCL, CPU for gloo."""
    if is_dist() and tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_dist():
        tdist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes; returns a new tensor on the input's device and dtype."""
    if not is_dist():
        return tensor.clone()
    buf = tensor.detach().to(comm_device()).clone()
    tdist.all_reduce(buf, op=tdist.ReduceOp.SUM)
    return buf.to(tensor.device)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every buffer of ``module`` (BN running statistics) from rank ``src`` to all processes.

    Without SyncBatchNorm each process updates its own running statistics; DDP re-broadcasts rank
    0's at the start of every forward, so evaluating or saving in between must do the same to see
    the network rank 0 saves.
    """
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
    """Run ``fn`` on rank 0 while the others wait; an error there is raised on every process.

    Used for file writes: a failing write on rank 0 must not leave the other ranks blocked in a
    barrier, so success is shared through a collective instead. Returns ``fn()`` on rank 0, None
    elsewhere.
    """
    error: BaseException | None = None
    result = None
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
    """``module`` with its BatchNorms as SyncBatchNorm (statistics over every process's micro-batch).

    ``backbones=False`` leaves every submodule named ``backbone`` per process: the original trained its
    MobileNet-v2 students that way (plain BN over each GPU's 2 images), with the heads synchronised.
    """
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


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``cfg.amp`` on ``device``; None = full precision (always on CPU).

    ``auto`` picks bfloat16 where the GPU supports it (no loss scaling needed), else float16.
    """
    if device.type != "cuda" or amp == "none":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


class StopRequest:
    """SIGTERM / SIGINT handler for the duration of a ``with`` block.

    The first signal only sets ``requested``: the loop finishes the current iteration, saves and exits.
    The same signal again, a second or more later, aborts at once (KeyboardInterrupt). Other repeats
    are ignored: Ctrl-C on ``torchrun`` reaches each worker twice (from the terminal and forwarded by
    torchrun), and that must not skip the save.
    """

    ABORT_AFTER_S = 1.0

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: bool = True):
        self._pid = os.getpid()
        self.requested = False
        self.signum = 0
        self._first_at = 0.0
        self.announce = announce
        self._previous = {}

    def _handle(self, signum, frame):
        if os.getpid() != self._pid:
            return  # a forked data-loading worker inherited the handler: the main process decides
        if self.requested:
            if signum == self.signum and time.monotonic() - self._first_at >= self.ABORT_AFTER_S:
                raise KeyboardInterrupt
            return
        self.requested, self.signum, self._first_at = True, signum, time.monotonic()
        if self.announce:
            sys.stderr.write(f"\nreceived {signal.Signals(signum).name}: finishing the current iteration, then "
                             "saving checkpoints/latest.pth (send it again to abort without saving)\n")
            sys.stderr.flush()

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False
