"""``python -m furnace.methods [MODULE ...]``: every registered method with its config keys, defaults and
teachers, as the methods declare them (import your own method's MODULE to list it too)."""
import importlib
import sys

from ..config import METHODS, method_keys
from . import Method  # noqa: F401 (registers the built-in methods)


def describe() -> str:
    lines = []
    for name, cls in METHODS.items():
        defaults = method_keys(name)
        lines.append(f"{name}: {((cls.__doc__ or '').strip().splitlines() or [''])[0]}")
        for key in [*(k for t in cls.teachers for k in (t, f"{t}_arch")), *([cls.exports] if cls.exports else []),
                    *cls.keys]:
            allowed = cls.choices.get(key)
            lines.append(f"    {key} = {defaults[key]!r}" + (f"  ({' | '.join(allowed)})" if allowed else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    for module in sys.argv[1:]:
        try:
            importlib.import_module(module)
        except ImportError as err:
            sys.exit(f"error: {module}: cannot be imported ({err}); give the module that defines your method, "
                     f"importable from here (e.g. run this in its folder)")
    print(describe())
