"""The variant registry (modexp/variants.py): modexp's own kinds, and a plug-in kind from one module + preset."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from modexp import variants
from modexp.cli import main
from modexp.errors import ModexpError
from modexp.variants import base as registry

TESTS = Path(__file__).resolve().parent
PRESETS = TESTS / "presets"


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch):
    """The toy plug-in on the path of this process and of the runs it starts; the registry (the only state a
    registration changes) restored after."""
    kinds = dict(registry._REGISTRY)
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}:{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("MODEXP_CONFIG_DIR", str(PRESETS))
    yield
    sys.modules.pop("toy_variant", None)
    registry._REGISTRY.clear()
    registry._REGISTRY.update(kinds)


def test_every_model_setting_pair_is_one_kind_and_its_id_reads_back() -> None:
    for kind in variants.kinds():
        record = variants.get(kind)
        model = variants.model_config(**record.settings)
        assert variants.of_model(model) is record and isinstance(model, record.config)
        assert variants.of_id(record.name(model)) is record
        assert variants.label(record.name(model)) is not None


def test_unknown_kinds_are_one_line_errors_naming_the_kinds() -> None:
    with pytest.raises(ModexpError, match="choose from baseline, mod, random"):
        variants.get("nope")
    with pytest.raises(ModexpError, match="is no variant kind"):
        variants.of_model(variants.settings_class()(routing="random", moe=True))


def test_the_toy_plugin_is_named_nowhere_in_modexp() -> None:
    package = Path(variants.__file__).parent.parent
    for word in ("deeprouter", "toy_variant", "router_hidden"):
        assert not [p for p in package.rglob("*.py") if word in p.read_text()]
        assert not [p for p in package.rglob("*.yaml") if word in p.read_text()]


def test_a_plugin_variant_plans_trains_analyses_samples_and_exports(
    toy, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One new module (tests/toy_variant.py: a learned two-layer router, its own block class, its own setting,
    parameter and FLOP counts) and one preset (tests/presets/sweep/toy.yaml), nothing else."""
    runs = tmp_path / "runs"
    assert main(["plan", "sweep=toy", f"runs_dir={runs}", "model.router_hidden=8", "--format", "json"]) == 0
    planned = pd.DataFrame(json.loads(capsys.readouterr().out))
    assert set(planned["variant"]) == {"baseline", "deeprouter_c0.125_e2_h8"}

    assert main(["sweep", "sweep=toy", f"runs_dir={runs}", "launcher.workers=2"]) == 0
    capsys.readouterr()
    study = runs / "toy"
    results = pd.read_csv(study / "results.csv")
    toy_runs = results[results["variant"] == "deeprouter_c0.125_e2_h16"]
    assert len(toy_runs) == 2 and (toy_runs["routing"] == "deep").all()
    assert (toy_runs["router_hidden"] == 16).all()  # its own setting is recorded with the run
    # Its router is learned and top-k is not causal: both losses exist, from the predictor's decision.
    assert toy_runs["val_loss_causal"].notna().all() and (toy_runs["causal_router"] == "predictor").all()
    verdict = pd.read_csv(study / "verdict.csv")
    assert set(zip(verdict["curve"], verdict["reference"])) == {("deeprouter_c0.125_e2_h16", "baseline")}
    assert (study / "plots" / "isoflop.png").exists()

    from modexp.analysis.figures import variant_label

    assert variant_label("deeprouter_c0.125_e2_h16") == "MoD 12.5%, every 2nd block, 16-wide MLP router"

    # A standalone `modexp analyze DIR` in a process that never imported the plug-in: the runs' config.yaml
    # names it, but a study folder is data: the plug-in is named in a note, its curve analysed by its id ...
    sys.modules.pop("toy_variant", None)
    registry._REGISTRY.pop("deeprouter", None)
    assert "MODEXP_PLUGINS" not in os.environ  # the sweep named it to its own processes only
    assert variants.label("deeprouter_c0.125_e2_h16") is None
    capsys.readouterr()
    assert main(["analyze", str(study), "--out", str(tmp_path / "again"), "--wandb", "disabled"]) == 0
    assert "--plugins toy_variant" in capsys.readouterr().out
    assert "toy_variant" not in sys.modules and variants.label("deeprouter_c0.125_e2_h16") is None
    again = pd.read_csv(tmp_path / "again" / "verdict.csv")
    assert set(zip(again["curve"], again["reference"])) == {("deeprouter_c0.125_e2_h16", "baseline")}
    # Sampling and export build it through the registry, once the user names it: its own block class, with its
    # router's weights.
    run = study / toy_runs["run_id"].iloc[0]
    assert main(["sample", str(run), "--max-new-tokens", "8"]) == 2
    assert "--plugins toy_variant" in capsys.readouterr().err
    sample = ["sample", str(run), "--plugins", "toy_variant", "--max-new-tokens", "8", "--show-routing"]
    assert main(sample) == 0
    assert "block 1: " in capsys.readouterr().out
    assert main(["export", str(run), "--plugins", "toy_variant", "--out", str(tmp_path / "export")]) == 0
    from modexp.export import load_export

    model = load_export(tmp_path / "export")
    assert type(model.blocks[1]).__name__ == "DeepRoutedBlock" and len(model.blocks[1].router) == 3
    # ... and the study is labelled as at the sweep's end once the user names it, in the figures too: their
    # workers fork with the plug-in's kinds already registered.
    from modexp.analysis import figure_pool

    at_fork = []
    start = figure_pool.start
    monkeypatch.setattr(
        figure_pool, "start", lambda: (at_fork.append(variants.label("deeprouter_c0.125_e2_h16")), start())
    )
    assert main(["analyze", str(study), "--out", str(tmp_path / "named"), "--plugins", "toy_variant"]) == 0
    assert at_fork == ["MoD 12.5%, every 2nd block, 16-wide MLP router"]
    assert variants.label("deeprouter_c0.125_e2_h16") == "MoD 12.5%, every 2nd block, 16-wide MLP router"


def test_a_plugin_kinds_counts_match_the_counter(toy) -> None:
    """Its parameters and FLOPs, as its config counts them, are what the model it builds has and does."""
    import toy_variant  # noqa: F401
    from helpers import assert_counts_match

    for causal_router in ("predictor", "aux_loss", "none"):
        assert_counts_match(
            variants.model_config(routing="deep", router_hidden=5, causal_router=causal_router)
        )


def test_register_refuses_a_kind_that_routes_nothing(toy) -> None:
    """A kind registered as the recipe says, but whose config routes no block, would train a dense model under
    its own name: refused at registration, in one line."""
    from dataclasses import dataclass

    @dataclass
    class Nothing(variants.ModelConfig):
        routing: str = "nothing"

    class NoRoute(variants.Variant):
        kind, routing, tag, config = "noroute", "nothing", "nor", Nothing

    with pytest.raises(ModexpError, match="would train no routed block"):
        variants.register(NoRoute)

    @dataclass
    class Clash(variants.MoDConfig):
        capacity: int = 3  # MoD's capacity is a float with another default

    class Clashing(variants.Variant):
        kind, routing, tag, config = "clashing", "clash", "cla", Clash

    with pytest.raises(ModexpError, match="setting capacity .* clashes with kind mod"):
        variants.register(Clashing)
    assert "noroute" not in variants.kinds() and "clashing" not in variants.kinds()
