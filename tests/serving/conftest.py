"""One small C360_HOME with the champions of every model and a scoring run, shared by the serving tests of a session.

The 3,000-customer resolved company of the root conftest, five feature snapshots (the latest, three that have a
90-day churn label, one with a 12-month CLV label) and the experiment waves' dates, the
real training pipelines, `@champion` on each, the online store filled, then `c360 score`.
"""

from __future__ import annotations

import random
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from starlette.testclient import TestClient

from c360.core import keys, warehouse
from c360.core.settings import Settings
from c360.features import compute, store
from c360.serving.server import serve_command, start, stop, wait_ready
from c360.training import tracking
from c360.training.specs import MODELS
from c360.training.tracking import CHALLENGER, CHAMPION
from tests.conftest import built_once, copy_home

SNAPSHOT_WEEKS = (0, 16, 20, 24, 56)


def promote_all(home: Path) -> None:
    client = tracking.configure(home)
    for name in (spec.name for spec in MODELS.values()):
        client.set_registered_model_alias(name, CHAMPION, tracking.version_by_alias(client, name, CHALLENGER).version)


@contextmanager
def home_copy(served: Settings, root: Path) -> Iterator[Settings]:
    """A copy of the served home at `root`/home, C360_HOME pointing at it while the block runs: the served
    champions @champion again (a test before may have moved the alias), the Feast registry applied again so its
    views read the copy's snapshots and scores. The generated world is copied too (its link followed): an erasure
    rewrites its files and a simulation advances it, which through a link would change the session's world under
    every later test."""
    s = Settings(home=root / "home")
    copy_home(served.home, s.home)
    promote_all(s.home)
    store.apply(s)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(s.home))
        yield s


def build_served(resolved: tuple[Path, Path], resolved_snapshot: Any, root: Path) -> None:
    """The served home at `root`/home (see the module docstring)."""
    from c360.serving import batch
    from c360.training.clv_pipeline import train_clv
    from c360.training.nba_pipeline import train_nba
    from c360.training.pipeline import train_churn, train_expansion
    from c360.training.response import train_response

    s = Settings(home=root / "home")
    s.home.mkdir()
    shutil.copyfile(resolved[0] / "warehouse.duckdb", s.warehouse)
    s.generated.parent.mkdir(parents=True)
    s.generated.symlink_to(resolved[1])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(s.home))
        with warehouse.connect(s, read_only=True) as con:
            end = warehouse.data_end(con)
            days = [*(end - pd.Timedelta(weeks=w) for w in SNAPSHOT_WEEKS), *compute.experiment_dates(con)]
        for day in days:
            store.write_snapshot(s, resolved_snapshot(day))
        store.apply(s)
        train_churn(s)
        train_clv(s)
        train_nba(s)
        train_expansion(s)
        train_response(s)
        promote_all(s.home)
        store.materialize(s)
        batch.score(s, chunk_size=1000)


@pytest.fixture(scope="session")
def served(resolved: tuple[Path, Path], resolved_snapshot: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The served home, built once per run (`built_once`); each worker its own copy, which its tests change."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        built = built_once(tmp_path_factory, "served", lambda root: build_served(resolved, resolved_snapshot, root))
        s = Settings(home=tmp_path_factory.mktemp("served") / "home")
        copy_home(built / "home", s.home, symlinks=True)
        store.apply(s)
        patch.setenv("C360_HOME", str(s.home))
        yield s


@pytest.fixture(scope="session")
def api_keys(served: Settings) -> dict[str, str]:
    """A key of each role in the served home, named `test-ROLE`: role → key."""
    return {role: keys.create(served, f"test-{role}", role, replace_active=True) for role in keys.ROLES}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def admin(api_keys: dict[str, str]) -> dict[str, str]:
    """The headers of the admin key, which the tests send unless they test a role."""
    return bearer(api_keys["admin"])


@pytest.fixture(scope="session")
def asgi_app() -> Any:
    """The service's ASGI app, built once per process: a second `C360.to_asgi()` registers BentoML's Prometheus
    metrics again and fails ("Duplicated timeseries"), so two test modules in one worker share this one."""
    from c360.serving.service import C360

    return C360.to_asgi()


@pytest.fixture(scope="module")
def client(served: Settings, asgi_app: Any, admin: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The service in process through its ASGI app (BentoML's lifespan creates the service instance), sending the
    admin key."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("C360_HOME", str(served.home))
        patch.setenv("C360_RELOAD_SECONDS", "0")
        patch.setenv("BENTOML_HOME", str(tmp_path_factory.mktemp("bentoml")))
        with TestClient(asgi_app, raise_server_exceptions=False, headers=admin) as test_client:
            yield test_client


def free_port() -> int:
    """A free port below the ephemeral range (Linux's starts at 32768): BentoML's process manager binds its own
    sockets to ephemeral ports, and took the port handed to the server (a bind to port 0 picks from that range)
    before the server bound it ("Address already in use")."""
    while True:
        port = random.randint(20000, 32767)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@contextmanager
def running(s: Settings, workers: int, reload_seconds: int, root: Path, ready: str = "/readyz") -> Iterator[str]:
    """A real `bentoml serve` over `s`'s home on a free port (what `c360 serve` runs), its BentoML home and log
    under `root`, once `ready` answers (`/healthz` for a home without a feature store); yields its URL."""
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENTOML_HOME", str(root / "bentoml"))
        patch.setenv("C360_RELOAD_SECONDS", str(reload_seconds))
        command, env = serve_command(port, "127.0.0.1", workers, s)
    log = root / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        process = start(command, env, out)
    try:
        try:
            wait_ready(f"{url}{ready}", process)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{log.read_text()[-3000:]}") from None
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="session")
def server(served: Settings, api_keys: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `bentoml serve` over the served home, polling the registry every second, with a key of each role in
    its home (`api_keys`); yields its URL. One per worker: a start costs a process's imports and model loads."""
    with running(served, 1, 1, tmp_path_factory.mktemp("server")) as url:
        yield url
