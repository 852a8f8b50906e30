"""`c360 refresh` as cron runs it, in real processes over copies of the served home (3,000 customers, a champion
of each model): twice in a row the second does nothing; a new month of exports gives the new snapshot and new scores;
a run killed midway and run again ends as the uninterrupted run did; one run at a time; a failing step is one line
naming it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from c360.cli.main import app
from c360.cli.refresh import not_due
from c360.core import locks
from c360.core.settings import Settings
from c360.features import store
from c360.features.advance import advance
from c360.features.refresh import State
from c360.features.refresh import path as state_path
from c360.training.specs import MODELS
from tests.conftest import copy_home
from tests.serving.conftest import promote_all, served  # noqa: F401  (the served home, a session fixture)

STEPS = ["ingest", "resolve", "build", "materialize", "train", "promote", "score", "purge", "monitor"]


def _home(served: Settings, root: Path) -> Settings:  # noqa: F811
    """A copy of the served home (its Feast registry applied again to point at the copy)."""
    s = Settings(home=root / "home")
    copy_home(served.home, s.home, symlinks=True)
    promote_all(s.home)  # whatever a test before this one left as @champion
    store.apply(s)
    return s


def _env(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "C360_"))}
    return env | {"C360_HOME": str(s.home)}


def _command(source: Path) -> list[str]:
    return [sys.executable, "-m", "c360.cli", "refresh", "--source", str(source), "--json"]


def _refresh(s: Settings, source: Path, **env: str) -> tuple[dict, str, float]:
    """`c360 refresh --source SOURCE --json` in its own process: its document, its stderr and its wall time."""
    started = time.monotonic()
    done = subprocess.run(_command(source), env=_env(s) | env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout), done.stderr, time.monotonic() - started


def _status(result: dict) -> dict[str, str]:
    return {step["step"]: step["status"] for step in result["steps"]}


def _figures(result: dict, step: str) -> dict:
    return next(s["figures"] for s in result["steps"] if s["step"] == step)


@pytest.fixture(scope="module")
def month(resolved: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the generated world with its next four weeks beside its files, as `c360 advance --weeks 4` writes
    them: the snapshot tables whole (they are made from the last export in the folder), the others' new rows. A copy,
    as advancing writes its ground truth beside the world's and the next advance would carry on from there."""
    world = tmp_path_factory.mktemp("month") / "world"
    shutil.copytree(resolved[1], world)
    advance(world, 4, out=world)
    return world


@pytest.fixture(scope="module")
def uninterrupted(served: Settings, resolved: tuple[Path, Path], month: Path,  # noqa: F811
                  tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One home refreshed three times: on the exports it was built from, again at once, then on the new month."""
    s = _home(served, tmp_path_factory.mktemp("refresh"))
    first = _refresh(s, resolved[1])
    before = store.snapshot_dates(s)
    again = _refresh(s, resolved[1])
    new = _refresh(s, month)
    return {"s": s, "first": first[0], "again": again, "before": before, "month": new[0]}


def test_a_second_run_does_nothing_and_says_so(uninterrupted: dict) -> None:
    first, (again, said, seconds) = uninterrupted["first"], uninterrupted["again"]
    assert [step["step"] for step in again["steps"]] == STEPS
    assert _status(first)["ingest"] == "done" and _figures(first, "ingest")["files"] == 0  # every file known
    assert _status(first)["train"] == "skipped"  # the champions were trained minutes ago
    assert set(_status(again).values()) == {"skipped"}
    notes = {step["step"]: step["note"] for step in again["steps"] if step["status"] == "skipped"}
    assert notes.pop("train").startswith("not due: trained")
    assert set(notes.values()) == {"nothing new"}
    assert again["changed"] is False
    assert "ingest: skipped: nothing new" in said
    assert seconds < 60


def test_a_new_month_gives_the_new_snapshot_and_scores(uninterrupted: dict) -> None:
    s, result, before = uninterrupted["s"], uninterrupted["month"], uninterrupted["before"]
    status = _status(result)
    assert {status[step] for step in ("ingest", "resolve", "build", "materialize", "score")} == {"done"}
    assert _figures(result, "ingest")["files"] > 0 and _figures(result, "ingest")["accepted"] > 0
    dates = store.snapshot_dates(s)
    assert len(dates) == len(before) + 1 and dates[-1] == before[-1] + pd.Timedelta(weeks=4)
    latest = store.read_snapshot(s, dates[-1])
    score = _figures(result, "score")
    assert score["as_of"] == f"{dates[-1]:%Y-%m-%d}" and score["customers"] == len(latest)
    assert len(pd.read_parquet(Path(score["folder"]) / "wide")) == len(latest)
    state = state_path(s).read_text()
    assert "@" not in state and "@" not in s.runs.read_text()  # counts and hashes, no e-mail address


def test_a_run_killed_midway_and_run_again_ends_as_an_uninterrupted_one(
        served: Settings, month: Path, uninterrupted: dict, tmp_path: Path) -> None:  # noqa: F811
    s = _home(served, tmp_path)
    process = subprocess.Popen(_command(month), env=_env(s), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    assert process.stderr is not None
    for line in process.stderr:  # killed as soon as the materialize step starts
        if line.startswith("refresh materialize ("):
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.stderr.read()
    assert process.wait() == -signal.SIGKILL
    assert set(json.loads(state_path(s).read_text())) == {"ingest", "resolve", "build"}

    result, _, _ = _refresh(s, month)
    status = _status(result)
    assert [status[step] for step in ("ingest", "resolve", "build")] == ["skipped"] * 3
    assert status["materialize"] == status["score"] == "done"
    reference = uninterrupted["s"]
    assert store.snapshot_dates(s) == store.snapshot_dates(reference)
    latest = store.snapshot_dates(s)[-1]
    pd.testing.assert_frame_equal(store.read_snapshot(s, latest), store.read_snapshot(reference, latest))
    score, expected = _figures(result, "score"), _figures(uninterrupted["month"], "score")
    assert (score["as_of"], score["customers"]) == (expected["as_of"], expected["customers"])
    assert len(pd.read_parquet(Path(score["folder"]) / "wide")) == len(pd.read_parquet(Path(expected["folder"]) /
                                                                                       "wide"))


def test_training_waits_for_its_schedule_or_for_monitoring(served: Settings) -> None:  # noqa: F811
    assert not_due(served, State(served)).startswith("not due: trained")
    assert not_due(served.model_copy(update={"retrain_days": 0}), State(served)) is None
    act = State(served)
    act.steps["monitor"] = {"figures": {"worst": "act"}}
    assert not_due(served, act) is None


def test_one_run_at_a_time(home: Path, tmp_path: Path) -> None:
    with locks.job(Settings(), "refresh"):
        result = CliRunner().invoke(app, ["refresh", "--source", str(tmp_path), "--json"])
    assert result.exit_code == 1
    assert "another refresh is running" in json.loads(result.stdout)["error"]
    assert not state_path(Settings()).exists()


def test_a_failing_step_is_one_line_naming_it(home: Path, tmp_path: Path) -> None:
    (tmp_path / "crm").mkdir()
    (tmp_path / "crm" / "accounts.csv").write_text("name\nAcme\n")  # required columns missing
    result = CliRunner().invoke(app, ["refresh", "--source", str(tmp_path), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error.startswith("refresh step ingest failed: ") and "accounts.csv" in error
    assert "Traceback" not in result.stderr
    assert not state_path(Settings()).exists()  # nothing recorded: the next run tries the step again


def test_a_missing_landing_folder_is_refused(home: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["refresh", "--source", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "no such folder of exports" in result.stderr


def test_when_training_is_due_challengers_are_trained_gated_and_scored(uninterrupted: dict, month: Path) -> None:
    s = uninterrupted["s"]
    result, _, _ = _refresh(s, month, C360_RETRAIN_DAYS="0")
    status = _status(result)
    assert status["train"] == "done" and status["promote"] == "done"
    trained, gated = _figures(result, "train"), _figures(result, "promote")
    assert set(trained) == set(gated) == set(MODELS)
    assert all(gated[kind]["challenger"] == trained[kind]["version"] > 1 and gated[kind]["reasons"]
               for kind in trained)
    promoted = any(decision["promoted"] for decision in gated.values())
    assert status["score"] == ("done" if promoted else "skipped")
