"""Migrate a segmentor file or a training checkpoint written before the decoder's channel order was fixed.

    python -m furnace.tools.migrate_checkpoint OLD.pth NEW.pth

Version-1 files (segmentor files, exported teachers, ``latest.pth``) were written while the decoder concatenated
``[reduce(low), ASPP]``, not ``[ASPP, reduce(low)]`` as now and in the original. Permuting the input channels of
every ``head.last_conv.0.weight`` (and their SGD momentum in ``latest.pth``) keeps the network's outputs exactly,
so a migrated run resumes where it stopped.
"""
import argparse
import sys
from pathlib import Path

from ..engine.checkpoint import TRAIN_STATE_FORMAT, TRAIN_STATE_VERSION
from ..models.weights import SEGMENTOR_FORMAT, SEGMENTOR_VERSION, migrate_decoder_order
from ..utils import UserError, atomic_save, run_cli, safe_load


def migrate(src, dst) -> str:
    """Write the migrated copy of the version-1 file ``src`` to ``dst`` (atomic); returns a summary line."""
    if Path(dst).resolve() == Path(src).resolve():
        raise UserError(f"{dst}: the destination is the source file; write the migrated file elsewhere")
    obj = safe_load(src)
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt == SEGMENTOR_FORMAT:
        state, momentum, version = obj.get("state_dict"), None, SEGMENTOR_VERSION
    elif fmt == TRAIN_STATE_FORMAT:
        state, momentum, version = obj.get("method"), (obj.get("optimizer") or {}).get("state"), TRAIN_STATE_VERSION
    else:
        raise UserError(f"{src}: not a furnace segmentor file or training checkpoint (format {fmt!r}); nothing to "
                        "migrate (original release checkpoints are converted with furnace.tools.convert_official)")
    if obj.get("version") != 1:
        raise UserError(f"{src}: {fmt} version {obj.get('version')!r} needs no migration (only version 1 does)")
    if not isinstance(state, dict):
        raise UserError(f"{src}: damaged file, its weights are not a dict")
    try:
        names = migrate_decoder_order(state, momentum)
    except ValueError as err:
        raise UserError(f"{src}: cannot migrate ({err})") from None
    obj["version"] = version
    try:
        atomic_save(obj, dst)
    except OSError as err:
        raise UserError(f"{dst}: writing failed ({err}); free disk space or fix permissions") from err
    return f"{src} -> {dst}: {fmt} version {version}, permuted {', '.join(names)}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m furnace.tools.migrate_checkpoint",
                                     description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", metavar="OLD", help="version-1 segmentor file or latest.pth")
    parser.add_argument("dst", metavar="NEW", help="where to write the migrated file")
    args = parser.parse_args(argv)
    return run_cli(lambda: print(migrate(args.src, args.dst)))


if __name__ == "__main__":
    sys.exit(main())
