"""A branch's ties to its stem (sweep.reuse=branches, docs/schedules.md): what it must share with the stem it
continues, the history it inherits and the stem state it releases once done. The planning is
plan.plan_branches; the start, checkpoint.start_from_stem."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from .config import Config, to_typed
from .errors import ModexpError
from .plan import RunSpec, spec_digest, stem_identity
from .rundir import atomic_write, branch_point, first_line, read_json, read_status, stem_dir

log = logging.getLogger("modexp.train")


def copy_stem_history(run_dir: Path, spec: RunSpec) -> None:
    """The branch's metrics.jsonl starts as its stem's records up to the branch point: the run's own history,
    as if it had trained from step 0 (the steps are the same computation)."""
    source = stem_dir(run_dir, spec.stem) / "metrics.jsonl"
    lines = source.read_text().splitlines() if source.exists() else []
    kept = [line for line in lines if _step(line) <= spec.cooldown_start]
    atomic_write(run_dir / "metrics.jsonl", lambda tmp: tmp.write_text("".join(f"{x}\n" for x in kept)))


def _step(line: str) -> float:
    try:
        return json.loads(line).get("step", -1)
    except json.JSONDecodeError:
        return float("inf")  # a line cut by a kill


def release_branch_point(run_dir: Path, spec: RunSpec) -> None:
    """Delete the stem's state at this branch's start once no unfinished branch of the study still needs it."""
    for other in run_dir.parent.glob("*/run.json"):
        if other.parent == run_dir:
            continue
        with contextlib.suppress(OSError, ValueError):
            record = read_json(other)
            same = record.get("stem") == spec.stem and record.get("cooldown_start") == spec.cooldown_start
            if same and read_status(other.parent).get("state") != "done":
                return
    path = branch_point(stem_dir(run_dir, spec.stem), spec.cooldown_start)
    with contextlib.suppress(OSError):
        path.unlink()
        log.info("released %s: every branch that starts there is done", path)


def trajectory(cfg: Config, spec: RunSpec) -> dict[str, Any]:
    """Every setting that shapes a WSD run's steps before its decay, which a stem trains once for its
    branches: its identity but its budget and length (model, data, optimiser, LR, batch, warm-up, seed), as
    plain JSON values (a stem's states record it)."""
    identity = stem_identity(cfg, spec.model, spec.warmup or 0, [])
    del identity["branch_points"]
    return json.loads(json.dumps(identity, sort_keys=True))


def stem_record(cfg: Config, spec: RunSpec, fingerprint: str) -> dict[str, Any]:
    """What a stem's state at a branch point records of how it was trained (checked at each branch start)."""
    return {"trajectory": trajectory(cfg, spec), "corpus_fingerprint": fingerprint}


def check_continuation(
    run_dir: Path, spec: RunSpec, state: dict[str, Any], cfg: Config, fingerprint: str
) -> None:
    """A branch continues exactly its stem, or not at all: the corpus and every setting the stem's state
    was trained with (recorded in it; for states saved before that, the stem folder's config.yaml and
    meta.json) must be the branch's own. Refused in one line naming what differs and how to retrain."""
    folder = stem_dir(run_dir, spec.stem)
    recorded, corpus = state.get("trajectory"), state.get("corpus_fingerprint")
    if not isinstance(recorded, dict) or not isinstance(corpus, str):
        recorded, corpus = _stem_folder_record(folder, spec.stem)
    differences = _differences(recorded, trajectory(cfg, spec))
    if corpus and corpus != fingerprint:
        differences.insert(0, f"corpus fingerprint {corpus[:12]} (the branch's now: {fingerprint[:12]})")
    if differences:
        shown = "; ".join(differences[:3]) + (
            f"; and {len(differences) - 3} more" if len(differences) > 3 else ""
        )
        raise ModexpError(
            f"branch {spec.run_id} is not the continuation of stem {spec.stem}, which trained with {shown}: "
            f"restore what the stem trained with, or delete {folder} and rerun (a sweep: with --retry-failed) "
            "to train the stem again as the branch's settings and corpus say"
        )


def _stem_folder_record(folder: Path, stem: str) -> tuple[dict[str, Any], str | None]:
    """(trajectory, corpus fingerprint) from the stem folder's config.yaml and meta.json, for a state saved
    before states recorded them; the config must still be the one the stem's id hashes."""
    from .rundir import load_run

    try:
        dict_cfg, stem_spec = load_run(folder)
        stem_cfg = to_typed(dict_cfg)
        meta = read_json(folder / "meta.json")
        corpus = meta.get("corpus", {}).get("fingerprint") if isinstance(meta, dict) else None
    except (ModexpError, OSError, ValueError, AttributeError) as exc:
        raise ModexpError(
            f"what stem {stem} trained with cannot be read ({first_line(exc)}): delete {folder} and rerun to "
            "train it again"
        ) from None
    if stem_spec.run_id != stem or not stem.endswith(f"-{spec_digest(stem_cfg, stem_spec)}"):
        raise ModexpError(
            f"config.yaml of stem {stem} no longer describes the stem its id names (edited, or another stem's): "
            f"delete {folder} and rerun to train it again"
        )
    return trajectory(stem_cfg, stem_spec), corpus if isinstance(corpus, str) else None


def _differences(stem: Any, branch: Any, prefix: str = "") -> list[str]:
    """'key=stem value (the branch's: value)' for every setting in which two trajectories differ."""
    if isinstance(stem, dict) and isinstance(branch, dict):
        out = []
        for key in sorted(set(stem) | set(branch), key=str):
            out += _differences(stem.get(key), branch.get(key), f"{prefix}{key}.")
        return out
    if stem == branch:
        return []
    return [f"{prefix.rstrip('.')}={stem!r} (the branch's: {branch!r})"]
