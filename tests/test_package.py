"""One installed package: the wheel holds `c360` alone, and the installed project imports as `c360.*` from any
folder, never as the generic top-level names of its folders."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_c360_alone(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "uv", "build", "--wheel", "--out-dir", str(tmp_path), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = tmp_path.glob("c360-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"c360"}
    for layer in ("core", "features", "feature_repo", "training", "serving", "cli"):
        assert f"c360/{layer}/__init__.py" in names
    assert "c360/serving/static/profile.html" in names
    assert {"c360/mappings/stripe.yaml", "c360/mappings/hubspot.yaml"} <= set(names)


@pytest.mark.parametrize(("statement", "works"), [
    ("import c360.features.store, c360.training.tracking, c360.serving.service", True),
    ("import features", False), ("import training", False), ("import serving", False), ("import feature_repo", False),
])
def test_imports_from_any_folder(tmp_path: Path, statement: str, works: bool) -> None:
    result = subprocess.run([sys.executable, "-c", statement], cwd=tmp_path, capture_output=True, text=True,
                            check=False)
    assert (result.returncode == 0) == works, result.stderr[-2000:]
