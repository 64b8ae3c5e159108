"""Readable labels for variant ids: the one place figures turn "mod_c0.125_e2" into words.

`variant_label` asks the variant registry (modexp/variants.py) to read an id back into a label ("MoD 12.5%,
every 2nd block"), so a new kind brings its own label;
`pair_label` names a verdict pair. Colours and markers are not per variant kind: style.variant_styles hands
them out by position (baseline first).
"""

from __future__ import annotations

from modexp import variants as variant_kinds  # `variants` is a common local name in figures


def variant_label(variant: str) -> str:
    """A readable label for a variant id of modexp.plan.variant_name (or a split curve "<id> [col=value]").

    "baseline" -> "baseline"; "mod_c0.125_e2" -> "MoD 12.5%, every 2nd block"; "random_c0.125_e2" ->
    "MoD 12.5%, every 2nd block, random routing"; "_lin" adds "linear router weight", "_aux" "aux-loss
    causal router", "_nocausal" "no causal router". "moe_x4_k0.25" -> "MoE 4 experts x 25%";
    "mode_staged_c0.125_e2_x4_k0.25" -> "staged MoDE: MoD 12.5% every 2nd block, MoE 4 experts x 25%";
    "mode_integrated_c0.125_e2_x4_k0.25_n1" -> "integrated MoDE: MoE 4 experts x 25%, 12.5% of it every 2nd
    block with 1 no-op expert". Any other id (an external table's) is shown as it is.
    """
    variant = str(variant)
    base, sep, split = variant.partition(" [")
    label = variant_kinds.label(base)
    if label is None:
        return variant
    return f"{label} [{split}" if sep else label


def pair_label(curve: str, reference: str) -> str:
    """A verdict pair: "MoD 12.5%, every 2nd block vs baseline"."""
    return f"{variant_label(curve)} vs {variant_label(reference)}"
