"""W&B that tells the whole story: one W&B run per (study folder, run), a kill and resume under offline W&B
syncs to one history with each step once, and `modexp analyze` logs the study as its own run (issue 16)."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from modexp.tracking import record_to_wandb, wandb_identity, wandb_mode

EXE = Path(sys.executable).parent / "modexp"
RUN = ["sweep=smoke", "budget=1e10", "model.d_model=16", "model.n_heads=2", "train.checkpoint_every=10"]


def offline_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "MODEXP_THREADS": "1",
        "HOME": str(tmp_path / "home"),
    }


def wandb_records(path: Path):
    """The protobuf records of an offline .wandb file (LevelDB log format: 32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending + chunk if kind == 4 else chunk)
            pending = b""
            yield record
        else:  # FIRST, MIDDLE
            pending = chunk if kind == 2 else pending + chunk


def history(path: Path) -> list[tuple[int, dict[str, float]]]:
    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            rows.append((record.history.step.num, items))
    return rows


def test_wandb_ids_are_unique_per_study_folder_and_settable(tmp_path: Path) -> None:
    run_id = "mod_c0.125_e2-d64-l4-1e12-0123456789"
    a, group_a = wandb_identity(tmp_path / "runs" / "study_a" / run_id, run_id)
    b, _ = wandb_identity(tmp_path / "elsewhere" / "study_a" / run_id, run_id)
    again, _ = wandb_identity(tmp_path / "runs" / "study_a" / run_id, run_id)
    fresh, _ = wandb_identity(tmp_path / "runs" / "study_a" / run_id, run_id, "-v2")
    assert a != b and a == again and fresh == a + "-v2"
    assert not set("/\\#?%:") & set(a) and len(a) <= 64
    assert group_a.startswith("study_a-")


def test_metrics_map_to_wandb_keys_with_flops_and_tokens_at_the_top() -> None:
    train = {"kind": "train", "step": 5, "tokens": 10, "flops": 1e9, "loss": 3.0, "lr": 1e-3}
    val = {"kind": "val", "step": 5, "tokens": 10, "flops": 1e9, "val_loss": 2.5, "val_loss_causal": 2.6}
    assert record_to_wandb(train) == {"flops": 1e9, "tokens": 10, "train/loss": 3.0, "train/lr": 1e-3}
    assert record_to_wandb(val) == {"flops": 1e9, "tokens": 10, "val/loss": 2.5, "val/loss_causal": 2.6}


def test_auto_mode_knows_a_self_hosted_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_mode("auto") == "offline"
    (tmp_path / ".netrc").write_text("machine wandb.example.org\n  login user\n  password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode("auto") == "online"
    monkeypatch.delenv("WANDB_BASE_URL")
    assert wandb_mode("auto") == "offline"  # a key for another server is not a key for wandb.ai


def test_kill_and_resume_under_offline_wandb_syncs_one_history(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    runs = tmp_path / "runs"
    argv = [str(EXE), "train", *RUN, f"runs_dir={runs}", "tracker.wandb.mode=offline"]
    with open(tmp_path / "child.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while True:
            found = list(runs.glob("smoke/*/status.json"))
            status = json.loads(found[0].read_text()) if found else {}
            if status.get("state") == "running" and status.get("step", 0) >= 60:
                break
            assert proc.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = found[0].parent
    rerun = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "upload with `wandb sync" in rerun.stderr
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["resumed_from_step"] is not None

    current = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(current) == 1, current  # what `wandb sync <run>/wandb/offline-run-*` uploads
    assert len(list((run_dir / "wandb" / "superseded").glob("offline-run-*"))) == 1
    (wandb_file,) = current[0].glob("run-*.wandb")
    rows = history(wandb_file)
    steps = [step for step, _ in rows]
    assert steps == sorted(set(steps)), steps  # each step once, in order
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert set(steps) == {r["step"] for r in records}  # nothing lost before or after the kill
    logged = {step: items for step, items in rows}
    for record in records:
        if record["kind"] == "train":
            assert logged[record["step"]]["train/loss"] == pytest.approx(record["loss"])
            assert logged[record["step"]]["flops"] == pytest.approx(record["flops"])
        else:
            assert logged[record["step"]]["val/loss"] == pytest.approx(record["val_loss"])


def test_analyze_with_offline_wandb_leaves_an_analysis_run(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    table = tmp_path / "results.csv"
    rows = ["variant,budget,params,tokens,flops,val_loss"]
    for budget in (1e12, 3e12):
        for params in (1e5, 2e5, 4e5, 8e5):
            tokens = budget / (6 * params)
            loss = 2 + 0.5 * (abs(__import__("math").log(params / (budget / 6 / 20) ** 0.5))) ** 2
            rows.append(f"baseline,{budget},{params},{tokens},{budget},{loss}")
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / "analysis"
    proc = subprocess.run(
        [str(EXE), "analyze", "--table", str(table), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "W&B analysis run: wandb sync" in proc.stderr
    (run,) = (out / "wandb").glob("offline-run-*-analysis-*")
    media = run / "files" / "media"
    assert list(media.glob("table/table/results_*.table.json")) and list(
        media.glob("table/table/fits_*.table.json")
    )
    assert list(media.glob("images/figure/isoflop_*.png"))
    (wandb_file,) = run.glob("run-*.wandb")
    kinds = {r.WhichOneof("record_type") for r in wandb_records(wandb_file)}
    assert {"history", "artifact"} <= kinds


def test_auto_mode_without_network_goes_offline_at_once(tmp_path: Path) -> None:
    """A key but no reachable server (issue 25): auto mode logs offline after a short connect, says so in one
    line, and keeps the mirror (wandb.init online waited ~60 s here and then turned the mirror off)."""
    env = {k: v for k, v in offline_env(tmp_path).items() if k != "WANDB_MODE"}
    env |= {"WANDB_API_KEY": "f" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}  # port 9: nothing listens
    runs = tmp_path / "runs"
    argv = [str(EXE), "train", *RUN, "budget=2e9", f"runs_dir={runs}", "tracker.wandb.mode=auto"]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if "127.0.0.1:9 is not reachable" in line]
    assert len(said) == 1 and "logs offline" in said[0], done.stderr[-3000:]
    assert "W&B disabled" not in done.stderr
    (run_dir,) = runs.glob("smoke/*/")
    assert len(list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert elapsed < 50, elapsed  # the online attempt alone took ~60 s


def offline_in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """W&B offline for an in-process call, writing only under tmp_path."""
    for key, value in offline_env(tmp_path).items():
        if key.startswith("WANDB_") or key == "HOME":
            monkeypatch.setenv(key, value)


def artifact_manifest(run_dir: Path) -> dict[str, int]:
    """{name: size} of the analysis artifact recorded in an offline W&B run folder."""
    (wandb_file,) = run_dir.glob("run-*.wandb")
    for record in wandb_records(wandb_file):
        if record.WhichOneof("record_type") == "artifact" and record.artifact.type == "analysis":
            return {entry.path: entry.size for entry in record.artifact.manifest.contents}
    raise AssertionError("no artifact record")


def test_the_analysis_artifact_holds_the_analysis_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fixtures_results import make_sweep

    from modexp.analysis.study import analyze
    from modexp.tracking import log_study

    sweep = make_sweep(tmp_path / "runs", budgets=(1e11, 3e11), n_sizes=4, unbracketed_budget=None)
    run = next(p for p in sweep.iterdir() if (p / "summary.json").exists())
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"\\0" * 4096)  # what the old artifact took along
    result = analyze(sweep, n_boot=20, figure_formats="png")
    offline_in_process(monkeypatch, tmp_path)
    log_study(result, sweep, mode="offline")
    __import__("wandb").teardown()  # the service writes the .wandb file: let it finish
    assert "W&B analysis artifact:" in capsys.readouterr().err
    (wandb_run,) = (sweep / "wandb").glob("offline-run-*-analysis-*")
    names = artifact_manifest(wandb_run)
    assert {"results.parquet", "fits.csv", "verdict.csv", "summary.txt"} <= set(names)
    assert any(n.startswith("figures/") and n.endswith(".png") for n in names)
    assert not [n for n in names if n.endswith(".pt") or "/" in n and not n.startswith("figures/")]


def test_wandb_ids_stay_when_the_study_folder_moves(tmp_path: Path) -> None:
    run_id = "baseline-d64-l4-1e12-0123456789"
    before = wandb_identity(tmp_path / "runs" / "study" / run_id, run_id)
    (tmp_path / "elsewhere").mkdir()
    os.replace(tmp_path / "runs" / "study", tmp_path / "elsewhere" / "study")
    assert wandb_identity(tmp_path / "elsewhere" / "study" / run_id, run_id) == before
    other = wandb_identity(tmp_path / "runs" / "study" / run_id, run_id)  # a new study at the old path
    assert other[0] != before[0]


def test_wandb_charts_default_to_flops_and_both_losses_keep_their_minimum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modexp.tracking import WandbMirror, study_wandb_settings

    offline_in_process(monkeypatch, tmp_path)
    settings = study_wandb_settings(None)  # conf/'s defaults
    run_dir = tmp_path / "study" / "baseline-d16-l2-1e10-0123456789"
    run_dir.mkdir(parents=True)
    mirror = WandbMirror(run_dir, run_dir.name, settings, "smoke", "baseline", {})
    mirror.log_record({"kind": "val", "step": 1, "flops": 1e9, "val_loss": 2.5, "val_loss_causal": 2.6})
    mirror.finish(None, 0)
    __import__("wandb").teardown()
    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    metrics = {
        r.metric.name or r.metric.glob_name: r.metric
        for r in wandb_records(wandb_file)
        if r.WhichOneof("record_type") == "metric"
    }
    assert metrics["train/*"].step_metric == "flops" and metrics["val/*"].step_metric == "flops"
    for loss in ("val/loss", "val/loss_causal"):
        assert metrics[loss].step_metric == "flops" and metrics[loss].summary.min


def test_a_service_address_left_by_a_gone_service_does_not_disable_a_runs_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process inherits WANDB_SERVICE from a parent whose W&B service has since ended (a notebook's, a
    killed sweep's): the run still logs, through a service of its own."""
    from modexp.tracking import WandbMirror, study_wandb_settings

    offline_in_process(monkeypatch, tmp_path)
    monkeypatch.setenv("WANDB_SERVICE", f"3-{os.getpid()}-unix-{tmp_path / 'gone.sock'}")
    run_dir = tmp_path / "study" / "baseline-d16-l2-1e10-0123456789"
    run_dir.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "W&B disabled for this run" would fail here
        mirror = WandbMirror(run_dir, run_dir.name, study_wandb_settings(None), "smoke", "baseline", {})
    assert mirror.run is not None
    mirror.finish(None, 0)
    __import__("wandb").teardown()
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def test_wandb_takes_its_project_entity_and_tags_from_the_environment_unless_the_config_sets_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WANDB_PROJECT, WANDB_ENTITY and WANDB_TAGS as W&B documents them; a value given in the config wins.
    The run config reaches W&B flat: model.capacity, not config.config.model.capacity."""
    from modexp.config import compose_config, to_typed
    from modexp.tracking import WandbMirror

    monkeypatch.setenv("WANDB_PROJECT", "myproj")
    monkeypatch.setenv("WANDB_ENTITY", "myteam")
    monkeypatch.setenv("WANDB_TAGS", "first, second")
    settings = to_typed(compose_config(["sweep=smoke"], export=False)).tracker.wandb
    assert (settings.project, settings.entity) == ("myproj", "myteam")
    given = to_typed(
        compose_config(["sweep=smoke", "tracker.wandb.project=mine"], export=False)
    ).tracker.wandb
    assert (given.project, given.entity) == ("mine", "myteam")
    monkeypatch.delenv("WANDB_PROJECT")
    monkeypatch.delenv("WANDB_ENTITY")
    plain = to_typed(compose_config(["sweep=smoke"], export=False)).tracker.wandb
    assert (plain.project, plain.entity) == ("modexp", None)

    offline_in_process(monkeypatch, tmp_path)
    run_dir = tmp_path / "study" / "mod_c0.125_e2-d16-l4-1e10-0123456789"
    run_dir.mkdir(parents=True)
    config = {"model": {"capacity": 0.125, "routing": "topk"}, "run": {"params": 7670}}
    WandbMirror(run_dir, run_dir.name, settings, "smoke", "mod", config).finish(None, 0)
    __import__("wandb").teardown()
    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = list(wandb_records(wandb_file))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "myproj" and run.entity == "myteam"
    assert {"first", "second", "mod", "smoke"} <= set(run.tags)
    keys = {item.key for r in records if r.WhichOneof("record_type") == "config" for item in r.config.update}
    keys |= {item.key for item in run.config.update}
    assert {"model.capacity", "model.routing", "run.params"} <= keys, keys
    assert not [k for k in keys if k in ("config", "model", "run")], keys
