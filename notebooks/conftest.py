"""Notebooks run under nbmake (`make test`); one that needs something absent skips with the reason instead."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_DATA = ROOT.parent / "shared" / "data"


def _file_missing(path: Path) -> str | None:
    return None if path.exists() else f"public data {path} not found (see ../shared/data/README.md)"


NEEDS = {
    "03_clv_cdnow.ipynb": lambda: _file_missing(PUBLIC_DATA / "cdnow" / "CDNOW_sample.txt"),
    "04_nba_hillstrom.ipynb": lambda: _file_missing(PUBLIC_DATA / "hillstrom" / "hillstrom.csv"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.suffix == ".ipynb" and (need := NEEDS.get(item.path.name)) and (reason := need()):
            item.add_marker(pytest.mark.skip(reason=reason))

