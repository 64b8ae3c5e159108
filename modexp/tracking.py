"""What a run records: local files (the source of truth) and a Weights & Biases mirror.

Local files are what every later stage reads: W&B offline runs cannot be read back from Python (the
public API reads only synced runs). A W&B failure is a warning, never a lost run.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
import socket
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from .provenance import code_version
from .ranges import check_id_suffix
from .rundir import atomic_write, strict_json

log = logging.getLogger(__name__)

PACKAGES = ("torch", "numpy", "hydra-core", "omegaconf", "wandb", "pandas", "modexp")


def environment() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "code": code_version(),
        "packages": versions,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }


class MetricsLog:
    """metrics.jsonl, one JSON object per line, append-only and fsynced per record; on resume, lines past the
    checkpoint are dropped by an atomic rewrite (a kill mid-way leaves the old file, never an empty one)."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            truncate_metrics(path, resume_step)
        elif resume_step is None and path.exists():
            path.unlink()
        self._file = path.open("a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(strict_json(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())  # docs/troubleshooting.md's promise: what a run wrote survives a crash

    def records(self) -> list[dict[str, Any]]:
        """Every record written so far (after a resume: those up to the checkpoint)."""
        self._file.flush()
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        self._file.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the lines of metrics.jsonl up to `step` (the checkpoint's): written to a temporary file, fsynced
    and renamed over the old one, so a kill during it leaves the whole old history."""
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _step_of(line) <= step]
    if len(kept) < len(lines):
        text = "".join(line + "\n" for line in kept)
        atomic_write(path, lambda tmp: tmp.write_text(text))


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", -1)
    except json.JSONDecodeError:
        return float("inf")  # a line cut by a kill: drop it


def wandb_host() -> str:
    """The W&B server this process talks to: WANDB_BASE_URL (a self-hosted server) or wandb.ai's API."""
    from urllib.parse import urlparse

    return urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"


def wandb_mode(requested: str) -> str:
    """auto -> online when a key for the configured server is known, else offline. WANDB_MODE wins."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    import netrc

    try:
        if netrc.netrc().authenticators(wandb_host()):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def _interpolated(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_interpolated(v) for v in value)
    return isinstance(value, str) and "${" in value


WANDB_REACH_TIMEOUT = 3.0  # seconds: a reachable server answers a TCP connect well within this


def wandb_address() -> tuple[str, int]:
    """(host, port) of the W&B server this process talks to."""
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    try:
        port = url.port
    except ValueError:  # a malformed port: let wandb.init say what is wrong with the URL
        port = None
    return url.hostname or "api.wandb.ai", port or (80 if url.scheme == "http" else 443)


_REACHABLE: dict[tuple[str, int], str | None] = {}  # (host, port) -> why not reachable (None: reachable)
_SAID_OFFLINE: set[tuple[str, int]] = set()  # the one line per process and server


def wandb_unreachable() -> str | None:
    """Why the W&B server cannot be reached (a short TCP connect, once per process), or None when it can."""
    address = wandb_address()
    if address not in _REACHABLE:
        try:
            socket.create_connection(address, timeout=WANDB_REACH_TIMEOUT).close()
            _REACHABLE[address] = None
        except OSError as exc:
            _REACHABLE[address] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return _REACHABLE[address]


def resolve_wandb_mode(requested: str) -> str:
    """wandb_mode, and auto's online only when the server answers: without a network, auto goes offline at
    once (wandb.init would wait a minute and fail), and says so in one line."""
    mode = wandb_mode(requested)
    if requested == "auto" and mode == "online" and not os.environ.get("WANDB_MODE"):
        why = wandb_unreachable()
        if why is not None:
            host, port = wandb_address()
            if (host, port) not in _SAID_OFFLINE:
                _SAID_OFFLINE.add((host, port))
                log.warning(
                    "W&B: %s:%s is not reachable (%s): tracker.wandb.mode=auto logs offline; upload later with "
                    "`wandb sync`",
                    host,
                    port,
                    why,
                )
            return "offline"
    return mode


STUDY_ID_FILE = "study_id"


def study_id(folder: Path) -> str:
    """The study's own id: drawn once, the first time W&B is used in the folder, and kept in it
    (<folder>/study_id). It moves with the folder (an rsynced or renamed study resumes the same W&B runs) and
    differs between studies planned alike or kept at the same path on two machines (one online project)."""
    path = folder / STUDY_ID_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{STUDY_ID_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        tmp.write_text(secrets.token_hex(4) + "\n")
        try:
            os.link(tmp, path)  # atomic: of runs starting together, the first one's id is everyone's
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def wandb_identity(run_dir: Path, run_id: str, suffix: str = "") -> tuple[str, str]:
    """(W&B run id, group) for a run folder: from the study's id and the run's digest, so two studies with
    the same runs never share a W&B run and a moved study keeps its ids; `suffix`
    (tracker.wandb.id_suffix) starts afresh, e.g. after deleting a W&B run, whose id W&B never accepts
    again."""
    suffix = check_id_suffix(suffix)
    study_dir = run_dir.resolve().parent
    study = study_id(study_dir)
    digest = run_id.rsplit("-", 1)[-1]
    return f"{digest}-{study}{suffix}", f"{study_dir.name}-{study}"


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as W&B's run config: one key per setting, dotted (model.capacity, run.params), so the
    runs table and filters read `model.capacity` directly."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{name}."))
        else:
            out[name] = value
    return out


def env_tags() -> list[str]:
    """WANDB_TAGS (comma-separated), as W&B documents it: wandb.init's own tags would replace them."""
    return [t.strip() for t in os.environ.get("WANDB_TAGS", "").split(",") if t.strip()]


def record_to_wandb(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl record as logged to W&B: train/... or val/..., with flops and tokens at the top so
    every chart can use them as its x-axis."""
    kind = record.get("kind", "train")
    out: dict[str, Any] = {"flops": record.get("flops"), "tokens": record.get("tokens")}
    for key, value in record.items():
        if key in ("kind", "step", "flops", "tokens"):
            continue
        name = key.removeprefix("val_") if kind == "val" else key
        out[f"{kind}/{name}"] = value
    return {k: v for k, v in out.items() if v is not None}


def forget_dead_service() -> None:
    """Drop an inherited WANDB_SERVICE whose service is gone. wandb puts its service's address in the
    environment for child processes; once that service has ended (its process exited or was killed), every
    wandb.init in a child fails and the run would go unlogged. Without the address, wandb starts its own."""
    token = os.environ.get("WANDB_SERVICE", "")
    parts = token.split("-", 3)
    if len(parts) < 4:
        return
    kind, address = parts[2], parts[3]
    family, target = (
        (socket.AF_UNIX, address)
        if kind == "unix"
        else (socket.AF_INET, ("127.0.0.1", int(address.rpartition("-")[2])))
    )
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            probe.connect(target)
    except (OSError, ValueError):
        log.info("W&B's service at %s is gone: this process starts its own", address)
        os.environ.pop("WANDB_SERVICE", None)


class WandbMirror:
    """Mirrors a run's metrics to W&B. Any W&B error turns it off with a warning; training never depends on it.

    One W&B run per run folder, resumed with it:
    - online, W&B resumes the run ("allow") and the steps it already has are not logged again (training
      resumes exactly, so they hold the same numbers): no step lost, none twice;
    - offline, every process writes its own offline-run folder; on resume the earlier folders of this run are
      moved to wandb/superseded/ and the new one is given the whole history again from metrics.jsonl, so
      `wandb sync <run>/wandb/offline-run-*` uploads one history with each step once.
    """

    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        settings: Any,
        sweep: str,
        job_type: str,
        config: dict[str, Any],
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        self.run = None
        self.skip_through = 0  # W&B already has every step up to this one
        self.mode = resolve_wandb_mode(settings.mode)
        if self.mode == "disabled":
            return
        # auto mode whose online start fails (a server that answers but not as W&B) still keeps a mirror
        modes = [self.mode]
        if settings.mode == "auto" and self.mode == "online" and not os.environ.get("WANDB_MODE"):
            modes.append("offline")
        for mode in modes:
            self.mode = mode
            try:
                wandb_id, group = wandb_identity(run_dir, run_id, getattr(settings, "id_suffix", "") or "")
                import wandb

                forget_dead_service()

                if self.mode == "offline":
                    _supersede_offline(run_dir / "wandb", wandb_id)
                self.run = wandb.init(
                    project=settings.project,
                    entity=settings.entity,
                    id=wandb_id,
                    name=run_id,
                    group=group,
                    job_type=job_type,
                    tags=list(dict.fromkeys([*settings.tags, *env_tags(), job_type, sweep])),
                    config=flat_config(config),
                    dir=str(run_dir),
                    mode=self.mode,
                    resume="allow",
                    reinit="finish_previous",
                    settings=wandb.Settings(init_timeout=60, console="off", silent=True),
                )
                self.run.define_metric("flops")
                self.run.define_metric("tokens")
                for pattern in ("train/*", "val/*"):  # charts default to FLOPs on the x-axis
                    self.run.define_metric(pattern, step_metric="flops")
                for loss in ("val/loss", "val/loss_causal"):  # the top-k and the causal (headline) loss
                    self.run.define_metric(loss, step_metric="flops", summary="min")
                if self.mode == "online" and self.run.resumed:
                    self.skip_through = max(0, int(self.run.step) - 1)
                elif self.mode == "offline" and history:
                    for record in history:  # the new offline folder carries the whole history
                        self.log_record(record)
                self._say_where(run_dir, wandb_id)
                return
            except Exception as exc:  # noqa: BLE001 - a tracker must never take the run down
                self.run = None
                if mode != modes[-1]:
                    log.warning(
                        "W&B online failed (%s: %s): logging offline instead", type(exc).__name__, exc
                    )
                else:
                    warnings.warn(f"W&B disabled for this run: {type(exc).__name__}: {exc}", stacklevel=2)

    def _say_where(self, run_dir: Path, wandb_id: str) -> None:
        """Once per run: where to look (online) or the exact command that uploads it (offline)."""
        if self.mode == "online":
            log.info("W&B: %s", self.run.url)
        else:
            folder = Path(self.run.dir).parent  # .../wandb/offline-run-<time>-<id>/files -> the run's folder
            log.info("W&B offline: upload with `wandb sync %s`", folder)

    def log_record(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record, at its step."""
        self.log(record_to_wandb(record), int(record["step"]))

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.run is None or step <= self.skip_through:
            return
        try:
            self.run.log(record, step=step)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"W&B logging failed, mirror off: {exc}", stacklevel=2)
            self.run = None

    def finish(self, summary: dict[str, Any] | None, exit_code: int) -> None:
        if self.run is None:
            return
        try:
            if summary:
                self.run.summary.update(summary)
            self.run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"W&B finish failed: {exc}", stacklevel=2)
        self.run = None


def _supersede_offline(wandb_dir: Path, wandb_id: str) -> None:
    """Earlier offline folders of this W&B run: out of the way of `wandb sync wandb/offline-run-*`."""
    earlier = sorted(wandb_dir.glob(f"offline-run-*-{wandb_id}"))
    if not earlier:
        return
    (wandb_dir / "superseded").mkdir(parents=True, exist_ok=True)
    for folder in earlier:
        os.replace(folder, wandb_dir / "superseded" / folder.name)


def log_analysis(result: Any, settings: Any, sweep_dir: Path | None) -> str | None:
    """The study itself as a W&B run (job type "analysis"): results, points, fits and verdict as tables, the
    figures as images, the analysis outputs as an artifact. Returns where it went (URL or sync command).

    One W&B run per analysis folder, in the same group as the study's runs; offline, earlier offline folders
    of it move to wandb/superseded/ like a run's. Any W&B error is a warning.
    """
    mode = resolve_wandb_mode(settings.mode)
    if mode == "disabled":
        return None
    out = Path(result.out_dir).resolve()
    try:
        study = study_id((sweep_dir or out).resolve())  # a read-only study folder: a warning below
        wandb_id = f"analysis-{study}{check_id_suffix(getattr(settings, 'id_suffix', ''))}"
        group = f"{(sweep_dir or out).resolve().name}-{study}"
        import wandb

        forget_dead_service()
        if mode == "offline":
            _supersede_offline(out / "wandb", wandb_id)
        run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            id=wandb_id,
            name=f"analysis {(sweep_dir or out).name}",
            group=group,
            job_type="analysis",
            tags=list(dict.fromkeys([*settings.tags, *env_tags(), "analysis"])),
            config={"sweep_dir": str(sweep_dir) if sweep_dir else None, "loss": result.loss},
            dir=str(out),
            mode=mode,
            resume="allow",
            reinit="finish_previous",
            settings=wandb.Settings(init_timeout=60, console="off", silent=True),
        )
        tables = {
            "results": result.results,
            "points": result.points,
            "fits": result.fits,
            "power_laws": result.power_laws,
            "verdict": result.verdict,
            "verdict_overall": result.verdict_overall,
            "verdict_time": getattr(result, "verdict_time", None),  # the iso-time verdict
        }
        logged: dict[str, Any] = {
            f"table/{name}": wandb.Table(dataframe=frame.reset_index(drop=True))
            for name, frame in tables.items()
            if frame is not None and len(frame)
        }
        for name, path in result.figures.items():
            png = Path(path).with_suffix(".png")
            if png.exists():
                logged[f"figure/{name}"] = wandb.Image(str(png), caption=name)
        run.log(logged)
        from .analysis.report import headline_line

        for pair in result.verdict_overall.itertuples():  # the headline, searchable across studies
            key = f"{pair.curve}_vs_{pair.reference}/{getattr(pair, 'loss', result.loss)}"
            run.summary[f"multiplier/{key}"] = pair.multiplier
            for column in (
                "multiplier_lo",
                "multiplier_hi",
                "m_slope",
                "m_slope_lo",
                "m_slope_hi",
                "heterogeneous",
            ):
                if hasattr(pair, column):
                    run.summary[f"{column}/{key}"] = getattr(pair, column)
            run.summary[f"verdict/{key}"] = headline_line(pair)
        if sweep_dir is not None:  # how much of its devices the study used (modexp/mfu.py)
            from .mfu import read_summaries, study_mfu

            run.summary["study_mfu"] = study_mfu(read_summaries(Path(sweep_dir)))["mfu"]
        artifact = wandb.Artifact(f"analysis-{study}", type="analysis", metadata={"loss": result.loss})
        files = analysis_files(result)
        for name, path in files.items():
            artifact.add_file(str(path), name=name)
        run.log_artifact(artifact)
        size = sum(path.stat().st_size for path in files.values())
        print(f"W&B analysis artifact: {len(files)} files, {size / 1024:.0f} KiB", file=sys.stderr)
        where = run.url if mode == "online" else f"wandb sync {Path(run.dir).parent}"
        run.finish()
        return where
    except Exception as exc:  # noqa: BLE001 - the analysis is on disk whatever W&B does
        warnings.warn(f"W&B: the analysis was not logged: {type(exc).__name__}: {exc}", stacklevel=2)
        return None


# What an analysis writes (modexp/analysis/study.py, calibration.py): tables and the summary.
ANALYSIS_TABLES = (
    "results.csv",
    "results.parquet",
    "points.csv",
    "fits.csv",
    "verdict.csv",
    "verdict_overall.csv",
    "verdict_time.csv",
    "power_laws.csv",
    "approach3.csv",
    "lr_laws.csv",
    "coverage.csv",
    "coverage.md",
    "summary.txt",
)
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def analysis_files(result: Any) -> dict[str, Path]:
    """{artifact name: file} of an analysis: its tables, summary and figures, named by what they are. Never
    anything else of the output folder, which by default is the sweep folder with every run's checkpoints."""
    files: dict[str, Path] = {}
    for folder in (result.sweep_dir, result.out_dir):  # results.* live in the sweep folder
        for name in ANALYSIS_TABLES:
            if folder is not None and (Path(folder) / name).is_file():
                files[name] = Path(folder) / name
    for figure in result.figures.values():
        for suffix in FIGURE_SUFFIXES:
            path = Path(figure).with_suffix(suffix)
            if path.is_file():
                files[f"figures/{path.name}"] = path
    return files


def study_wandb_settings(sweep_dir: Path | None) -> Any:
    """tracker.wandb as the study's runs were configured (the first run folder's config.yaml), else the
    defaults of conf/."""
    import yaml
    from omegaconf import OmegaConf

    from .config import WandbConfig, compose_config
    from .rundir import read_text

    schema = OmegaConf.merge(
        OmegaConf.structured(WandbConfig), compose_config([], export=False).tracker.wandb
    )
    for config in sorted(sweep_dir.glob("*/config.yaml")) if sweep_dir else []:
        try:
            # Plain YAML, no resolvers: a run folder's `${oc.env:...}` must never be resolved from the
            # analyst's environment (into a W&B file); a value that is an interpolation takes the default.
            node = yaml.safe_load(read_text(config))["tracker"]["wandb"]  # a FIFO is never opened
            node = {k: v for k, v in node.items() if not _interpolated(v)}
            settings = OmegaConf.to_object(OmegaConf.merge(schema, node))
            check_id_suffix(settings.id_suffix)
            return settings
        except Exception:  # noqa: BLE001 - an older or broken config: try the next one
            continue
    return OmegaConf.to_object(schema)


def log_study(result: Any, sweep_dir: Path | None, mode: str | None = None) -> None:
    """`modexp analyze` and the end of a sweep: the analysis as its own W&B run; says where it went."""
    if wandb_mode(mode or "auto") == "disabled":  # WANDB_MODE or --wandb: no settings to compose (Hydra)
        return
    settings = study_wandb_settings(sweep_dir)
    if mode:
        settings.mode = mode
    where = log_analysis(result, settings, sweep_dir)
    if where:
        print(f"W&B analysis run: {where}", file=sys.stderr)
