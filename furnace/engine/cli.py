"""What the command lines of :mod:`furnace.run` share: the exit on a UserError (``error: <message>``, status 2),
the KEY=VALUE parser and ``eval.py``'s ``-e`` snapshot selection."""
import argparse
import os
import re
import sys
from pathlib import Path

from ..utils import UserError
from ..utils import user_errors as _user_errors
from . import dist


def user_errors():
    """:func:`furnace.utils.user_errors` naming the rank when there are several; the process leaves its group."""
    return _user_errors(prefix=lambda: f"[rank {dist.get_rank()}] " if dist.get_world_size() > 1 else "",
                        cleanup=dist.cleanup)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=Path(sys.argv[0]).name or "furnace", description=description)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override a config value, e.g. lr=0.01")
    return p


def _epoch_of(path: Path) -> int | None:
    m = re.fullmatch(r"epoch-(\d+)\.pth", path.name)
    return int(m.group(1)) if m else None


def select_snapshots(spec: str, ckpt_dir) -> tuple[list[tuple[int | None, Path]], list[int]]:
    """The checkpoints an ``-e`` value names: ``([(epoch or None, path), ...] in epoch order, missing epochs)``.
    Comma-separated parts: ``last`` (the highest ``epoch-<e>.pth`` in ``ckpt_dir``), ``all``, ``25``, ``20-33``
    (those that exist), or a file (``*.pth``, an exported ``*.onnx`` or a path). UserError when a part matches
    nothing."""
    ckpt_dir = Path(ckpt_dir)
    available = {e: p for p in ckpt_dir.glob("epoch-*.pth") if (e := _epoch_of(p)) is not None} \
        if ckpt_dir.is_dir() else {}
    avail_text = (f"available epochs: {ranges(sorted(available))}" if available
                  else f"no epoch-<e>.pth in {ckpt_dir}; train first or give -e PATH")
    chosen, missing = {}, []
    for part in [s.strip() for s in spec.split(",") if s.strip()]:
        if part.endswith((".pth", ".onnx")) or os.sep in part or "/" in part:
            path = Path(part)
            if not path.is_file():
                raise UserError(f"-e {part}: file not found")
            chosen[path.resolve()] = (_epoch_of(path), path)
            continue
        if part in ("all", "last"):
            if not available:
                raise UserError(f"-e {part}: {avail_text}")
            for e in available if part == "all" else [max(available)]:
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
    items = sorted(chosen.values(), key=lambda t: (t[0] is None, t[0] or 0, str(t[1])))
    return items, sorted(set(missing))


def ranges(epochs: list[int]) -> str:
    """Sorted epochs as ranges: ``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    runs = []
    for e in epochs:
        if runs and runs[-1][1] == e - 1:
            runs[-1][1] = e
        else:
            runs.append([e, e])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
