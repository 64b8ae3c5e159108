"""Mixture-of-Recursions decoding against its own full-depth forward, side by side (docs/mor.md).

The same MoR model decodes the same prompts twice per round, interleaved: with its causal routing (a token that
leaves at recursion r computes nothing deeper, and each recursion's KV cache holds only the tokens that reached
it) and at full depth (every token through every recursion, what the model costs without routing). Its
predictors are calibrated first, as `modexp bench` does for MoD: an untrained predictor takes about half the
tokens, a trained one the recursion's capacity (1, 2/3, 1/3 with three recursions), so each recursion's output
bias is shifted until it takes that share of the tokens still active, on random bytes. Prefill is not timed.

    .venv/bin/python benchmarks/mor_decode.py [--batch 64] [--rounds 5] [--threads 2]

Prints tokens/s of both, their ratio per round and the median, the share each recursion processed, and the
analytic FLOPs of a decoded token both ways.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import modexp.mor  # noqa: F401  (the plug-in registers its kind)
from modexp import variants
from modexp.sample import Decoder, next_token


@torch.no_grad()
def calibrate(model: torch.nn.Module, tokens: torch.Tensor) -> list[float]:
    """Shift each recursion's predictor bias so that it takes its capacity's share of the tokens still active;
    recursions in depth order, each on the states the calibrated ones before it make. Returns the share of all
    tokens each routed recursion takes afterwards."""
    stack = model.blocks[1]
    ks = stack.cfg.tokens()
    for j, r in enumerate(int(key) for key in stack.predictors):
        record = model(tokens, routing_mode="causal").routing[j]
        logits = record.predictor_logits[record.scored].float()
        keep = ks[r] / ks[r - 1]  # of the tokens still active
        stack.predictors[str(r)][-1].bias -= torch.quantile(logits, 1.0 - keep).to(torch.float32)
    return [rec.mask.float().mean().item() for rec in model(tokens, routing_mode="causal").routing]


@torch.no_grad()
def decode_rate(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, full_depth: bool) -> float:
    """Decoded tokens per second (all sequences), after an untimed prefill."""
    model.blocks[1].full_depth = full_depth
    decoder = Decoder(model, prompt.shape[0], prompt.shape[1] + new_tokens)
    logits = decoder.prefill(prompt)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(new_tokens):
        logits = decoder.step(next_token(logits, 1.0, None, generator))
    elapsed = time.perf_counter() - start
    model.blocks[1].full_depth = False
    return prompt.shape[0] * new_tokens / elapsed


def decode_flops(cfg) -> tuple[float, float]:
    """Matmul FLOPs of one decoded token against a full cache of seq_len/2 positions: (routed, full depth),
    the shared layers' linear work only (attention over the cache scales the same way)."""
    d, f = cfg.d_model, cfg.ffn_dim
    layer = 2 * (4 * d * d + 3 * d * f)
    share = [k / cfg.seq_len for k in cfg.tokens()]
    routed = 2 * layer + cfg.shared_layers * layer * sum(share)
    return routed, 2 * layer + cfg.shared_layers * layer * cfg.recursions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--n-layers", type=int, default=8)  # first, 3 x 2 shared, last
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = variants.model_config(
        routing="recursion", recursions=3, vocab_size=256, seq_len=256, d_model=args.d_model,
        n_layers=args.n_layers, n_heads=args.d_model // 64, causal_router="predictor",
    )  # fmt: skip
    model = variants.build_model(cfg).eval()
    shares = calibrate(model, torch.randint(0, 256, (16, cfg.seq_len)))
    prompt = torch.randint(0, 256, (args.batch, args.prompt))
    decode_rate(model, prompt, 4, False)  # warm-up both paths
    decode_rate(model, prompt, 4, True)
    ratios, rates = [], []
    for _ in range(args.rounds):
        routed = decode_rate(model, prompt, args.new_tokens, False)
        full = decode_rate(model, prompt, args.new_tokens, True)
        ratios.append(routed / full)
        rates.append((routed, full))
    flops_routed, flops_full = decode_flops(cfg)
    print(f"MoR d{cfg.d_model} n_layers={cfg.n_layers} (shared block of {cfg.shared_layers}) x {cfg.recursions} "
          f"recursions, batch {args.batch}, {args.new_tokens} tokens after a {args.prompt}-token prompt, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(
        f"share of tokens each routed recursion processed (calibrated): {', '.join(f'{s:.2f}' for s in shares)}"
    )
    for i, ((routed, full), ratio) in enumerate(zip(rates, ratios)):
        print(f"round {i}: routed {routed:,.0f} tok/s, full depth {full:,.0f} tok/s, ratio {ratio:.2f}x")
    print(f"median decode speed-up over its full-depth forward: {statistics.median(ratios):.2f}x "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}); FLOPs ratio {flops_full / flops_routed:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
