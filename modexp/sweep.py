"""`modexp sweep`: plan, run every missing run on the devices at hand, then the table and figures.

Idempotent: a run's folder is named by a hash of what determines its result, so re-running the same command
skips finished runs, resumes interrupted ones from their checkpoints and retries failed ones on request.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import launch
from .config import Config, compose_config, expand_overrides, processes_per_run, to_typed
from .data import is_prepared, load_corpus, train_split_tokens
from .data.config import missing_path, require_path
from .errors import ModexpError
from .plan import (
    Plan,
    RunSpec,
    epoch_spread_notes,
    load_lr_law,
    plan_sweep,
    set_epochs,
    single_run,
    sort_runs,
)
from .rundir import (
    EXIT_LOCKED,
    STEMS,
    read_json,
    read_status,
    run_state,
    set_status,
    sweep_dir,
    write_json,
    write_run,
)
from .units import count, duration
from .unused import refuse_unused
from .variants import short_tag

log = logging.getLogger(__name__)


@dataclass
class Study:
    """A planned sweep: its folder, the composed configs behind it, and one RunSpec per run."""

    dir: Path
    configs: list[tuple[DictConfig, Config]]
    plan: Plan
    run_sources: dict[str, DictConfig]  # run_id -> the composed config it was planned from

    def run_config(self, spec: RunSpec) -> DictConfig:
        """The resolved config `spec` trains with; built when its folder is written (a plan does not need it,
        and resolving the whole tree per run was most of `modexp plan`'s time on a large study)."""
        return run_config(self.run_sources[spec.run_id], spec)

    def run_dir(self, spec: RunSpec) -> Path:
        """A run's folder; stems live apart in stems/, where the analysis never looks."""
        return self.dir / STEMS / spec.run_id if spec.role == "stem" else self.dir / spec.run_id

    @property
    def trained(self) -> list[RunSpec]:
        """Everything the sweep trains: the stems (sweep.reuse=branches), then the runs."""
        return self.plan.stems + self.plan.runs

    def jobs(self, specs: list[RunSpec]) -> list[launch.Job]:
        """Jobs for specs; a branch comes after its stem (when that stem is still to be trained)."""
        waiting = {s.run_id for s in specs if s.role == "stem"}
        return [launch.Job(s, self.run_dir(s), [s.stem] if s.stem in waiting else []) for s in specs]


def build_study(overrides: list[str], to_train: bool = False) -> Study:
    """The study the overrides describe: one composed config per comma combination, planned into one folder.

    to_train: the study is to be trained here (modexp sweep, its dry run too), so what cannot start is said
    before any planning: data=text or data=tokens without data.path, device=cuda without a GPU, no sbatch. A
    plan alone may be made before the corpus exists, on another machine than the one that will train it.
    """
    configs = []
    for combo in expand_overrides(overrides):
        dict_cfg = compose_config(combo)
        typed = to_typed(dict_cfg)
        launch.get(typed.launcher.name).validate(typed)  # an unknown launcher, or settings it cannot honour
        refuse_unused(combo, typed, "sweep")
        if to_train:
            require_path(typed.data)
        if to_train and not configs:
            launch.get(typed.launcher.name).check(typed)  # e.g. no GPU: said before any ladder note
        configs.append((dict_cfg, typed))
    dirs = {sweep_dir(typed) for _, typed in configs}
    if len(dirs) > 1:
        raise ModexpError(
            f"one sweep writes to one folder, but these overrides give {len(dirs)}: "
            "do not sweep runs_dir or sweep.name"
        )
    runs, notes, run_sources = {}, [], {}
    for dict_cfg, typed in configs:
        plan = _plan(typed)
        for note in plan.notes + _count_epochs(plan, typed):
            if note not in notes:
                notes.append(note)
        for spec in plan.stems + plan.runs:
            if spec.run_id not in runs:
                runs[spec.run_id] = spec
                run_sources[spec.run_id] = dict_cfg
    stems = [r for r in runs.values() if r.role == "stem"]
    trained = sort_runs(r for r in runs.values() if r.role != "stem")
    return Study(dirs.pop(), configs, Plan(trained, notes, stems), run_sources)


def train_single(overrides: list[str]) -> Path:
    """`modexp train`: the one run the overrides describe (plan.single_run), in its folder under the study
    sweep.name names, trained in this process (or launcher.gpus_per_run of them); returns its folder."""
    from .train import NonFiniteLoss, RunLocked, train_run

    dict_cfg = compose_config(overrides)
    cfg = to_typed(dict_cfg)
    launch.get(cfg.launcher.name).validate(cfg)
    refuse_unused(overrides, cfg, "train")
    require_path(cfg.data)  # before the run's plan: its vocabulary may leave no budget that fits
    spec = single_run(cfg)
    corpus = load_corpus(cfg.data, spec.model.seq_len)  # before the run folder: bad data leaves nothing
    set_epochs([spec], len(corpus.train), cfg)  # the sweep's repetition limit holds for one run too
    run_dir = sweep_dir(cfg) / spec.run_id
    if not write_run(run_dir, run_config(dict_cfg, spec), spec):  # its trainer keeps its own files
        raise ModexpError(f"{run_dir} is being trained by another process")
    if processes_per_run(cfg) > 1:
        _train_processes(run_dir, cfg)
        return run_dir
    try:
        train_run(run_dir, corpus)
    except RunLocked as exc:
        raise ModexpError(str(exc)) from None
    except NonFiniteLoss as exc:
        raise ModexpError(f"run failed: {exc} (see {run_dir / 'status.json'})") from None
    return run_dir


def _train_processes(run_dir: Path, cfg: Config) -> None:
    """One run on launcher.gpus_per_run processes: what a sweep's pool does, for `modexp train`."""
    from .launch.local import train_processes

    code = train_processes(run_dir, cfg)
    if code == EXIT_LOCKED:
        raise ModexpError(f"{run_dir} is being trained by another process")
    if code != 0:
        status = read_status(run_dir)
        raise ModexpError(
            f"run {status.get('state', 'failed')}: {status.get('reason') or f'exit code {code}'}"
        )


def _plan(cfg: Config) -> Plan:
    """plan_sweep, with a missing data.path said first when the plan fails without it (data=tokens's
    vocabulary can leave no shape of the ladder that fits)."""
    try:
        return plan_sweep([cfg])
    except ModexpError as exc:
        if cfg.data.name != "stdlib" and not cfg.data.path:
            raise ModexpError(f"{missing_path(cfg.data)} (planned without it: {exc})") from None
        raise


def _count_epochs(plan: Plan, cfg: Config) -> list[str]:
    """Each run's epochs over its corpus, refusing too many; a note instead while the corpus is not given."""
    train_tokens = train_split_tokens(cfg.data)
    if train_tokens is None:
        return [
            f"epochs not known: data.path is not set, so sweep.max_epochs={cfg.sweep.max_epochs:g} "
            "is not checked yet"
        ]
    set_epochs(plan.runs, train_tokens, cfg)
    return epoch_spread_notes((r.variant, r.budget, r.epochs) for r in plan.runs)


def run_config(dict_cfg: DictConfig, spec: RunSpec) -> DictConfig:
    """The resolved config a run trains with: the sweep's, with its own shape and routing."""
    cfg = OmegaConf.create(OmegaConf.to_container(dict_cfg, resolve=True))
    for key, value in vars(spec.model).items():
        OmegaConf.update(cfg, f"model.{key}", value)
    cfg.budget = spec.budget
    cfg.variant = spec.variant
    cfg.train.schedule = spec.schedule  # auto resolved: the run's config names what it trains with
    if spec.seed is not None:  # sweep.seeds: each seed's runs carry their own
        cfg.seed = spec.seed
    if spec.lr is not None:  # from sweep.lr_grid or train.lr_from's law: the config says what it trains with
        cfg.train.lr = spec.lr
    return cfg


def check_data(study: Study, dry_run: bool = False) -> None:
    """Prepare each corpus once, before any run folder exists: bad data fails here, leaving nothing behind.

    dry_run: check it just the same, but a corpus not yet cached is prepared into a temporary folder, so a
    dry run writes nothing.
    """
    seen = set()
    with tempfile.TemporaryDirectory(prefix="modexp-dry-run-") as scratch:
        for _, cfg in study.configs:
            seq_lens = {r.model.seq_len for r in study.plan.runs}
            key = (repr(cfg.data), tuple(sorted(seq_lens)))
            if key in seen:
                continue
            seen.add(key)
            data = cfg.data
            if dry_run and not is_prepared(data):
                data = dataclasses.replace(data, cache_dir=scratch)
            for seq_len in seq_lens:
                load_corpus(data, seq_len)


def pending_runs(study: Study, retry_failed: bool) -> tuple[list[RunSpec], list[RunSpec]]:
    """(runs to start, runs left failed). Larger runs first so the pool drains evenly."""
    todo, failed = [], []
    for spec in study.trained:
        state = run_state(study.run_dir(spec))
        if state == "done":
            continue
        if state == "failed" and not retry_failed:
            failed.append(spec)
            continue
        todo.append(spec)
    failed_ids = {s.run_id for s in failed}
    orphans = [s for s in todo if s.stem in failed_ids]  # their stem failed and is not retried
    for spec in orphans:
        todo.remove(spec)
        failed.append(spec)
        if (study.run_dir(spec) / "run.json").exists():
            set_status(
                study.run_dir(spec),
                "failed",
                reason=f"{spec.stem}, which it starts from, failed: rerun with --retry-failed to retrain both",
            )
    # Stems first (their branches wait on them), then larger runs first so the pool drains evenly.
    todo.sort(key=lambda r: (r.role != "stem", -r.flops, -r.accounting["params"]))
    return todo, failed


class LiveView:
    """done / running / failed / pending, running runs' current loss, and an ETA from FLOPs done so far."""

    def __init__(self, study: Study, total: list[RunSpec]) -> None:
        self.study, self.total = study, total
        self.started = time.monotonic()
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def tick(self, pool: Any = None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (2 if self.tty else 30):
            return
        self.last = now
        counts = {"done": 0, "running": 0, "failed": 0, "pending": 0}
        losses, flops_done, flops_total = [], 0.0, 0.0
        for spec in self.total:
            run_dir = self.study.run_dir(spec)
            status = read_status(run_dir)
            state = status.get("state", "pending")
            state = {"interrupted": "pending", "planned": "pending"}.get(state, state)
            counts[state if state in counts else "pending"] += 1
            flops_total += spec.flops
            if state == "done":
                flops_done += spec.flops
            elif state == "running":
                step = status.get("step") or 0
                flops_done += spec.flops * step / max(1, spec.steps)
                loss = _last_loss(run_dir)
                if loss is not None:
                    losses.append(f"{spec.shape}/{short_tag(spec.variant)} {loss:.3f}")
        elapsed = now - self.started
        eta = ""
        if 0 < flops_done < flops_total and elapsed > 5:
            eta = f" | ETA {duration(elapsed * (flops_total - flops_done) / flops_done)}"
        line = (
            f"[sweep] done {counts['done']} running {counts['running']} failed {counts['failed']} "
            f"pending {counts['pending']} of {len(self.total)}{eta}"
            + (f" | {', '.join(losses[:4])}" if losses else "")
        )
        if self.tty and not force:  # a terminal: one status line, redrawn in place
            columns = shutil.get_terminal_size().columns
            print(f"\r{line[: columns - 1]:<{columns - 1}}", end="", file=sys.stderr, flush=True)
        else:
            print(("\n" if self.tty else "") + line, file=sys.stderr, flush=True)


def _last_loss(run_dir: Path) -> float | None:
    from .status import last_records

    train, _ = last_records(run_dir)
    return train["loss"] if train else None


def write_plan(study: Study, overrides: list[str]) -> None:
    """plan.json: this invocation's plan, plus every run id any sweep planned into the folder.

    The ids let `modexp analyze` tell a study's runs (a later sweep may add a capacity to the same folder)
    from stray ones, e.g. a `modexp train` into the same sweep name with another batch size.
    """
    study.dir.mkdir(parents=True, exist_ok=True)
    try:
        previous = read_json(study.dir / "plan.json")
    except (OSError, ValueError):
        previous = {}
    planned = set(previous.get("planned_ids", [])) | {r.run_id for r in study.plan.runs}
    write_json(
        study.dir / "plan.json",
        {
            "overrides": overrides,
            # What the study trains (stems counted once) against training every run from scratch.
            "flops_spent": study.plan.flops_spent,
            "flops_budgeted": study.plan.flops_budgeted,
            "runs": [r.row() for r in study.plan.runs],
            "stems": [{**s.row(), "branch_points": s.branch_points} for s in study.plan.stems],
            "notes": study.plan.notes,
            "lr_rules": sorted({f"{r.variant}: {r.lr_rule}" for r in study.plan.runs}),
            "lr_laws": _lr_laws(study),
            "planned_ids": sorted(planned),
        },
    )


def _lr_laws(study: Study) -> list[dict]:
    """The fitted lr*(N) laws behind the plan, with their source, when train.lr_from set the LRs."""
    laws = [load_lr_law(cfg) for _, cfg in study.configs]
    return [law.record() for law in laws if law is not None]


def run_sweep(
    study: Study,
    overrides: list[str],
    retry_failed: bool,
    fail_fast: bool,
    detach: bool = False,
) -> int:
    """Returns the process exit code: 0 when every planned run is done and the figures are drawn."""
    _, cfg0 = study.configs[0]
    launcher = launch.get(cfg0.launcher.name)
    launcher.check(cfg0)  # what cannot start here fails before anything is prepared or written
    check_data(study)
    write_plan(study, overrides)
    todo, failed_before = pending_runs(study, retry_failed)
    done = len(study.trained) - len(todo) - len(failed_before)
    stems = f" and {count(len(study.plan.stems), 'stem')}" if study.plan.stems else ""
    print(
        f"[sweep] {study.dir}: {count(len(study.plan.runs), 'run')}{stems} planned, {done} done, "
        f"{len(todo)} to run"
        + (f", {len(failed_before)} failed (rerun with --retry-failed)" if failed_before else ""),
        file=sys.stderr,
    )
    for spec in todo:
        write_run(study.run_dir(spec), study.run_config(spec), spec)
    view = LiveView(study, study.trained)
    options = launch.Options(fail_fast, retry_failed, detach, on_tick=view.tick)
    started = time.time()
    stopped = launcher.run(study.jobs(todo), cfg0, study.dir, options)
    if stopped is not None:  # detached or interrupted: the next call collects
        return stopped
    view.tick(force=True)
    training = time.time() - started
    code = finish(study)
    from .pace import sweep_done

    print(sweep_done(study.dir, cfg0, {s.run_id for s in todo}, training), file=sys.stderr)
    return code


def finish(study: Study) -> int:
    states = {s.run_id: run_state(study.run_dir(s)) for s in study.trained}
    folders = {s.run_id: study.run_dir(s) for s in study.trained}
    failed = [rid for rid, st in states.items() if st == "failed"]
    unfinished = [rid for rid, st in states.items() if st not in ("done", "failed")]
    n_done = sum(states[s.run_id] == "done" for s in study.plan.runs)
    if n_done:
        from .analysis import analyze

        try:
            result = analyze(sweep_dir=study.dir, table=None, out=None)
            print(result.summary, file=sys.stderr)
            from .tracking import log_study

            log_study(result, study.dir)
        except ModexpError as exc:
            print(f"[sweep] analysis: {exc}", file=sys.stderr)
    for rid in failed:
        status = read_status(folders[rid])
        print(f"[sweep] FAILED {rid}: {status.get('reason')}", file=sys.stderr)
    for rid in unfinished:
        status = read_status(folders[rid])
        why = f": {status['reason']}" if status.get("reason") else ""
        print(f"[sweep] not finished {rid} ({states[rid]}{why})", file=sys.stderr)
    if failed or unfinished:
        advice = []
        if unfinished:
            advice.append(f"{len(unfinished)} unfinished resume when you rerun the same command")
        if failed:
            advice.append(f"{len(failed)} failed are retried with --retry-failed")
        print(f"[sweep] {'; '.join(advice)}", file=sys.stderr)
        return 1
    print(
        f"[sweep] {'1 run' if n_done == 1 else f'all {n_done} runs'} done. Table: {study.dir / 'results.csv'}  Figures: {study.dir / 'plots'}"
    )
    return 0
