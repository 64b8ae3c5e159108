"""The model library: `from modexp.model import ModelConfig, Transformer`.

ModelConfig is imported eagerly (plain dataclasses); the torch modules on first use (PEP 562), so that
planning, which needs only the config and the FLOP count, does not pay torch's import (seconds).
"""

from importlib import import_module
from typing import Any

from .config import ModelConfig

_LAZY = {
    "Block": ".layers",
    "ExpertRecord": ".experts",
    "MoE": ".experts",
    "ModelOutput": ".transformer",
    "RoutedBlock": ".routing",
    "RoutingRecord": ".routing",
    "Transformer": ".transformer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ModelConfig", *_LAZY]
