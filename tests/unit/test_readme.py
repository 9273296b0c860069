"""The README stays true: every setting is listed, and it opens with the two commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.settings import Settings

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_listed_in_the_readme(name: str) -> None:
    assert f"`LEDGER_{name.upper()}`" in README


def test_the_readme_opens_with_the_run_and_test_commands() -> None:
    opening = README.split("\n## ", 1)[0]

    assert "ledger up" in opening
    assert "scripts/check" in opening
