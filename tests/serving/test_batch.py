"""`c360 score`: every customer × every champion into Parquet and the online store, resumable, same as live."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest

from c360.core import consent
from c360.core.contract import CONTENT_TOPICS
from c360.core.settings import Settings
from c360.feature_repo.predictions import FIELDS
from c360.features import store
from c360.serving import batch, online, predict, predictions
from c360.serving.champions import Champions
from c360.serving.errors import Unavailable
from c360.training.response import CHANNELS as RESPONSE_CHANNELS
from c360.training.response import best, pairs
from c360.training.specs import MODELS
from tests.serving.conftest import home_copy


def _run(s: Settings):
    """The latest run of every customer (not a `--customers` subset's)."""
    return sorted(p for p in s.scores.glob("as_of=*/run=*") if ".subset-" not in p.name)[-1]


def test_scores_every_customer_with_every_champion(served: Settings) -> None:
    folder = _run(served)
    long = pd.concat(pd.read_parquet(p) for p in sorted(folder.glob("part-*.parquet")))
    snapshot = store.read_snapshot(served, store.snapshot_dates(served)[-1])
    assert set(long.columns) >= {"customer_id", "model", "version", "score", "reasons", "scored_at"}
    assert len(long) == len(MODELS) * len(snapshot)
    assert long.groupby("model")["customer_id"].nunique().to_dict() == {m: len(snapshot) for m in MODELS}
    churn = long[long["model"] == "churn"]
    assert churn["score"].between(0, 1).all() and churn["label"].isin(["low", "medium", "high"]).all()
    assert long.loc[long["model"] == "expansion", "score"].between(0, 1).all()
    response = long[long["model"] == "response"]
    assert response["score"].between(0, 1).all() and response["label"].isin(RESPONSE_CHANNELS).all()
    assert all(json.loads(d)["topic"] in CONTENT_TOPICS for d in response["detail"])
    for text in long["reasons"].sample(200, random_state=0):
        reasons = json.loads(text)
        assert len(reasons) <= 3 and all(r["contribution"] != 0 for r in reasons)
        sizes = [abs(r["contribution"]) for r in reasons]
        assert sizes == sorted(sizes, reverse=True)
    assert (json.loads((folder / "_SUCCESS.json").read_text())["rows"]) == len(snapshot)


def _same_reasons(ours: predict.Reasons, contributions: pd.DataFrame, values: pd.DataFrame) -> None:
    reference = predict.top_reasons(contributions.to_numpy(), list(contributions.columns), values)
    assert (ours.names == reference.names).all()
    np.testing.assert_allclose(ours.contributions, reference.contributions, rtol=1e-9, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("parallel_rows", [10**9, 1], ids=["one thread", "every core"])
def test_scores_equal_the_models_own_predictions(served: Settings, monkeypatch: pytest.MonkeyPatch,
                                                 parallel_rows: int) -> None:
    """Old and new: scoring computes each model's contributions once (the prediction is their sum), on every core
    for a batch, and prepares a customer once for all its campaign sends; its scores, choices and reasons equal the
    models' own predict, choose and contributions calls (what scoring called before), within 1e-9."""
    monkeypatch.setattr(predict, "PARALLEL_ROWS", parallel_rows)
    snapshot = store.read_snapshot(served, store.snapshot_dates(served)[-1])
    champions = Champions.load(served.home, snapshot)
    X = snapshot.head(2000).reset_index(drop=True)
    ours = {s.model: s for s in batch.score_chunk(champions.loaded(), X)}
    churn, clv, nba = (champions[kind].model for kind in ("churn", "clv", "nba"))
    np.testing.assert_allclose(ours["churn"].score, churn.predict_proba(X), rtol=1e-9, atol=1e-12)
    _same_reasons(ours["churn"].reasons, churn.contributions(X).drop(columns="base_value"), churn.feature_values(X))
    np.testing.assert_allclose(ours["clv"].score, clv.predict(X), rtol=1e-9)
    _same_reasons(ours["clv"].reasons, clv.contributions(X).drop(columns="base_value"),
                  predict.transform_features_raw(X, clv.spec))
    choice = nba.choose(X, consent.allowed(X, consent.ACTION_PURPOSE))
    assert (ours["nba"].label == choice.best).all()
    np.testing.assert_allclose(ours["nba"].score, choice.score, rtol=1e-9, atol=1e-9)
    _same_reasons(ours["nba"].reasons, nba.uplift_contributions(X, pd.Series(choice.explained)),
                  predict.transform_features_raw(X[nba.features], nba.spec))
    response = champions["response"].model
    grid = pairs(X.reset_index(drop=True).assign(_row=np.arange(len(X))))  # every send of every row, as trained
    top = best(grid, response.predict_proba(grid), key="_row").sort_values("_row")
    assert (ours["response"].label == top["best_channel"].to_numpy()).all()
    np.testing.assert_allclose(ours["response"].score, response.predict_proba(grid.loc[top.index]), rtol=1e-9)
    _same_reasons(ours["response"].reasons, response.contributions(grid.loc[top.index]).drop(columns="base_value"),
                  response.feature_values(grid.loc[top.index]))


def test_rerun_is_idempotent_and_resumes_after_a_crash(served: Settings) -> None:
    folder = _run(served)
    again = batch.score(served, chunk_size=1000)
    assert again.folder == folder and again.scored_chunks == 0
    victim = folder / "part-00001.parquet"
    before = pd.read_parquet(victim)
    victim.unlink()  # as if the run had died while writing chunk 1
    resumed = batch.score(served, chunk_size=1000)
    assert resumed.scored_chunks == 1
    pd.testing.assert_frame_equal(pd.read_parquet(victim), before)


def test_a_part_of_an_older_c360_is_scored_again(served: Settings) -> None:
    """A run folder left by a c360 whose `predictions` had fewer fields (no `source`) is not pushed short of one."""
    wide = _run(served) / "wide" / "part-00000.parquet"
    pq.write_table(pq.read_table(wide).drop_columns(["source"]), wide)
    assert batch.score(served, chunk_size=1000).scored_chunks == 1
    assert "source" in pq.read_schema(wide).names


def test_online_store_holds_the_latest_scores(served: Settings) -> None:
    ctx = online.Context(served, store.feature_store(served), Champions.load(served.home))
    wide = pd.read_parquet(_run(served) / "wide" / "part-00000.parquet").set_index("customer_id")
    ids = list(wide.index[:5])
    rows = online.read_online(ctx, ids)
    for customer, row in zip(ids, rows, strict=True):
        assert row is not None and row.predictions is not None
        assert row.predictions["churn_probability"] == pytest.approx(wide.at[customer, "churn_probability"])
        assert row.predictions["nba_action"] == wide.at[customer, "nba_action"]
        assert row.predictions_as_of == row.as_of


def test_live_scores_equal_batch_scores(served: Settings) -> None:
    """The online features give the same numbers as the snapshot the batch scored: one code path, same inputs."""
    ctx = online.Context(served, store.feature_store(served), Champions.load(served.home))
    wide = pd.read_parquet(_run(served) / "wide" / "part-00000.parquet").set_index("customer_id")
    ids = list(wide.sample(20, random_state=1).index)
    frame = pd.DataFrame([r.features for r in online.read_online(ctx, ids) if r is not None])
    for kind, column in (("churn", "churn_probability"), ("clv", "clv_value"), ("nba", "nba_uplift")):
        live = predictions.live_wide(ctx, kind, frame)
        np.testing.assert_allclose(np.asarray(live[column], dtype=float), wide.loc[ids, column].to_numpy(),
                                   rtol=1e-9, atol=1e-9)
        assert [json.loads(t) for t in live[f"{kind}_reasons"].to_pylist()] == \
            [json.loads(t) for t in wide.loc[ids, f"{kind}_reasons"]]


def test_customers_file_scores_only_them(served: Settings, tmp_path) -> None:
    snapshot = store.read_snapshot(served, store.snapshot_dates(served)[-1])
    some = snapshot["customer_id"].head(7).tolist()
    (tmp_path / "ids.txt").write_text("\n".join(some))
    started = time.time()
    report = batch.score(served, batch.read_customers(tmp_path / "ids.txt"))
    assert report.customers == 7 and ".subset-" in report.folder.name and time.time() - started < 120
    assert set(pd.read_parquet(report.folder / "part-00000.parquet")["customer_id"]) == set(some)
    with pytest.raises(LookupError, match="not in the snapshot"):
        batch.score(served, ["NOPE"])


def test_score_json_reports_the_run(served: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`c360 score --json` after a complete run: one document on stdout naming that run, nothing scored again."""
    from typer.testing import CliRunner

    from c360.cli.main import app

    monkeypatch.setenv("C360_HOME", str(served.home))
    result = CliRunner().invoke(app, ["score", "--chunk-size", "1000", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    folder = _run(served)
    done = json.loads((folder / "_SUCCESS.json").read_text())
    assert report["folder"] == str(folder) and report["scored_chunks"] == 0
    assert (report["customers"], report["chunks"]) == (done["rows"], done["chunks"])
    assert report["versions"] == Champions.load(served.home).versions()
    assert report["as_of"] == store.snapshot_dates(served)[-1].date().isoformat()


def test_without_the_optional_champions_their_fields_are_empty(served: Settings) -> None:
    """A home trained before expansion and response existed: the other champions score, the wide rows keep every
    field of the `predictions` view, expansion's and response's empty."""
    champions = Champions.load(served.home)
    del champions.models["expansion"], champions.models["response"]
    as_of = store.snapshot_dates(served)[-1]
    X = store.read_snapshot(served, as_of).head(50)
    scores = batch.score_chunk(champions.loaded(), X)
    assert [s.model for s in scores] == ["churn", "clv", "nba"]
    table = batch.wide_table(X["customer_id"], scores, pd.DataFrame(
        {name: [None] * len(X) for name in ("next_feature", "next_feature_score", "next_feature_method",
                                            "content_topics")}), as_of, pd.Timestamp("2026-01-01"))
    assert set(FIELDS) <= set(table.column_names)
    assert table["expansion_probability"].null_count == len(X) and table["churn_probability"].null_count == 0
    assert table["response_channel"].null_count == len(X)


def test_spark_scores_the_same_parts(served: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """C360_ENGINE=spark (local, 2 cores): Spark tasks score the chunks; every long and wide part equals the DuckDB
    engine's, scores and reasons included (only the scoring time differs), and the online store holds them."""
    from c360.core.engine import spark_unavailable

    if reason := spark_unavailable():
        pytest.skip(reason)
    ours = batch.score(served, chunk_size=1000)
    with home_copy(served, tmp_path) as copy:
        shutil.rmtree(copy.scores)
        monkeypatch.setenv("C360_ENGINE", "spark")
        monkeypatch.setenv("C360_SPARK_MASTER", "local[2]")
        spark = batch.score(Settings(), chunk_size=1000)
        ctx = online.Context(copy, store.feature_store(copy), Champions.load(copy.home))
        wide = pd.read_parquet(spark.folder / "wide" / "part-00002.parquet")
        rows = online.read_online(ctx, list(wide["customer_id"].head(5)))
    assert (spark.engine, spark.scored_chunks, spark.customers) == ("spark", ours.chunks, ours.customers)
    _same_parts(spark.folder, ours.folder)
    assert all(r is not None and r.predictions["scored_at"] == wide["scored_at"].iloc[0] for r in rows)


def test_worker_processes_score_the_same_parts(served: Settings, tmp_path) -> None:
    """Worker processes (`processes`; by default from `PROCESS_ROWS` customers), one LightGBM thread each, score
    the chunks: every part equals those scored in this process, and the online store holds them."""
    ours = batch.score(served, chunk_size=1000)
    with home_copy(served, tmp_path) as copy:
        shutil.rmtree(copy.scores)
        spread = batch.score(copy, chunk_size=1000, processes=2)
        ctx = online.Context(copy, store.feature_store(copy), Champions.load(copy.home))
        wide = pd.read_parquet(spread.folder / "wide" / "part-00002.parquet")
        rows = online.read_online(ctx, list(wide["customer_id"].head(5)))
    assert (spread.processes, spread.scored_chunks, spread.customers) == (2, ours.chunks, ours.customers)
    assert ours.processes == 1 and batch.workers(batch.PROCESS_ROWS, None) == predict.cores()
    _same_parts(spread.folder, ours.folder)
    assert all(r is not None and r.predictions["scored_at"] == wide["scored_at"].iloc[0] for r in rows)


def test_a_worker_killed_midway_is_one_line_and_the_run_resumes(served: Settings, tmp_path) -> None:
    """A worker process killed (SIGKILL, as the kernel's out-of-memory killer does) midway: the run stops with a
    503-kind error naming the worker, the chunks written stay, and the next run scores the rest into the rows an
    in-process run gives."""
    ours = batch.score(served, chunk_size=1000)
    chunks = -(-ours.customers // 200)
    with home_copy(served, tmp_path) as copy:
        shutil.rmtree(copy.scores)
        killer = threading.Thread(target=_kill_a_worker, args=(copy.scores, chunks // 2))
        killer.start()
        with pytest.raises(Unavailable, match="scoring worker unavailable: a worker process ended abruptly"):
            batch.score(copy, chunk_size=200, processes=2)
        killer.join()
        resumed = batch.score(copy, chunk_size=200, processes=2)
    assert resumed.chunks == chunks and 0 < resumed.scored_chunks < chunks, resumed
    for parts, key in (("part-*.parquet", ["customer_id", "model"]), ("wide/part-*.parquet", ["customer_id"])):
        pd.testing.assert_frame_equal(_rows(resumed.folder, parts, key), _rows(ours.folder, parts, key))


def _rows(folder: Path, parts: str, key: list[str]) -> pd.DataFrame:
    """The rows of a run's `parts`, in `key` order, without the scoring time."""
    frame = pd.concat(pd.read_parquet(p) for p in sorted(folder.glob(parts)))
    return frame.drop(columns=["scored_at", "scored_ts"], errors="ignore").sort_values(key).reset_index(drop=True)


def _kill_a_worker(scores: Path, written: int) -> None:
    """SIGKILL one scoring worker (forked by this process's forkserver) once `written` parts are: every worker
    has started by then (a kill while the pool still starts one, a few chunks' time, leaves that one unstopped:
    Python's `ProcessPoolExecutor` does not know it yet)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(scores.glob("**/wide/part-*.parquet"))) < written:
        time.sleep(0.01)
    servers = [p for p in psutil.Process().children() if "multiprocessing.forkserver" in " ".join(p.cmdline())]
    workers = [w for server in servers for w in server.children()]
    assert workers, "no worker process to kill"
    workers[0].send_signal(signal.SIGKILL)


def _same_parts(folder: Path, expected_folder: Path) -> None:
    """Every long and wide part of `expected_folder` equals the same part of `folder`, scores and reasons included
    (only the scoring time differs)."""
    for part in sorted(expected_folder.glob("**/part-*.parquet")):
        expected = pd.read_parquet(part).drop(columns=["scored_at", "scored_ts"], errors="ignore")
        got = pd.read_parquet(folder / part.relative_to(expected_folder))
        pd.testing.assert_frame_equal(got.drop(columns=["scored_at", "scored_ts"], errors="ignore"), expected)
