"""Sampling with a KV cache under causal routing.

Top-k routing needs the whole sequence, so sampling decides per token (modexp/model/routing.py,
`RoutedBlock.causal_decision`). A routed block then computes only the tokens it takes, and writes only those
into its KV cache: each sequence's cache in that block holds just the tokens the block processed, exactly as in
`model(seq, routing_mode="causal")`, where a skipped token is no key. Sequences of a batch take different numbers
of tokens, so routed caches keep a length per sequence and attention masks the unused slots. That skipped work is
where MoD's sampling speed-up comes from (spec: ../shared/spec/mod-method.md, "Causal routing for sampling").

`Decoder` is the cached forward pass (prefill, then one token per step); `generate` samples with it;
`load_model` and `sample_cli` serve `modexp sample`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn.functional as F

from modexp import tokenizer as tokenizers
from modexp.errors import ModexpError
from modexp.model import ModelConfig, RoutedBlock, Transformer
from modexp.model.layers import Attention, Block


class Decoder:
    """Incremental forward of a Transformer under causal routing, with one KV cache per block.

    Caches are preallocated for `max_len` positions, in the autocast dtype when the Decoder is built under
    autocast (else the weights' dtype). Dense blocks hold every token; a routed block holds, per sequence, only
    the tokens it took (`lens[i]` of them, packed at the front in causal order; slots past `lens[i]` hold
    nothing that is ever attended to). `taken[i]` records which positions routed block i processed,
    (B, max_len) bool.

    A decoded token passes a routed block in one of two ways, with the same result up to float rounding:

    - masked (no host-device sync): every sequence computes the block and `torch.where` keeps the update only
      where the block took the token. The shapes never depend on the routing decisions, so the GPU is never
      waited for; the skipped rows' FLOPs are spent and thrown away.
    - select: the sequences that take the token are gathered (one sync per routed block: how many there are),
      the block runs on those rows only, and a block that no sequence takes is skipped. That is where MoD's
      decoding FLOPs are saved; on a CPU the "sync" is free.

    `masked=None` picks masked on CUDA and select elsewhere. The prompt (prefill, once) always selects.
    """

    def __init__(self, model: Transformer, batch_size: int, max_len: int, masked: bool | None = None) -> None:
        cfg = model.cfg
        weight = model.lm_head.weight
        device, dtype = weight.device, weight.dtype
        if torch.is_autocast_enabled(device.type):  # caches in the dtype autocast computes k and v in
            dtype = torch.get_autocast_dtype(device.type)
        self.model, self.batch_size, self.max_len = model, batch_size, max_len
        self.masked = device.type == "cuda" if masked is None else masked
        shape = (batch_size, cfg.n_heads, max_len, cfg.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.blocks]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.blocks]
        self.routed = [i for i, block in enumerate(model.blocks) if isinstance(block, RoutedBlock)]
        self.lens = {i: torch.zeros(batch_size, dtype=torch.long, device=device) for i in self.routed}
        self.taken = {
            i: torch.zeros(batch_size, max_len, dtype=torch.bool, device=device) for i in self.routed
        }
        # Host-side bound on every routed cache's length (the prompt's longest, plus one per step): the masked
        # path attends over that many slots without asking the device for the real maximum.
        self.bound = {i: 0 for i in self.routed}
        self.length = 0  # positions fed so far; dense caches hold exactly this many tokens
        self.slots = torch.arange(max_len, device=device)
        self.rows = torch.arange(batch_size, device=device)
        model.rotary.ensure_length(max_len)  # decoding may run past the training length

    # -- public ----------------------------------------------------------------------------------------------
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed the prompt (B, T0) into empty caches; return the logits (B, vocab) of its last position."""
        if self.length:
            raise ValueError("prefill needs empty caches: build a new Decoder")
        t = tokens.shape[1]
        self._check_room(t)
        x = self.model.tok_emb(tokens)
        for i, block in enumerate(self.model.blocks):
            x = (
                self._routed_prefill(i, block, x)
                if isinstance(block, RoutedBlock)
                else self._dense(i, block, x)
            )
        self.length = t
        return self._logits(x[:, -1])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per sequence (B,); return the logits (B, vocab) for the next one."""
        self._check_room(1)
        x = self.model.tok_emb(tokens).unsqueeze(1)  # (B, 1, d)
        for i, block in enumerate(self.model.blocks):
            if isinstance(block, RoutedBlock):
                x = self._routed_step_masked(i, block, x) if self.masked else self._routed_step(i, block, x)
            else:
                x = self._dense(i, block, x)
        self.length += 1
        return self._logits(x[:, 0])

    def routing_masks(self) -> list[torch.Tensor]:
        """Per routed block, (B, positions fed) bool: which tokens it processed."""
        return [self.taken[i][:, : self.length] for i in self.routed]

    # -- blocks ----------------------------------------------------------------------------------------------
    def _check_room(self, t: int) -> None:
        if self.length + t > self.max_len:
            raise ValueError(f"the caches hold {self.max_len} positions; {self.length + t} would not fit")

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.model.norm(x))

    def _dense(self, i: int, block: Block, x: torch.Tensor) -> torch.Tensor:
        """t new tokens (B, t, d) of every sequence, at positions length .. length+t-1."""
        p0, t = self.length, x.shape[1]
        cos, sin = block.rotary(self.slots[p0 : p0 + t])
        q, k, v = block.attn.project(block.attn_norm(x), cos, sin)
        self.keys[i][:, :, p0 : p0 + t] = k
        self.values[i][:, :, p0 : p0 + t] = v
        keys, values = self.keys[i][:, :, : p0 + t], self.values[i][:, :, : p0 + t]  # views: no copy
        if t == 1 and p0 > 0:  # one new query sees every cached key: no mask, so SDPA may use fused kernels
            attn = _attend_all(block.attn, q, keys.to(q.dtype), values.to(q.dtype))
        else:
            # The new queries are the last t of p0+t positions: bottom-right causal mask (None: square causal).
            mask = None if p0 == 0 else self.slots[: p0 + t] <= self.slots[p0 : p0 + t, None]
            attn = block.attn.attend(q, keys.to(q.dtype), values.to(q.dtype), mask)
        return x + block.finish(x, block.attn.merge(attn))

    def _decide(self, block: RoutedBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router scores and the causal per-token decision, both (B, t), as the model's causal mode makes them."""
        r = block.router_scores(x)
        predict = getattr(block, "predict", None)  # the model's own predictor call (fp32 last layer), if any
        if predict is not None:
            predictor_logits = predict(x)
        else:
            predictor_logits = block.predictor(x).squeeze(-1) if block.predictor is not None else None
        return r, block.causal_decision(r, predictor_logits)

    def _routed_prefill(self, i: int, block: RoutedBlock, x: torch.Tensor) -> torch.Tensor:
        """The prompt (B, T0, d) through routed block i: each sequence's taken tokens, packed, attend causally."""
        d = x.shape[2]
        r, take = self._decide(block, x)
        self.taken[i][:, : x.shape[1]] = take
        counts = take.sum(dim=1)
        self.lens[i].copy_(counts)
        # One sync for the prompt: how many sequences take a prompt token, and the most any of them takes.
        n, c = torch.stack([(counts > 0).sum(), counts.max()]).tolist()
        self.bound[i] = c
        if n == 0:
            return x
        rows = _true_rows(counts > 0, n)  # sequences that take at least one prompt token
        take_rows = take.index_select(0, rows)
        # Each sequence's taken positions first, ascending (stable sort of "skipped"), padded to c with skipped
        # positions; `valid` marks the real ones, a prefix of each row.
        idx = (~take_rows).to(torch.uint8).argsort(dim=1, stable=True)[:, :c]  # (n, c)
        valid = take_rows.gather(1, idx)
        gather_idx = idx.unsqueeze(-1).expand(-1, -1, d)
        x_rows = x.index_select(0, rows)
        xs = x_rows.gather(1, gather_idx)  # (n, c, d)
        inner = block.block
        cos, sin = inner.rotary(idx)  # original positions
        q, k, v = inner.attn.project(inner.attn_norm(xs), cos, sin)
        cache = self.keys[i].dtype  # under autocast k and v come in bf16; index_put needs the cache's dtype
        self.keys[i][rows, :, :c] = k.to(cache)  # padding slots lie past lens and are never attended to
        self.values[i][rows, :, :c] = v.to(cache)
        # Taken tokens attend causally among themselves; a padding query keeps its own diagonal so no softmax
        # row is empty (its output is dropped below).
        eye = torch.eye(c, dtype=torch.bool, device=x.device)
        mask = (eye.logical_not().tril() & valid[:, None, :]) | eye
        attn = inner.attn.merge(inner.attn.attend(q, k, v, mask.unsqueeze(1)))
        delta = inner.finish(xs, attn)
        weight = block.gate(r.index_select(0, rows).gather(1, idx)).unsqueeze(-1).to(x.dtype)
        new = torch.where(valid.unsqueeze(-1), xs + weight * delta, xs)  # padding rows written back unchanged
        return x.index_copy(0, rows, x_rows.scatter(1, gather_idx, new.to(x.dtype)))

    def _routed_step(self, i: int, block: RoutedBlock, x: torch.Tensor) -> torch.Tensor:
        """One new token per sequence (B, 1, d) through routed block i: only the sequences that take it compute.

        The select path: the block's matmuls run on the taking rows of the batch only, at the cost of one
        host-device sync (the number of taking rows, and their longest cache).
        """
        r, take = self._decide(block, x)
        take = take[:, 0]
        self.taken[i][:, self.length] = take
        self.bound[i] += 1
        held_all = self.lens[i] + take.long()  # cache lengths once this token is written
        n, width = torch.stack([take.sum(), torch.where(take, held_all, 0).max()]).tolist()
        if n == 0:
            return x
        rows = _true_rows(take, n)
        inner = block.block
        xs = x.index_select(0, rows)  # (n, 1, d)
        cos, sin = inner.rotary(self.slots[self.length : self.length + 1])
        q, k, v = inner.attn.project(inner.attn_norm(xs), cos, sin)  # (n, H, 1, hd)
        slot = self.lens[i].index_select(0, rows)  # each taking sequence's next free slot
        cache = self.keys[i].dtype
        self.keys[i][rows, :, slot] = k[:, :, 0].to(cache)
        self.values[i][rows, :, slot] = v[:, :, 0].to(cache)
        held = slot + 1
        self.lens[i].copy_(held_all)
        # Attend over the longest selected cache only, not all max_len slots; each sequence its own tokens only.
        keys = self.keys[i][:, :, :width].index_select(0, rows).to(q.dtype)
        values = self.values[i][:, :, :width].index_select(0, rows).to(q.dtype)
        mask = (self.slots[:width] < held[:, None]).view(n, 1, 1, width)
        attn = inner.attn.merge(inner.attn.attend(q, keys, values, mask))
        delta = inner.finish(xs, attn)
        weight = block.gate(r.index_select(0, rows)).unsqueeze(-1).to(x.dtype)  # (n, 1, 1)
        return x.index_copy(0, rows, (xs + weight * delta).to(x.dtype))

    def _routed_step_masked(self, i: int, block: RoutedBlock, x: torch.Tensor) -> torch.Tensor:
        """One new token per sequence (B, 1, d) through routed block i, with no host-device sync.

        Every sequence computes the block; the update is kept only where the block takes the token. A sequence
        that skips it still writes its k/v into its next free slot (`lens`), which stays past its length (so it
        is never attended to) until the sequence next takes a token and overwrites it.
        """
        r, take = self._decide(block, x)
        take = take[:, 0]
        self.taken[i][:, self.length] = take
        self.bound[i] += 1
        width = self.bound[i]  # >= every lens + 1, known on the host
        inner = block.block
        cos, sin = inner.rotary(self.slots[self.length : self.length + 1])
        q, k, v = inner.attn.project(inner.attn_norm(x), cos, sin)  # (B, H, 1, hd)
        lens = self.lens[i]
        cache = self.keys[i].dtype
        self.keys[i][self.rows, :, lens] = k[:, :, 0].to(cache)
        self.values[i][self.rows, :, lens] = v[:, :, 0].to(cache)
        # Slots 0..lens: the sequence's own taken tokens and this one (a skipping sequence's row is dropped
        # below; it attends to its own key so that no softmax row is empty).
        mask = (self.slots[:width] <= lens[:, None]).view(-1, 1, 1, width)
        keys = self.keys[i][:, :, :width].to(q.dtype)
        values = self.values[i][:, :, :width].to(q.dtype)
        attn = inner.attn.merge(inner.attn.attend(q, keys, values, mask))
        delta = inner.finish(x, attn)
        weight = block.gate(r).unsqueeze(-1).to(x.dtype)  # (B, 1, 1)
        lens.add_(take)
        return torch.where(take.view(-1, 1, 1), x + weight * delta, x).to(x.dtype)


def _true_rows(flags: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the n True entries of a (B,) bool tensor, ascending; n is known, so no sync (unlike nonzero)."""
    return (~flags).to(torch.uint8).argsort(stable=True)[:n]


def _attend_all(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of the newest query over every key, with no mask.

    `Attention.attend(mask=None)` means causal: right for the math path (its mask is bottom-right aligned, so
    one query sees every key), but SDPA's `is_causal` is top-left aligned and would let a lone query see only
    the first key. So SDPA is called here with no mask at all.
    """
    if attn.use_math:
        return attn.attend(q, k, v, None)
    return F.scaled_dot_product_attention(q, k, v)


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
        cfg = ModelConfig(**ckpt["model_config"])
        model = Transformer(cfg)
        # A state_dict saved from a torch.compile'd model carries an "_orig_mod." prefix.
        state = {key.removeprefix("_orig_mod."): value for key, value in ckpt["model"].items()}
        model.load_state_dict(state)
    # UnpicklingError: weights_only loading refuses objects beyond tensors and plain containers.
    except (KeyError, TypeError, ValueError, RuntimeError, OSError, pickle.UnpicklingError) as exc:
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


def render_routing(pieces: list[str], masks: list[torch.Tensor], layers: list[int], width: int = 96) -> str:
    """Under the text, one line per routed block: '#' under each token the block processed, '.' else.

    Each token (a byte, or a subword piece of the run's tokenizer) takes as many columns as its text, at least
    one; long text wraps every `width` columns; each block's share of processed tokens closes the picture.
    """
    texts = [shown(p) or "?" for p in pieces]
    text_line = "".join(texts)
    label = max(len(f"block {layer}") for layer in layers) if layers else 5
    marks = [
        "".join(("#" if taken else ".") * len(t) for t, taken in zip(texts, mask.tolist())) for mask in masks
    ]
    chunks = []
    for start in range(0, len(text_line), width):
        lines = [f"{'text':>{label}} |{text_line[start : start + width]}|"]
        lines += [
            f"{f'block {layer}':>{label}} |{m[start : start + width]}|" for layer, m in zip(layers, marks)
        ]
        chunks.append("\n".join(lines))
    shares = [
        f"block {layer}: {sum(mask.tolist()) / max(1, len(mask)):.0%} processed"
        for layer, mask in zip(layers, masks)
    ]
    return "\n\n".join(chunks) + "\n\n" + ", ".join(shares)


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
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(Path(run_dir), device=device)
    tok = tokenizers.for_run(Path(run_dir), model.cfg.vocab_size)
    prompt_ids = tok.encode_batch([prompt])[0]
    if not prompt_ids:
        raise ModexpError("--prompt is empty: give at least one character to continue")
    if max_new_tokens < 0:
        raise ModexpError(f"--max-new-tokens={max_new_tokens} is not allowed: it must be >= 0")
    if temperature < 0:
        raise ModexpError(f"--temperature={temperature} is not allowed: it must be >= 0 (0 is greedy)")
    if top_k is not None and top_k < 1:
        raise ModexpError(f"--top-k={top_k} is not allowed: give a positive integer")
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
    layers = model.cfg.routed_layers
    return text + "\n\n" + render_routing(tok.pieces(out_ids), [m[0] for m in masks], layers)
