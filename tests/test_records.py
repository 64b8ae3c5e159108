"""The run's records: summary.json's schema (modexp.summary), shared by its writer and the analysis."""

from __future__ import annotations

from modexp.analysis import points
from modexp.config import compose_config, to_typed
from modexp.distributed import SINGLE
from modexp.plan import single_run
from modexp.records import run_summary
from modexp.step import StepPlan
from modexp.summary import IDENTITY, MEASURED, NOT_SETTINGS, OUTCOMES, SETTINGS


def test_the_summary_writes_every_key_its_schema_names() -> None:
    cfg = to_typed(compose_config(["sweep=smoke", "budget=2e9", "model.d_model=16", "model.n_heads=2"]))
    spec = single_run(cfg)
    meta = {"device": "cpu", "parallel": "none", "estimated_peak_gb": None}
    row = run_summary(
        cfg, spec, StepPlan(None, False, False, None), meta, {"val_loss": 2.0}, 1.0, [0.1], (0.1, "cpu_max_rss"),
        "fingerprint", SINGLE, 3,
    )  # fmt: skip
    missing = (set(SETTINGS) | set(OUTCOMES) | set(IDENTITY) | set(MEASURED)) - set(row)
    assert not missing
    assert row["val_loss"] == 2.0 and row["val_loss_causal"] is None and row["warmup_steps"] == 3
    assert not set(SETTINGS) & NOT_SETTINGS
    assert all(key.startswith("val_") for key in OUTCOMES)  # the analysis reads val_* as outcomes


def test_the_analysis_reads_the_same_schema() -> None:
    assert points.SETTING_COLUMNS is SETTINGS
    assert NOT_SETTINGS <= points.NOT_SETTINGS
