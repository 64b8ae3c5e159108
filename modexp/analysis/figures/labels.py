"""Readable labels for variant ids: the one place figures turn "mod_c0.125_e2" into words.

`variant_label` parses an id of modexp.plan.variant_name back into a label ("MoD 12.5%, every 2nd block");
`pair_label` names a verdict pair. Colours and markers are not per variant kind: style.variant_styles hands
them out by position (baseline first).
"""

from __future__ import annotations

import re

from ..table import BASELINE

_CAUSAL_ROUTERS = {"": "", "_aux": "aux-loss causal router", "_nocausal": "no causal router"}
_ROUTER_WEIGHTS = {"": "", "_lin": "linear router weight"}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


_NUMBER = r"(\d+(?:\.\d+)?(?:e-?\d+)?)"
_EXPERT_NAMES = re.compile(
    rf"(?P<kind>moe|mode_staged|mode_integrated)(?:_c{_NUMBER}_e(\d+))?_x(\d+)_k{_NUMBER}(?:_n(\d+))?"
    r"(?P<lin>_lin)?(?P<causal>_aux|_nocausal)?"
)


def _expert_label(variant: str) -> str | None:
    """MoE and MoDE ids of modexp.plan.variant_name: moe_x4_k0.25, mode_staged_c0.125_e2_x4_k0.25(_lin),
    mode_integrated_c0.125_e2_x4_k0.25_n1, each with an optional _aux / _nocausal."""
    match = _EXPERT_NAMES.fullmatch(variant)
    if match is None:
        return None
    kind, capacity, every, experts, share, noop = match.groups()[:6]
    has_mod = capacity is not None
    if has_mod != (kind != "moe") or (noop is not None) != (kind == "mode_integrated"):
        return None
    if match["lin"] and kind != "mode_staged":
        return None
    moe = f"MoE {experts} experts x {100 * float(share):g}%"
    causal = _CAUSAL_ROUTERS[match["causal"] or ""]
    lin = _ROUTER_WEIGHTS[match["lin"] or ""]
    if kind == "moe":
        words = [moe]
    else:
        interval = int(every)
        where = "every block" if interval == 1 else f"every {_ordinal(interval)} block"
        if kind == "mode_staged":
            words = [f"staged MoDE: MoD {100 * float(capacity):g}% {where}", moe]
        else:
            noops = f"{noop} no-op expert{'s' if noop != '1' else ''}"
            words = [f"integrated MoDE: {moe}", f"{100 * float(capacity):g}% of it {where} with {noops}"]
    return ", ".join(words + [w for w in (lin, causal) if w])


def _variant_label(variant: str) -> str | None:
    if variant == BASELINE:
        return "baseline"
    if variant.startswith(("moe_", "mode_")):
        return _expert_label(variant)
    kind, sep, rest = variant.partition("_c")
    if kind not in ("mod", "random") or not sep:
        return None
    capacity, sep, rest = rest.partition("_e")
    every = rest
    suffixes = ""
    for i, ch in enumerate(rest):
        if not ch.isdigit():
            every, suffixes = rest[:i], rest[i:]
            break
    try:
        fraction, interval = float(capacity), int(every)
    except ValueError:
        return None
    if not sep or not 0 < fraction <= 1 or interval < 1 or every != str(interval):
        return None
    words = [
        f"MoD {100 * fraction:g}%",
        "every block" if interval == 1 else f"every {_ordinal(interval)} block",
    ]
    if kind == "random":
        return ", ".join(words + ["random routing"]) if not suffixes else None
    # variant_name appends the router weight, then the causal router: "_lin", "_aux", "_lin_nocausal", ...
    for weight, weight_words in _ROUTER_WEIGHTS.items():
        for causal, causal_words in _CAUSAL_ROUTERS.items():
            if suffixes == weight + causal:
                return ", ".join(words + [w for w in (weight_words, causal_words) if w])
    return None


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
    label = _variant_label(base)
    if label is None:
        return variant
    return f"{label} [{split}" if sep else label


def pair_label(curve: str, reference: str) -> str:
    """A verdict pair: "MoD 12.5%, every 2nd block vs baseline"."""
    return f"{variant_label(curve)} vs {variant_label(reference)}"
