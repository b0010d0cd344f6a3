"""A ring of shared-memory batch slots that loader workers fill and the main process copies out.

Handing a batch from a worker to the main process the default way allocates fresh shared memory per
tensor, and filling fresh pages costs a page fault per 4 KiB: at crop 512 that was a third of a
worker's time. Here the main process creates ``size`` slots once per epoch (inherited by the forked
workers); micro-batch ``k`` is written into slot ``k % size`` and the worker returns only ``k``. The
main process copies the slot out (into pinned memory when asked) and marks it released; a worker
about to reuse a slot first waits until the batch that held it (``k - size``) was released.

No deadlock: the lowest micro-batch not yet handed out never waits (everything below it was handed
out, so released), and every worker works through its own tasks in increasing order.
"""

from __future__ import annotations

import math
import time

import torch

_TIMEOUT_S = 600.0


def _layout(specs: dict) -> tuple[dict, int]:
    """Byte offset of each ``{key: (shape, dtype)}`` in one buffer (8-byte aligned) and the total."""
    offsets, total = {}, 0
    for key, (shape, dtype) in specs.items():
        total = -(-total // 8) * 8
        offsets[key] = total
        total += math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    return offsets, total


def carve(buffer: torch.Tensor, specs: dict, offsets: dict) -> dict:
    """Views ``{key: tensor of shape, dtype}`` into the uint8 ``buffer`` at ``offsets``."""
    out = {}
    for key, (shape, dtype) in specs.items():
        nbytes = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        out[key] = buffer[offsets[key] : offsets[key] + nbytes].view(dtype).view(shape)
    return out


def allocate(specs: dict) -> dict:
    """Fresh private tensors ``{key: (shape, dtype)}`` carved from one buffer."""
    offsets, total = _layout(specs)
    return carve(torch.empty(total, dtype=torch.uint8), specs, offsets)


class SlotRing:
    """``size`` shared slots, each holding one micro-batch laid out by ``specs``; ``first`` is the
    first micro-batch index of the epoch (slots start free)."""

    def __init__(self, specs: dict, size: int, first: int):
        self.specs, self.size, self.first = specs, int(size), int(first)
        self.offsets, self.slot_bytes = _layout(specs)
        self.buffer = torch.empty(self.size * self.slot_bytes, dtype=torch.uint8).share_memory_()
        self.released = torch.full((self.size,), -1, dtype=torch.int64).share_memory_()

    def _slot(self, k: int) -> dict:
        start = (k % self.size) * self.slot_bytes
        return carve(self.buffer[start : start + self.slot_bytes], self.specs, self.offsets)

    def acquire(self, k: int) -> dict:
        """Worker side: the views of micro-batch ``k``'s slot, once its previous user was released."""
        previous = k - self.size
        deadline = time.monotonic() + _TIMEOUT_S
        while previous >= self.first and int(self.released[k % self.size]) < previous:
            if time.monotonic() > deadline:
                raise RuntimeError(f"loader slot of micro-batch {previous} was not released in {_TIMEOUT_S:.0f} s")
            time.sleep(0.0005)
        return self._slot(k)

    def copy_out(self, k: int, pin: bool = False) -> dict:
        """Main-process side: a private (pinned when ``pin``) copy of micro-batch ``k``; frees its slot."""
        views = self._slot(k)
        out = {key: torch.empty_like(v, pin_memory=pin).copy_(v) for key, v in views.items()}
        self.released[k % self.size] = k
        return out
