"""Training methods: ``supervised`` (baseline), ``cps`` (teachers), ``mgd`` (students)."""
from .base import Method
from .cps import CPS
from .mgd import MGD
from .supervised import Supervised

METHODS = {"supervised": Supervised, "cps": CPS, "mgd": MGD}


def build_method(cfg) -> Method:
    """The method named by ``cfg.method`` built from a resolved config (networks on the CPU)."""
    return METHODS[cfg.method](cfg)


__all__ = ["Method", "Supervised", "CPS", "MGD", "METHODS", "build_method"]
