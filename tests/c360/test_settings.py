"""Settings: environment variables win over the YAML file named by C360_CONFIG, which wins over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from c360.core.settings import Settings


def test_yaml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c360.yaml"
    config.write_text("customers: 77\nseed: 3\nonline_store: sqlite\n")
    monkeypatch.setenv("C360_CONFIG", str(config))
    monkeypatch.setenv("C360_CUSTOMERS", "5")
    s = Settings()
    assert (s.customers, s.seed, s.online_store) == (5, 3, "sqlite")


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("C360_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        Settings()


def test_all_state_lives_under_home(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    for path in (s.warehouse, s.generated, s.runs, s.identity_model, s.feast, s.snapshots):
        assert tmp_path in path.parents


def test_the_readme_lists_every_setting() -> None:
    table = (Path(__file__).resolve().parents[2] / "README.md").read_text().split("| setting | env | default |")[1]
    rows = table.split("\n\n")[0]
    missing = [name for name in Settings.model_fields if f"`C360_{name.upper()}`" not in rows]
    assert not missing, f"settings missing from README's table: {missing}"
