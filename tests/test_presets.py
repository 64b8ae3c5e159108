"""A user's own presets (issue 26): the getting-started example (docs/getting-started.md) composes as written; a mistake inside a preset names
the file and the key; `~key` deletions are one clear line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import run_main

ROOT = Path(__file__).resolve().parent.parent


def readme_preset() -> tuple[str, str]:
    """(path under DIR, text) of the custom-preset example in docs/getting-started.md."""
    block = re.search(
        r"```yaml\n# DIR/(\S+), used as: [^\n]*\n(.*?)```",
        (ROOT / "docs" / "getting-started.md").read_text(),
        re.S,
    )
    assert block, "the custom-preset example of docs/getting-started.md"
    return block.group(1).rstrip(","), block.group(2)


def test_the_readme_preset_composes_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modexp.config import compose_config

    name, text = readme_preset()
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / name).write_text(text)
    monkeypatch.setenv("MODEXP_CONFIG_DIR", str(tmp_path))
    cfg = compose_config([f"sweep={Path(name).stem}"])
    assert cfg.sweep.name == "mine" and list(cfg.sweep.budgets) == [1e10, 2e10]
    assert cfg.sweep.variants == compose_config(["sweep=smoke"]).sweep.variants  # the rest from smoke


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("budgetz: [1e10]", "sweep.budgetz is not a modexp setting: did you mean sweep.budgets?"),
        ("budgets: [abc]", "sweep.budgets=abc is not allowed: sweep.budgets expects a number"),
    ],
)
def test_a_mistake_inside_a_preset_names_the_file_and_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, expected: str
) -> None:
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "bad.yaml").write_text(f"defaults: [smoke]\n{body}\n")
    rc, _, err = run_main(["plan", "--config-dir", str(tmp_path), "sweep=bad"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"in {tmp_path / 'sweep' / 'bad.yaml'}: {expected}" in err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("~train.lr", "~train.lr: a modexp setting cannot be deleted; set it instead (train.lr=VALUE"),
        ("~train.lr_from", "~train.lr_from: a modexp setting cannot be deleted"),  # null: Hydra says absent
        ("~train.lrr", "train.lrr is not a modexp setting: did you mean train.lr?"),
    ],
)
def test_deletions_are_one_clear_line(
    capsys: pytest.CaptureFixture[str], override: str, expected: str
) -> None:
    rc, _, err = run_main(["plan", "sweep=smoke", override], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
