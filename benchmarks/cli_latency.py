"""How long `modexp plan` and `modexp analyze` take from the shell, the way a researcher meets them.

Targets (issue 26): plan starts and prints the demo's plan in under 3 s; analyze of a 100-run study (tables,
fits, verdict, the 8 figures as PNG + SVG) in under 5 s on 2 cores. The study is synthetic (the tests'
fixture: baseline and MoD, 5 budgets x 10 sizes, losses from a Chinchilla-form law, metrics and routing
samples in every run folder), so the figure is reproducible on any machine. Each command runs --repeat times
in a fresh process; the median and the range are printed. Measure on an otherwise idle machine.

    .venv/bin/python benchmarks/cli_latency.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEXP = str(Path(sys.executable).with_name("modexp"))


def synthetic_study(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures_results import make_sweep

    return make_sweep(root, budgets=(1e11, 3e11, 1e12, 3e12, 1e13), n_sizes=10, unbracketed_budget=None)


def timed(args: list[str], repeat: int) -> list[float]:
    walls = []
    for i in range(repeat):
        start = time.perf_counter()
        subprocess.run(
            [MODEXP, *[a.replace("{i}", str(i)) for a in args]],
            check=True,
            capture_output=True,
            env={**os.environ, "WANDB_MODE": "disabled"},
        )
        walls.append(time.perf_counter() - start)
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        study = synthetic_study(tmp)
        rows = {
            "modexp plan (demo preset)": timed(["plan", f"runs_dir={tmp}/runs"], args.repeat),
            "modexp analyze (100 runs)": timed(
                ["analyze", str(study), "--out", f"{tmp}/out{{i}}"], args.repeat
            ),
        }
    for name, walls in rows.items():
        print(
            f"{name:28s} median {statistics.median(walls):5.2f} s  (min {min(walls):.2f}, max {max(walls):.2f})"
        )


if __name__ == "__main__":
    main()
