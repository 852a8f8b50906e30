"""The champions load through MLflow's standard loader in a fresh process started outside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd

from c360.core.settings import Settings
from c360.training import tracking
from c360.training.specs import MODELS as SPECS
from c360.training.tracking import CHAMPION

MODELS = tuple(spec.name for spec in SPECS.values())
# Scores each champion's own input example; says whether anything imported the repository's top-level folders.
SCRIPT = """
import json, sys
import mlflow, pandas as pd
scores = {}
for name in sys.argv[1:]:
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    scores[name] = pd.DataFrame(model.predict(model.input_example)).to_dict(orient="list")
print(json.dumps({"scores": scores, "top_level": sorted({"training", "serving", "features"} & set(sys.modules))}))
"""


def _scores(served: Settings, name: str) -> dict:
    model, version = tracking.load_model(name, CHAMPION, "pyfunc", home=served.home)
    example = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}").input_example
    return pd.DataFrame(model.predict(example)).to_dict(orient="list")


def test_the_champions_load_in_a_fresh_process_outside_the_repository(served: Settings, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "C360_HOME", "MLFLOW_REGISTRY_URI"}}  # an earlier test's, exported by MLflow
    env["MLFLOW_TRACKING_URI"] = tracking.tracking_uri(served.home)
    done = subprocess.run([sys.executable, "-c", SCRIPT, *MODELS], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["top_level"] == []
    assert result["scores"] == json.loads(json.dumps({name: _scores(served, name) for name in MODELS}))
