"""What a run is checked against before it trains or resumes: its schedule re-derived from its config (run.json
is never trusted alone) and the corpus it started on (by content, not by path)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from . import flops
from .config import Config
from .errors import ModexpError
from .plan import RunSpec


def planned_schedule(cfg: Config, spec: RunSpec) -> dict[str, float]:
    """steps, num_sequences, tokens and flops as planning derives them (plan.make_run's arithmetic) from the
    run's model, budget and batch size."""
    model = spec.model
    seq_flops = flops.count(model).train_per_token * model.seq_len
    num_sequences = max(1, round(spec.budget / seq_flops))
    return {
        "steps": math.ceil(num_sequences / cfg.train.batch_size),
        "num_sequences": num_sequences,
        "tokens": num_sequences * model.seq_len,
        "flops": num_sequences * seq_flops,
    }


def check_schedule(cfg: Config, spec: RunSpec) -> None:
    """run.json's schedule is the one its config plans: an edited run.json (steps 88 -> 30), or one planned by
    another modexp version, is refused in one line instead of training another schedule under the run's id."""
    expected = planned_schedule(cfg, spec)
    recorded = {
        "steps": spec.steps,
        "num_sequences": spec.num_sequences,
        "tokens": spec.tokens,
        "flops": spec.flops,
    }
    for key, value in expected.items():
        if not math.isclose(float(recorded[key]), float(value), rel_tol=1e-9):
            raise ModexpError(
                f"run.json of {spec.run_id} says {key}={recorded[key]}, but its config plans {key}={value}: "
                "the file was edited or planned by another modexp version; rerun the sweep (or modexp train) "
                "to rewrite it"
            )


def check_corpus(run_dir: Path, fingerprint: str, start_step: int) -> None:
    """A resumed run trains on the corpus it started on: meta.json's fingerprint (of the sources' paths, sizes
    and times) must match the corpus loaded now. Refused in one line; meta.json keeps the original."""
    if not start_step:
        return  # a run from step 0 starts afresh, on whatever corpus it has now
    try:
        started = json.loads((run_dir / "meta.json").read_text()).get("corpus", {}).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return  # no record of the start (an older run folder): nothing to compare with
    if started and started != fingerprint:
        raise ModexpError(
            f"the corpus of {run_dir.name} changed since it started (fingerprint {started[:12]} at the start, "
            f"{fingerprint[:12]} now): restore the corpus and rerun (a sweep: with --retry-failed), or delete {run_dir / 'checkpoints'} to "
            "train the run again from step 0 on the new one"
        )
