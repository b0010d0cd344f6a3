"""Small helpers shared by every part of furnace: user-facing errors (and the one way a command ends on
one), the label value of void pixels, and safe file I/O. torch is imported only by the functions that
need it, so that the torch-free runtime (:mod:`furnace.runtime`) can use the errors."""
import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable


class UserError(Exception):
    """An error the user caused and can fix (missing file, bad config value, corrupt data).

    Entry points print ``str(err)`` as one line and exit with status 2, without a traceback.
    The message must name the offending file, key or value and say what to do.
    """


IGNORE_INDEX = 255  # the label value of void pixels: every layout's, the losses' and the augmentation's default


class UserErrorExit(SystemExit):
    """How a command ends after a UserError: exit status 2 (see :func:`user_errors`)."""


@contextlib.contextmanager
def user_errors(prefix: Callable[[], str] = lambda: "", cleanup: Callable[[], Any] | None = None):
    """The one way a command ends on a UserError: one ``<prefix>error: <message>`` line on stderr, then
    ``cleanup()`` and exit status 2 (:class:`UserErrorExit`), without a traceback. Ctrl-C: ``aborted``, 130."""
    try:
        yield
    except UserError as err:
        print(f"{prefix()}error: {err}", file=sys.stderr, flush=True)
        if cleanup is not None:
            cleanup()
        raise UserErrorExit(2) from None
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr, flush=True)
        sys.exit(130)


def run_cli(body: Callable[[], int | None]) -> int:
    """A tool's ``main``: the exit status of ``body()`` (None = 0), or 2 after a UserError, which
    :func:`user_errors` reports."""
    try:
        with user_errors():
            return body() or 0
    except UserErrorExit as stop:
        return stop.code


# A UserError raised in a DataLoader worker would reach the main process wrapped in a traceback
# dump; datasets read by workers return it as an item instead, and the consumer re-raises it.
_ERROR_KEY = "__error__"


def user_error_as_item(get, index) -> dict:
    """``get(index)``, or ``{"__error__": message}`` when it raises a UserError (worker side)."""
    try:
        return get(index)
    except UserError as err:
        return {_ERROR_KEY: str(err)}


def raise_item_error(item: dict) -> dict:
    """Re-raise a UserError that :func:`user_error_as_item` returned, with its message intact; else ``item``."""
    if _ERROR_KEY in item:
        raise UserError(item[_ERROR_KEY])
    return item


class _KeepWriteError:
    """A binary file that remembers the first OSError of ``write``: torch.save turns a failed write
    of a file object into an opaque RuntimeError ("unexpected pos ..."), losing the cause (a full
    disk, a vanished mount) that the user needs to hear."""

    def __init__(self, file):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.file.flush()


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically: write a temporary file beside it, fsync, then rename.

    A crash or a failed write (full disk) at any moment leaves either the previous file or the new
    one at ``path``, never a truncated file. On failure the temporary file is removed and the
    exception is re-raised.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            out = _KeepWriteError(f)
            try:
                torch.save(obj, out)
            except Exception as err:
                if out.error is not None and out.error is not err:
                    raise out.error from err
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint or weight file with ``weights_only=True`` (no arbitrary code runs).

    Raises UserError naming the file when it is missing, truncated, or holds objects other than
    tensors and plain containers (a file crafted to run code while unpickling is refused).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle errors come in many types
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch's message carries terminal colour codes
        # torch's advice (load with weights_only=False) is exactly what must not be done with an
        # untrusted file; keep only the reason, e.g. "Unsupported global: GLOBAL exec ..."
        reason = re.search(r"WeightsUnpickler error: ([^\n]*?)(?:\.\s|\.?$|\n)", text)
        first = reason.group(1) if reason else (text.strip().splitlines() or [type(err).__name__])[0]
        first = re.split(r"(?<=\.)\s", first, maxsplit=1)[0].rstrip(".")  # its first sentence
        raise UserError(
            f"{path}: cannot be loaded safely ({type(err).__name__}: {first}). "
            "The file is truncated, not a PyTorch checkpoint, or holds objects other than tensors; "
            "furnace never unpickles arbitrary objects."
        ) from err
