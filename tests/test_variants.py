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
from modexp.model import ModelConfig
from modexp.model import config as model_config

TESTS = Path(__file__).resolve().parent
PRESETS = TESTS / "presets"


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch):
    """The toy plug-in on the path of this process and of the runs it starts; the registry restored after."""
    registry, routings, skipping = (
        dict(variants._REGISTRY),
        list(model_config.ROUTINGS),
        set(model_config.SKIPPING_ROUTINGS),
    )
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}:{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("MODEXP_CONFIG_DIR", str(PRESETS))
    yield
    sys.modules.pop("toy_variant", None)
    variants._REGISTRY.clear()
    variants._REGISTRY.update(registry)
    model_config.ROUTINGS[:] = routings
    model_config.SKIPPING_ROUTINGS.clear()
    model_config.SKIPPING_ROUTINGS.update(skipping)


def test_every_model_setting_pair_is_one_kind_and_its_id_reads_back() -> None:
    for kind in variants.kinds():
        record = variants.get(kind)
        model = ModelConfig(**record.settings)
        assert variants.of_model(model) is record
        assert variants.of_id(record.name(model)) is record
        assert variants.label(record.name(model)) is not None


def test_unknown_kinds_are_one_line_errors_naming_the_kinds() -> None:
    with pytest.raises(ModexpError, match="choose from baseline, mod, random"):
        variants.get("nope")
    with pytest.raises(ModexpError, match="is no variant kind"):
        variants.of_model(ModelConfig(routing="random", moe=True))


def test_the_toy_plugin_is_named_nowhere_in_modexp() -> None:
    package = Path(variants.__file__).parent
    assert not [p for p in package.rglob("*.py") if "strided" in p.read_text()]
    assert not [p for p in package.rglob("*.yaml") if "strided" in p.read_text()]


def test_a_plugin_variant_plans_trains_analyses_and_is_labelled(toy, tmp_path: Path, capsys) -> None:
    """One new module (tests/toy_variant.py) and one preset (tests/presets/sweep/toy.yaml), nothing else."""
    runs = tmp_path / "runs"
    assert main(["plan", "sweep=toy", f"runs_dir={runs}", "--format", "json"]) == 0
    planned = pd.DataFrame(json.loads(capsys.readouterr().out))
    assert set(planned["variant"]) == {"baseline", "strided_c0.125_e2"}

    assert main(["sweep", "sweep=toy", f"runs_dir={runs}", "launcher.workers=2"]) == 0
    study = runs / "toy"
    results = pd.read_csv(study / "results.csv")
    strided = results[results["variant"] == "strided_c0.125_e2"]
    assert len(strided) == 2 and (strided["routing"] == "strided").all()
    # Its fixed rule is causal, so both losses exist and agree, and the routed blocks took capacity's share.
    assert strided["val_loss_causal"].notna().all()
    assert (strided["val_loss_causal"] - strided["val_loss"]).abs().max() < 1e-6
    verdict = pd.read_csv(study / "verdict.csv")
    assert set(zip(verdict["curve"], verdict["reference"])) == {("strided_c0.125_e2", "baseline")}
    assert (study / "plots" / "isoflop.png").exists()

    from modexp.analysis.figures import variant_label

    assert variant_label("strided_c0.125_e2") == "MoD 12.5%, every 2nd block, every n-th token"

    # A standalone `modexp analyze DIR` in a process that never imported the plug-in: the runs' config.yaml
    # names it, but a study folder is data: the plug-in is named in a note, its curve analysed by its id ...
    sys.modules.pop("toy_variant", None)
    variants._REGISTRY.pop("strided", None)
    assert "MODEXP_PLUGINS" not in os.environ  # the sweep named it to its own processes only
    assert variants.label("strided_c0.125_e2") is None
    capsys.readouterr()
    assert main(["analyze", str(study), "--out", str(tmp_path / "again"), "--wandb", "disabled"]) == 0
    assert "--plugins toy_variant" in capsys.readouterr().out
    assert "toy_variant" not in sys.modules and variants.label("strided_c0.125_e2") is None
    again = pd.read_csv(tmp_path / "again" / "verdict.csv")
    assert set(zip(again["curve"], again["reference"])) == {("strided_c0.125_e2", "baseline")}
    # ... and labelled as at the sweep's end once the user names it.
    assert main(["analyze", str(study), "--out", str(tmp_path / "named"), "--plugins", "toy_variant"]) == 0
    assert variants.label("strided_c0.125_e2") == "MoD 12.5%, every 2nd block, every n-th token"
