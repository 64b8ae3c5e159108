"""The model library: `from modexp.model import ModelConfig, Transformer`."""

from .config import ModelConfig
from .experts import ExpertRecord, MoE
from .layers import Block
from .routing import RoutedBlock, RoutingRecord
from .transformer import ModelOutput, Transformer

__all__ = [
    "Block",
    "ExpertRecord",
    "MoE",
    "ModelConfig",
    "ModelOutput",
    "RoutedBlock",
    "RoutingRecord",
    "Transformer",
]
