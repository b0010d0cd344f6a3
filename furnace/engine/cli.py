"""What the command lines of :mod:`furnace.run` share: the exit on a UserError, the KEY=VALUE parser,
and the ``-e`` snapshot selection of ``eval.py``.

A UserError anywhere prints ``error: <message>`` on stderr and exits with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from ..utils import UserError
from ..utils import user_errors as _user_errors
from . import dist


def user_errors():
    """:func:`furnace.utils.user_errors` for a process of a (possibly distributed) run: the message names
    the rank when there are several, and the process leaves its group before it exits."""
    return _user_errors(prefix=lambda: f"[rank {dist.get_rank()}] " if dist.get_world_size() > 1 else "",
                        cleanup=dist.cleanup)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=Path(sys.argv[0]).name or "furnace", description=description)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override a config value, e.g. lr=0.01")
    return p


# ----------------------------------------------------------------------------- eval


def _snapshot_epochs(directory: Path) -> dict[int, Path]:
    found = {}
    for path in directory.glob("epoch-*.pth"):
        m = re.fullmatch(r"epoch-(\d+)\.pth", path.name)
        if m:
            found[int(m.group(1))] = path
    return found


def select_snapshots(spec: str, ckpt_dir) -> tuple[list[tuple[int | None, Path]], list[int]]:
    """The checkpoints an ``-e`` value names: ``([(epoch or None, path), ...] in epoch order, missing)``.

    ``last`` -> the highest ``epoch-<e>.pth`` in ``ckpt_dir``; ``all`` -> every one; ``20-33`` ->
    those of epochs 20..33 that exist (``missing`` lists the others); ``25`` -> that epoch;
    comma-separated lists combine; anything naming a file (``*.pth``, an exported ``*.onnx`` or containing a
    path separator) is taken as that file. UserError when a part matches nothing.
    """
    ckpt_dir = Path(ckpt_dir)
    available = _snapshot_epochs(ckpt_dir) if ckpt_dir.is_dir() else {}
    avail_text = (f"available epochs: {ranges(sorted(available))}" if available
                  else f"no epoch-<e>.pth in {ckpt_dir}; train first or give -e PATH")
    chosen: dict = {}
    missing: list[int] = []
    for part in [s.strip() for s in spec.split(",") if s.strip()]:
        if part.endswith((".pth", ".onnx")) or os.sep in part or "/" in part:
            path = Path(part)
            if not path.is_file():
                raise UserError(f"-e {part}: file not found")
            m = re.fullmatch(r"epoch-(\d+)\.pth", path.name)
            chosen[(path.resolve())] = (int(m.group(1)) if m else None, path)
            continue
        if part == "all":
            if not available:
                raise UserError(f"-e all: {avail_text}")
            chosen.update({available[e].resolve(): (e, available[e]) for e in available})
            continue
        if part == "last":
            if not available:
                raise UserError(f"-e last: {avail_text}")
            e = max(available)
            chosen[available[e].resolve()] = (e, available[e])
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UserError(f"-e {part}: expected 'last', 'all', an epoch (25), a range (20-33) or a .pth path")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi:
            raise UserError(f"-e {part}: the range is empty (first epoch after last)")
        hits = [e for e in range(lo, hi + 1) if e in available]
        missing += [e for e in range(lo, hi + 1) if e not in available]
        if not hits:
            raise UserError(f"-e {part}: no snapshot of those epochs in {ckpt_dir}; {avail_text}")
        for e in hits:
            chosen[available[e].resolve()] = (e, available[e])
    items = list(chosen.values())
    items.sort(key=lambda t: (t[0] is None, t[0] if t[0] is not None else 0, str(t[1])))
    return items, sorted(set(missing))


def ranges(epochs: list[int]) -> str:
    parts, start = [], None
    for i, e in enumerate(epochs):
        if start is None:
            start = e
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            parts.append(str(start) if start == e else f"{start}-{e}")
            start = None
    return ", ".join(parts)
