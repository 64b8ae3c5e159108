"""Sampling with a KV cache under causal routing.

Top-k routing needs the whole sequence, so sampling decides per token (modexp/model/routing.py,
`RoutedBlock.causal_decision`). A routed block then computes only the tokens it takes, and writes only those
into its KV cache, exactly as in `model(seq, routing_mode="causal")`, where a skipped token is no key; the cached
forward of every block lives beside its training forward in modexp/model/ (`decode`), and the method in
docs/mod.md ("Causal routing for sampling").

`Decoder` is the cached forward pass (prefill, then one token per step); `generate` samples with it;
`load_model` and `sample_cli` serve `modexp sample`.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch

from modexp import plugins, variants
from modexp import tokenizer as tokenizers
from modexp.errors import ModexpError
from modexp.model import Transformer
from modexp.model.layers import KVCache


class Decoder:
    """Incremental forward of a Transformer under causal routing, with one KV cache per block.

    Caches are preallocated for `max_len` positions, in the autocast dtype when the Decoder is built under
    autocast (else the weights' dtype). Each block of the stack its kind built feeds its own cache (`new_cache`,
    `prefill`, `decode`: `Block.decode`, `RoutedBlock.decode` in modexp/model/, or a plug-in's): dense blocks
    hold every token; a routed block holds, per sequence, only the tokens it took. `taken[i]` records which
    positions MoD's routed block i processed, (B, max_len) bool; `routing_masks` every routing block's.

    `masked` is how routed blocks decode a token (see `RoutedBlock.decode`): masked (no host-device sync, the
    skipped rows' FLOPs spent and thrown away) or select (one sync per routed block; only the taking rows
    compute, which is where MoD's decoding FLOPs are saved; on a CPU the "sync" is free). `masked=None` picks
    masked on CUDA and select elsewhere. The prompt (prefill, once) always selects.
    """

    def __init__(self, model: Transformer, batch_size: int, max_len: int, masked: bool | None = None) -> None:
        weight = model.lm_head.weight
        device, dtype = weight.device, weight.dtype
        if torch.is_autocast_enabled(device.type):  # caches in the dtype autocast computes k and v in
            dtype = torch.get_autocast_dtype(device.type)
        self.model, self.batch_size, self.max_len = model, batch_size, max_len
        self.masked = device.type == "cuda" if masked is None else masked
        self.slots = torch.arange(max_len, device=device)
        self.caches: list[KVCache] = [
            block.new_cache(batch_size, max_len, dtype, self.slots) for block in model.blocks
        ]
        self.routed = [i for i, block in enumerate(model.blocks) if getattr(block, "routes", False)]
        self.length = 0  # positions fed so far; dense caches hold exactly this many tokens
        model.rotary.ensure_length(max_len)  # decoding may run past the training length

    @property
    def keys(self) -> list[torch.Tensor]:
        return [cache.keys for cache in self.caches]

    @property
    def values(self) -> list[torch.Tensor]:
        return [cache.values for cache in self.caches]

    @property
    def lens(self) -> dict[int, torch.Tensor]:
        """Per routed block, (B,): how many tokens each sequence's cache holds."""
        return {i: self.caches[i].lens for i in self.routed}  # type: ignore[attr-defined]

    @property
    def taken(self) -> dict[int, torch.Tensor]:
        return {i: self.caches[i].taken for i in self.routed}  # type: ignore[attr-defined]

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed the prompt (B, T0) into empty caches; return the logits (B, vocab) of its last position."""
        if self.length:
            raise ValueError("prefill needs empty caches: build a new Decoder")
        t = tokens.shape[1]
        self._check_room(t)
        x = self.model.tok_emb(tokens)
        for block, cache in zip(self.model.blocks, self.caches):
            x = block.prefill(x, cache)
        self.length = t
        return self._logits(x[:, -1])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per sequence (B,); return the logits (B, vocab) for the next one."""
        self._check_room(1)
        x = self.model.tok_emb(tokens).unsqueeze(1)  # (B, 1, d)
        for block, cache in zip(self.model.blocks, self.caches):
            x = block.decode(x, cache, self.length, self.masked)
        self.length += 1
        return self._logits(x[:, 0])

    def routing_masks(self) -> list[torch.Tensor]:
        """Per routing step in depth order (MoD's routed blocks, or a plug-in's steps), (B, positions fed) bool: which tokens
        it processed."""
        return [mask for i in self.routed for mask in self.caches[i].masks(self.length)]  # type: ignore[attr-defined]

    def _check_room(self, t: int) -> None:
        if self.length + t > self.max_len:
            raise ValueError(f"the caches hold {self.max_len} positions; {self.length + t} would not fit")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.model.norm(x))


def next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of logits (B, vocab): greedy at temperature 0, else sample (optionally top-k)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    # Inverse-CDF sampling: one uniform draw per row, where torch.multinomial draws an exponential per vocabulary
    # entry (a visible cost in a wide batch's step). A zero-probability token never has cdf > u: never drawn.
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[-1] - 1)


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt_tokens: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    return_routing: bool = False,
    masked: bool | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Continue each prompt (B, T0) by max_new_tokens tokens -> (B, T0 + max_new_tokens).

    Decodes with KV caches under causal routing (see Decoder). temperature 0 is greedy. With return_routing,
    also returns one (B, T0 + max_new_tokens) bool mask per routed block (in depth order; none for a dense
    model) of the tokens it processed; the last generated token is then fed through the model too, so the
    masks cover the whole returned sequence, as `model(seq, routing_mode="causal")` would route it. masked: how
    routed blocks decode (see Decoder; None: without host syncs on CUDA, selecting rows elsewhere).
    """
    if prompt_tokens.dim() != 2 or prompt_tokens.shape[1] < 1:
        raise ValueError(
            f"prompt_tokens must be (batch, length >= 1), got shape {tuple(prompt_tokens.shape)}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} is not allowed: it must be >= 0")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} is not allowed: it must be >= 0 (0 is greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} is not allowed: give a positive integer or None")
    b, t0 = prompt_tokens.shape
    total = t0 + max_new_tokens
    decoder = Decoder(model, b, total, masked=masked)
    out = torch.empty(b, total, dtype=torch.long, device=prompt_tokens.device)
    out[:, :t0] = prompt_tokens
    logits = decoder.prefill(prompt_tokens)
    for pos in range(t0, total):
        out[:, pos] = next_token(logits, temperature, top_k, generator)
        if pos + 1 < total or return_routing:
            logits = decoder.step(out[:, pos])
    if return_routing:
        return out, [mask.clone() for mask in decoder.routing_masks()]
    return out


def load_model(run_dir: Path | str, device: str = "cpu") -> Transformer:
    """The model of a run folder's last checkpoint (<run_dir>/checkpoints/last.pt), in eval mode."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / "last.pt"
    if not run_dir.exists():
        raise ModexpError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise ModexpError(f"{run_dir} is not a run folder (it is a file)")
    if not path.is_file() and not (run_dir / "run.json").is_file():
        runs = sorted(p.parent.name for p in run_dir.glob("*/run.json"))[:3]
        hint = (
            f"it holds runs, e.g. {run_dir / runs[0]}"
            if runs
            else "give a run's folder, e.g. runs/demo/<run_id> (modexp plan lists the ids)"
        )
        raise ModexpError(f"{run_dir} is not a run folder (no run.json): {hint}")
    if not path.is_file():
        raise ModexpError(f"no checkpoint at {path}: the run has not saved one yet")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        plugins.require_kind(dict(ckpt["model_config"]).get("routing"), run_dir)  # a plug-in's, not named
        # Its kind builds and loads it (modexp.variants).
        model = variants.load_model(ckpt["model_config"], ckpt["model"])
    # UnpicklingError: weights_only loading refuses objects beyond tensors and plain containers.
    except (
        KeyError,
        TypeError,
        ValueError,
        RuntimeError,
        OSError,
        pickle.UnpicklingError,
        ModexpError,
    ) as exc:
        if isinstance(exc, KeyError):
            detail = f"the checkpoint has no {exc.args[0]!r} entry"
        else:
            # One line (the CLI prints one), cut short: a state_dict mismatch lists every key.
            detail = " ".join(str(exc).split()) or type(exc).__name__
            detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise ModexpError(f"cannot load the model from {path}: {detail}") from exc
    return model.to(device).eval()


GLYPHS = {"\n": "↵", "\t": "→", "\r": "←"}  # one column each, so the mask lines stay aligned


def shown(piece: str) -> str:
    """A token's text in columns: newlines and tabs as ↵ and →, other unprintable characters as '?'."""
    return "".join(GLYPHS.get(ch, ch if ch.isprintable() else "?") for ch in piece)


def render_routing(
    pieces: list[str], masks: list[torch.Tensor], layers: list[int | str], width: int = 96
) -> str:
    """Under the text, one line per routing step: '#' under each token it processed, '.' else.

    `layers`: each step's name, or its block index (shown as "block <i>"). Each token (a byte, or a subword
    piece of the run's tokenizer) takes as many columns as its text, at least one; long text wraps every
    `width` columns; each step's share of processed tokens closes the picture.
    """
    names = [name if isinstance(name, str) else f"block {name}" for name in layers]
    texts = [shown(p) or "?" for p in pieces]
    text_line = "".join(texts)
    label = max(len(name) for name in names) if names else 5
    marks = [
        "".join(("#" if taken else ".") * len(t) for t, taken in zip(texts, mask.tolist())) for mask in masks
    ]
    chunks = []
    for start in range(0, len(text_line), width):
        lines = [f"{'text':>{label}} |{text_line[start : start + width]}|"]
        lines += [f"{name:>{label}} |{m[start : start + width]}|" for name, m in zip(names, marks)]
        chunks.append("\n".join(lines))
    shares = [
        f"{name}: {sum(mask.tolist()) / max(1, len(mask)):.0%} processed" for name, mask in zip(names, masks)
    ]
    return "\n\n".join(chunks) + "\n\n" + ", ".join(shares)


MAX_NEW_TOKENS = 100_000  # the KV caches grow with every token: beyond this a typo asks for terabytes
MAX_TEMPERATURE = 100.0


def _check_sampling(max_new_tokens: float, temperature: float, top_k: int | None) -> int:
    """The flags, before the model is loaded: each refused in one line with what is allowed."""
    if not (math.isfinite(max_new_tokens) and max_new_tokens == int(max_new_tokens)) or not (
        0 <= max_new_tokens <= MAX_NEW_TOKENS
    ):
        raise ModexpError(
            f"--max-new-tokens={max_new_tokens:g} is not allowed: give a whole number in [0, {MAX_NEW_TOKENS}]"
        )
    if not (math.isfinite(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
        raise ModexpError(
            f"--temperature={temperature} is not allowed: give a number in [0, {MAX_TEMPERATURE:g}] (0 is greedy)"
        )
    if top_k is not None and top_k < 1:
        raise ModexpError(f"--top-k={top_k} is not allowed: give a positive integer")
    return int(max_new_tokens)


def sample_cli(
    run_dir: str,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    show_routing: bool,
    seed: int,
    device: str,
) -> str:
    """`modexp sample`: continue a prompt with the run's model, decoded by its tokenizer; return the text."""
    max_new_tokens = _check_sampling(max_new_tokens, temperature, top_k)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(Path(run_dir), device=device)
    tok = tokenizers.for_run(Path(run_dir), model.cfg.vocab_size)
    prompt_ids = tok.encode_batch([prompt])[0]
    if not prompt_ids:
        raise ModexpError("--prompt is empty: give at least one character to continue")
    if top_k is not None and top_k > model.cfg.vocab_size:
        raise ModexpError(
            f"--top-k={top_k} is not allowed: the model has {model.cfg.vocab_size} tokens, give 1 to that"
        )
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)  # random routing draws its causal decisions from the global generator
    tokens = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out, masks = generate(model, tokens, max_new_tokens, temperature, top_k, generator, return_routing=True)
    out_ids = out[0].tolist()
    text = tok.decode(out_ids)
    if not show_routing:
        return text
    if not masks:
        return text + "\n(dense model: every block processes every token)"
    steps = model.cfg.routing_steps  # one name per routing step, as the masks come
    return text + "\n\n" + render_routing(tok.pieces(out_ids), [m[0] for m in masks], steps)
