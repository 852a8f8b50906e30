"""Shared fixtures: one small generated company per test session, and a private C360_HOME per test."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import duckdb
import pytest

from c360.features import identity
from c360.features.generate import generate
from c360.features.ingest import ingest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The files that take minutes under `make test` (its --durations), longest first. `make test` hands whole files to
# two workers in collection order (`--dist loadfile --no-loadscope-reorder`); a worker takes the next file when it
# is nearly done with its own, so these go first and the quick files fill in at the end. Left to the default order
# the notebooks came last and one worker ran three of them in a row while the other idled.
LONGEST_FIRST = [
    "tests/test_demo_size.py",
    "tests/c360/test_refresh_cli.py",
    "notebooks/07_monitoring.ipynb",
    "tests/features/test_spark_features.py",
    "notebooks/06_campaigns.ipynb",
    "tests/features/test_spark_identity.py",
    "tests/c360/test_cli.py",
    "tests/features/test_campaigns.py",
    "tests/training/test_generic.py",
    "tests/serving/test_table_models.py",
    "tests/training/test_pipeline.py",
    "tests/serving/test_redis.py",
    "tests/serving/test_monitor.py",
    "tests/features/test_stewardship.py",
    "tests/serving/test_events.py",
    "notebooks/02_churn_models.ipynb",
    "tests/serving/test_batch.py",
    "notebooks/05_batch_scores.ipynb",
    "tests/training/test_spark_training.py",
    "tests/training/test_fairness.py",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files of LONGEST_FIRST first, in its order; the others after them, as collected."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name` that `build(folder)` filled, built once per `pytest` run: under xdist the first worker to
    ask builds it and the other waits for it (on 2 cores a second build of the same company takes a core from the
    tests). What it holds is shared: a test that changes it works on a copy."""
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder, built = root / name, root / f"{name}.built"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed halfway, in the other worker
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


def copy_sqlite(source: Path | str, target: Path | str) -> None:
    """SQLite's online backup: the source's last commit whole, WAL included, whatever else uses it meanwhile; the
    target stays valid for connections open on it (copying files would not)."""
    with closing(sqlite3.connect(source)) as old, closing(sqlite3.connect(target)) as new:
        old.backup(new)


def copy_home(source: Path, target: Path, *, symlinks: bool = False) -> None:
    """`shutil.copytree`, safe while a process of the run still uses a SQLite file under `source`: the online
    store's checkpoint thread, left running by the last write, closes its connection when done, and SQLite then
    deletes the -wal and -shm files, under a plain copy's feet. Each SQLite database is copied by `copy_sqlite`;
    its -wal and -shm files are left out."""
    def copy(src: str, dst: str) -> None:
        with open(src, "rb") as f:
            sqlite = f.read(16) == b"SQLite format 3\x00"
        if not sqlite:
            shutil.copy2(src, dst)
            return
        copy_sqlite(src, dst)
        shutil.copystat(src, dst)  # owner-only stays owner-only

    shutil.copytree(source, target, symlinks=symlinks, copy_function=copy,
                    ignore=shutil.ignore_patterns("*-wal", "*-shm"))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server from Debian on a free local port, its files in a temp folder, for the session: its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        else:
            pytest.fail(f"redis-server did not answer on port {port} within 10 s")
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("C360_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="session")
def company(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 customers, 2 % of rows faulty: the acceptance example of the foundation issue."""
    return built_once(tmp_path_factory, "company", lambda out: generate(out, 2000, seed=7, corrupt_rate=0.02))


@pytest.fixture(scope="session")
def clean_company(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A larger fault-free company for statistical checks of the ground truth."""
    return built_once(tmp_path_factory, "clean", lambda out: generate(out, 8000, seed=11))


@pytest.fixture(scope="session")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3,000-customer company, ingested and resolved once: (folder with warehouse.duckdb and model.json, data).

    Tests that change the warehouse take `warehouse_copy`."""
    def build(root: Path) -> None:
        generate(root / "data", 3000, seed=5)
        with duckdb.connect(str(root / "warehouse.duckdb")) as con:
            ingest(con, root / "data")
            identity.resolve(con, root / "model.json", threshold=0.95)

    root = built_once(tmp_path_factory, "resolved", build)
    return root, root / "data"


@pytest.fixture
def warehouse_copy(resolved: tuple[Path, Path], tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    target = tmp_path / "warehouse.duckdb"
    target.write_bytes((resolved[0] / "warehouse.duckdb").read_bytes())
    con = duckdb.connect(str(target))
    yield con
    con.close()


@pytest.fixture(scope="module")
def mlflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A C360_HOME for MLflow shared by one test module (creating MLflow's SQLite schema takes seconds), with the
    tracking URI variables unset so runs land under it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        yield tmp_path_factory.mktemp("c360") / "home"


@pytest.fixture(scope="module")
def spark() -> Iterator[None]:
    """The process's Spark session on local[2], started once for the module (C360_SPARK_MASTER set for its tests)."""
    from c360.core import engine

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_SPARK_MASTER", "local[2]")
        engine.spark()
        yield


@pytest.fixture(scope="module")
def home_over_resolved(resolved: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """A function making a fresh C360_HOME over the resolved company: its warehouse and its generated data (with
    the ground truth); the caller adds the feature snapshots it needs. The generated world is a link to the
    session's, unless `own_world`: an erasure rewrites the world's files, which through a link would change the
    world under every later test."""
    from c360.core.settings import Settings

    def make(name: str, own_world: bool = False) -> Settings:
        s = Settings(home=tmp_path_factory.mktemp(name))
        s.warehouse.write_bytes((resolved[0] / "warehouse.duckdb").read_bytes())
        s.generated.parent.mkdir(parents=True)
        if own_world:
            shutil.copytree(resolved[1], s.generated)
        else:
            s.generated.symlink_to(resolved[1])
        return s

    return make


def cli_json(*args: str) -> dict:
    """`c360 ARGS --json` in this process, as the tests of several commands call it: its JSON answer (it must
    succeed)."""
    from typer.testing import CliRunner

    from c360.cli.main import app

    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def widened_to_999(value: float, low: float, high: float) -> tuple[float, float]:
    """A 95 % interval around `value` widened to 99.9 % (z 3.29 for 1.96, each side from the estimate), for a test
    that checks one draw: a readout's 95 % interval misses the generated truth 1 time in 20 by design, and the draw
    is not the same on every build (each home has its own holdout salt). Coverage itself is tested over 60
    replicates in tests/features/test_campaigns.py."""
    widen = 3.29 / 1.96
    return value - widen * (value - low), value + widen * (high - value)


@pytest.fixture(scope="session")
def resolved_snapshot(resolved: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    """A function giving the resolved company's feature snapshot of one date, built once per run (`built_once`,
    seconds each): the homes over the resolved company (training's, the served one) ask for the same 4-weekly
    dates."""
    from functools import cache

    import pandas as pd

    from c360.features import compute

    def write(day: pd.Timestamp, folder: Path) -> None:
        with duckdb.connect(str(resolved[0] / "warehouse.duckdb"), read_only=True) as con:
            compute.build(con, day).to_parquet(folder / "snapshot.parquet", index=False)

    @cache
    def build(day: pd.Timestamp) -> pd.DataFrame:
        folder = built_once(tmp_path_factory, f"snapshot-{day:%Y-%m-%d}", lambda out: write(day, out))
        return pd.read_parquet(folder / "snapshot.parquet")

    return lambda day: build(pd.Timestamp(day)).copy()


@pytest.fixture(scope="module")
def home_with_snapshots(home_over_resolved, resolved_snapshot):
    """A function making a fresh C360_HOME over the resolved company with feature snapshots every 4 weeks, going
    `history_days` back from the data's end, applied to Feast."""
    from c360.core import warehouse
    from c360.features import compute, store

    def make(name: str, history_days: int):
        s = home_over_resolved(name)
        with warehouse.connect(s, read_only=True) as con:
            days = compute.as_of_dates(con, warehouse.data_end(con), None, history_days=history_days, every_days=28)
        for day in days:
            store.write_snapshot(s, resolved_snapshot(day))
        store.apply(s)
        return s

    return make


# ---------------------------------------------------------------- headless Chromium (Debian package) via Playwright

CHROMIUM = Path("/usr/bin/chromium")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--docs-images", action="store_true",
                     help="browser tests also write their screenshots to docs/images/ (the README's pictures)")


@pytest.fixture(scope="session")
def docs_images(request: pytest.FixtureRequest) -> Path | None:
    """docs/images/ when the run was asked to refresh the README's screenshots (--docs-images), else None."""
    if not request.config.getoption("--docs-images"):
        return None
    folder = Path(__file__).resolve().parents[1] / "docs" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def chromium():
    """Debian's headless Chromium driven by Playwright; skips when it is not installed (`.ci/run` installs it).

    Module scope: Playwright's sync API runs an event loop in the thread while it is open, and a later test of the
    same worker that calls `anyio.run` would find it still running."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: `apt-get install -y --no-install-recommends chromium` (Debian) "
                    "to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    """A fresh browser page (1400 x 1500), closed after the test."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1500})
    yield context.new_page()
    context.close()
