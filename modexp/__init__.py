"""modexp: isoFLOP studies of Mixture-of-Depths transformers against baselines."""

__version__ = "0.1.0"
