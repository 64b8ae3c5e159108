"""Readable labels for variant ids (defined in modexp/analysis/labels.py, which the text report shares without
importing matplotlib)."""

from ..labels import pair_label, variant_label

__all__ = ["pair_label", "variant_label"]
