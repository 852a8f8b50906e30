"""Shared fixtures: one small generated company per test session, and a private C360_HOME per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.generate import generate

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("C360_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="session")
def company(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 customers, 2 % of rows faulty: the acceptance example of the foundation issue."""
    out = tmp_path_factory.mktemp("company")
    generate(out, 2000, seed=7, corrupt_rate=0.02)
    return out


@pytest.fixture(scope="session")
def clean_company(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A larger fault-free company for statistical checks of the ground truth."""
    out = tmp_path_factory.mktemp("clean")
    generate(out, 8000, seed=11)
    return out
