"""A MoR study's planned FLOPs per token against what PyTorch's FlopCounterMode sees (docs/mor.md).

For every MoR run of a study folder, the model its run.json describes is built (the explicit attention path, which
the counter can see), one forward and backward of a batch is counted, and the count per token is set against the
training FLOPs per token the plan used for its budget (run.json's accounting); parameters too.

    .venv/bin/python benchmarks/mor_flops_check.py runs/mor
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import modexp.mor  # noqa: F401  (the plug-in registers its kind)
from modexp import variants


def check(run_json: Path) -> tuple[str, float, float, bool]:
    spec = json.loads(run_json.read_text())
    cfg = dataclasses.replace(variants.model_config(spec["model"]), attention="math")
    torch.manual_seed(0)
    model = variants.build_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(x, x)
        (out.loss + (out.aux_loss if out.aux_loss is not None else 0)).backward()
    counted = counter.get_total_flops() / (2 * cfg.seq_len)
    planned = spec["accounting"]["train_flops_per_token"]
    return spec["run_id"], planned, counted, model.num_params() == spec["accounting"]["params"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a study folder, e.g. runs/mor")
    args = parser.parse_args()
    rows = [check(p) for p in sorted(args.study.glob("mor_*/run.json"))]
    if not rows:
        raise SystemExit(f"no MoR run under {args.study}")
    for run_id, planned, counted, params in rows:
        print(f"{run_id}: planned {planned:,.1f} FLOPs/token, counted {counted:,.1f}, ratio {counted / planned:.12f}"
              f", parameters {'equal' if params else 'DIFFER'}")  # fmt: skip
    ratios = [counted / planned for _, planned, counted, _ in rows]
    print(f"{len(rows)} MoR runs: counted / planned FLOPs per token in [{min(ratios):.12f}, {max(ratios):.12f}]; "
          f"parameters equal in {sum(r[3] for r in rows)} of {len(rows)}")  # fmt: skip


if __name__ == "__main__":
    main()
