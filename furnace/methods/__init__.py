"""Training methods: ``supervised`` (baseline), ``cps`` (teachers), ``mgd`` (students). A method of your
own is a :class:`Method` subclass with a ``name``; defining it registers it (README "Adding a method")."""
from ..config import METHODS
from .base import Method
from .cps import CPS
from .mgd import MGD
from .supervised import Supervised


def build_method(cfg, device="cpu") -> Method:
    """The method ``cfg.method`` names, from a prepared config: trained networks on the CPU (the engine
    moves them), frozen teachers on ``device``."""
    return METHODS[cfg.method](cfg, device)


__all__ = ["Method", "Supervised", "CPS", "MGD", "METHODS", "build_method"]
