"""`make bento` (bentofile.yaml): `bentoml build` makes a Bento of the service, which `bentoml list` shows."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_make_bento_builds_the_service(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make not found")
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "True"}
    built = subprocess.run(["make", "bento"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    listed = subprocess.run([sys.executable, "-m", "bentoml", "list", "-o", "yaml"], env=env, capture_output=True,
                            text=True, timeout=120, check=True)
    (bento,) = yaml.safe_load(listed.stdout)
    name, version = bento["tag"].split(":")
    folder = tmp_path / "bentos" / name / version
    served = yaml.safe_load((folder / "bento.yaml").read_text())
    assert name == "c360" and served["service"] == "c360.serving.service:C360"
    assert {"profile", "predict_churn", "predict_clv", "predict_nba"} <= {r["name"] for r in served["schema"]["routes"]}
    assert (folder / "env" / "python" / "wheels" / "c360-0.1.0-py3-none-any.whl").exists()
